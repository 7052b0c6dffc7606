"""The built-in demo: simulate a data set, write it, run the pipeline, measure the planets."""

import json
import os

import numpy as np

from . import core
from .products import Product, write_product

__all__ = ["write_simulation", "psfmask_name", "measure_planets", "planet_positions_i2d"]


def _to_product(exp):
    from astropy.io import fits

    primary = fits.Header()
    for key, value in exp.header.items():
        primary[key] = value
    sci_header = fits.Header()
    for key, value in exp.wcs.items():
        sci_header[key] = value
    if "BUNIT" in exp.header:
        sci_header["BUNIT"] = exp.header["BUNIT"]
    return Product(sci=exp.sci, err=exp.err, dq=exp.dq, primary=primary, sci_header=sci_header)


def _write_json(path, data):
    tmp = path + ".part"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def psfmask_name(expname):
    """File name of an exposure's transmission map: ``<exposure stem>_psfmask.fits``."""
    stem = expname[:-5] if expname.endswith(".fits") else expname
    return f"{stem}_psfmask.fits"


def _write_psfmask(path, psfmask):
    """Write a transmission map as JWST-style: empty primary, the map in a SCI image."""
    from astropy.io import fits

    tmp = path + ".part"
    hdul = fits.HDUList([fits.PrimaryHDU(),
                         fits.ImageHDU(np.asarray(psfmask, dtype=np.float32), name="SCI")])
    hdul.writeto(tmp, overwrite=True)
    os.replace(tmp, path)


def write_simulation(ds, outdir, *, psfmask=None):
    """Write a simulated data set as exposures plus its associations.

    Writes every exposure (science, psf and background) as
    ``*_calints.fits``, the planet-free twins, each one's transmission map
    beside it (``<exposure stem>_psfmask.fits``: an empty primary HDU and the
    map in a ``SCI`` image extension, as beside the real JWST exposures coron
    is developed on), the off-axis PSF (``<root>_offaxis_psf.fits``),
    ``<root>_truth.json``, the association ``<root>_asn.json`` (science, psf
    and background members) and ``<root>_noplanet_asn.json`` (the twins with
    the same references and backgrounds).

    Parameters
    ----------
    ds : SimDataset
        From :func:`coron_cli.simulate.simulate_dataset`.
    outdir : str
        Existing folder.
    psfmask : bool or None
        Write the transmission maps. None (default): for every set-up but the
        ``classic`` one (``setup=None``), whose folder keeps exactly the files
        it always had.

    Returns
    -------
    dict of str to str
        Paths: 'asn', 'asn_noplanet', 'truth', 'offaxis'.
    """
    if psfmask is None:
        psfmask = ds.truth.get("setup", {}).get("name", "classic") != "classic"
    for exp in list(ds.exposures) + list(ds.twin):
        write_product(_to_product(exp), os.path.join(outdir, exp.name))
        if psfmask and getattr(exp, "psfmask", None) is not None:
            _write_psfmask(os.path.join(outdir, psfmask_name(exp.name)), exp.psfmask)
    root = ds.asn["products"][0]["name"].split("_")[0]
    offaxis = os.path.join(outdir, f"{root}_offaxis_psf.fits")
    write_product(Product(sci=ds.offaxis_psf), offaxis)
    # a plain image in the primary HDU is what other tools expect of a PSF file
    from astropy.io import fits

    tmp = offaxis + ".part"
    fits.PrimaryHDU(np.asarray(ds.offaxis_psf, dtype=np.float32)).writeto(tmp, overwrite=True)
    os.replace(tmp, offaxis)
    asn_path = os.path.join(outdir, f"{root}_asn.json")
    _write_json(asn_path, ds.asn)
    twin_asn = json.loads(json.dumps(ds.asn))
    twin_asn["asn_id"] = ds.asn.get("asn_id", "c1001")
    prod = twin_asn["products"][0]
    prod["name"] = prod["name"] + "_noplanet"
    names = {e.name: t.name for e, t in zip([e for e in ds.exposures if e.exptype == "science"],
                                            ds.twin)}
    for m in prod["members"]:
        if m["exptype"] == "science":
            m["expname"] = names[m["expname"]]
    twin_path = os.path.join(outdir, f"{root}_noplanet_asn.json")
    _write_json(twin_path, twin_asn)
    truth_path = os.path.join(outdir, f"{root}_truth.json")
    _write_json(truth_path, ds.truth)
    return {"asn": asn_path, "asn_noplanet": twin_path, "truth": truth_path,
            "offaxis": offaxis}


def planet_positions_i2d(truth, center):
    """True (x, y) of every planet in a north-up image whose star is at `center`."""
    return np.array([[center[0] + p["xy_north_up"][0], center[1] + p["xy_north_up"][1]]
                     for p in truth["planets"]])


def measure_planets(image, err, center, truth, *, fwhm=None, search=1.5):
    """SNR of every injected planet in a north-up image.

    Parameters
    ----------
    image, err : ndarray of shape (ny, nx)
        The i2d SCI and ERR.
    center : (x, y)
        Star position in the image.
    truth : dict
        The simulation's truth.
    fwhm : float, optional
        Aperture diameter (default: lambda/D from the truth).
    search : float
        Radius (pixels) about the true position searched for the SNR peak.

    Returns
    -------
    list of dict
        Per planet: sep (lambda/D), pa, contrast, snr_map (highest SCI/ERR
        within `search` px of the truth), snr_aperture (Mawet et al. 2014
        t-test at the true position), x, y.
    """
    fwhm = float(fwhm or truth.get("lambda_over_d_pix", 2.0))
    pos = planet_positions_i2d(truth, center)
    rows = []
    for p, (x, y), (peak, a) in zip(truth["planets"], pos,
                                    planet_snr(image, err, center, pos, fwhm, search=search)):
        rows.append({"sep_lod": p["sep_lod"], "sep_pix": p["sep_pix"], "pa": p["pa_deg"],
                     "contrast": p["contrast"], "x": float(x), "y": float(y),
                     "snr_map": peak, "snr_aperture": a})
    return rows


def planet_snr(image, err, center, positions, fwhm, *, search=1.5):
    """SNR of sources at known positions: [(peak of SCI/ERR within `search` pixels,
    aperture t-test SNR of Mawet et al. 2014 with the other sources avoided)] per source."""
    snr = core.snr_image(image, err)
    yy, xx = np.indices(snr.shape)
    pos = np.asarray(positions, dtype=float)
    out = []
    for k, (x, y) in enumerate(pos):
        vals = snr[np.hypot(xx - x, yy - y) <= search]
        peak = float(np.nanmax(vals)) if np.isfinite(vals).any() else float("nan")
        ap, _ = core.aperture_snr(image, pos[k:k + 1], center, fwhm=fwhm,
                                  avoid=np.delete(pos, k, axis=0))
        out.append((peak, float(ap[0])))
    return out
