"""The hlsp step: the SNR map and the contrast table of a KLIP-subtracted image."""

import logging

import numpy as np

from .. import core
from ..errors import InputError
from ..products import Product, add_provenance, pixel_scale_arcsec, star_center
from ._common import (
    _mean_over_integrations,
    _star_cards,
    _throughput_at,
    product_transmission,
)

log = logging.getLogger("coron")


def hlsp_step(image, *, annuli_width=2, star_flux=None, star_flux_method="peak", fwhm=None,
              snr_method="ratio", throughput=None, params=None):
    """High-level products of a KLIP-subtracted image: SNR image and contrast table.

    Parameters
    ----------
    image : Product
        2-D image or 3-D cube (averaged over integrations first). A
        THROUGHPUT table in it (from :func:`throughput_table`) is used when
        `throughput` is not given.
    annuli_width : int
        Annulus width in whole pixels.
    star_flux : float, optional
        The star's unocculted flux in the image's units, measured as
        `star_flux_method` says; adds the 5-sigma contrast column.
    star_flux_method : {"peak", "aperture"}
        ``peak``: the star flux is the PSF's peak pixel and the noise is the
        per-pixel standard deviation in the annulus (column ``sigma``).
        ``aperture``: the star flux is the sum in a disk of diameter `fwhm`
        and the noise the standard deviation of such aperture sums in the
        annulus (column ``sigma_aperture``).
    fwhm : float, optional
        Resolution element in pixels for the small-sample correction and
        the apertures (default 2, about lambda/D at Nyquist sampling).
    snr_method : {"ratio", "mawet"}
        ``ratio``: SCI/ERR. ``mawet``: the per-pixel aperture t-test of
        Mawet et al. 2014 (:func:`coron_cli.core.snr_map_mawet`).
    throughput : astropy.table.Table, optional
        Algorithmic throughput against radius (columns radius, throughput,
        throughput_aperture).

    Returns
    -------
    snr : Product
        SCI = the SNR map (NaN where it is undefined).
    contrast : Product
        No image; a CONTRAST table (radius, sigma, npix, and radius_arcsec,
        sigma_aperture, contrast_5sigma, throughput, contrast_5sigma_calibrated
        when known) and the THROUGHPUT table when there is one.

    Notes
    -----
    ``contrast_5sigma = student_t_factor(2 pi r / fwhm) * noise / star_flux``
    (:func:`coron_cli.core.contrast_curve`, Mawet et al. 2014), and
    ``contrast_5sigma_calibrated = contrast_5sigma / throughput(r)``, the
    throughput interpolated linearly at each radius (NaN outside the
    separations where it was measured).
    """
    from astropy.table import Table

    if int(annuli_width) < 1:
        raise InputError("--annuli-width", "must be a positive integer")
    if star_flux_method not in ("peak", "aperture"):
        raise InputError("--star-flux-method",
                         f"must be peak or aperture, not {star_flux_method!r}")
    if snr_method not in ("ratio", "mawet"):
        raise InputError("--snr-method", f"must be ratio or mawet, not {snr_method!r}")
    img, var = _mean_over_integrations(image)
    err = np.sqrt(var)
    if not np.isfinite(image.sci).any():  # zero/NaN ERR only makes NaN SNR there
        raise InputError(image.path, "no finite pixel in SCI")
    if throughput is None:
        throughput = image.tables.get("THROUGHPUT")
    center, src = star_center(image.sci_header, img.shape)
    fwhm = 2.0 if fwhm is None else float(fwhm)
    if snr_method == "mawet":
        snr = core.snr_map_mawet(img, center, fwhm=fwhm)
    else:
        snr = core.snr_image(img, err)
    radius, sigma, npix = core.annular_profile(img, center, width=int(annuli_width))
    table = Table()
    table["radius"] = radius
    table["radius"].unit = "pix"
    scale = pixel_scale_arcsec(image.sci_header)
    if scale:
        table["radius_arcsec"] = radius * scale
        table["radius_arcsec"].unit = "arcsec"
    table["npix"] = npix
    table["sigma"] = sigma
    noise = sigma
    if star_flux_method == "aperture":
        ar, asig, _ = core.annular_profile(core.aperture_sums(img, fwhm=fwhm), center,
                                           width=int(annuli_width))
        sig_ap = np.full(radius.shape, np.nan)
        idx = np.searchsorted(radius, ar)
        hit = (idx < radius.size) & (radius[np.minimum(idx, radius.size - 1)] == ar)
        sig_ap[idx[hit]] = asig[hit]
        table["sigma_aperture"] = sig_ap
        table["sigma_aperture"].description = (f"standard deviation of the sums in disks of "
                                               f"diameter {fwhm:g} pix")
        noise = sig_ap
    if star_flux:
        table["contrast_5sigma"] = core.contrast_curve(radius, noise, star_flux=star_flux,
                                                       fwhm=fwhm)
        table["contrast_5sigma"].description = (
            "5-sigma-equivalent detection limit / star flux, Student-t corrected "
            "(Mawet et al. 2014)")
    tmap = product_transmission(image)
    factor, parts = np.ones(radius.shape), []
    if throughput is not None:
        table["throughput"] = _throughput_at(throughput, radius, star_flux_method)
        factor, parts = factor * table["throughput"], parts + ["algorithmic throughput"]
    if tmap is not None:
        tr, tm = core.annular_mean(tmap, center, width=int(annuli_width))
        table["transmission"] = np.interp(radius, tr, tm) if tr.size else np.nan
        table["transmission"].description = "coronagraph transmission, mean in the annulus"
        factor, parts = factor * table["transmission"], parts + ["coronagraph transmission"]
    if parts and star_flux:
        with np.errstate(invalid="ignore", divide="ignore"):
            table["contrast_5sigma_calibrated"] = np.where(
                factor > 0, table["contrast_5sigma"] / factor, np.nan)
        table["contrast_5sigma_calibrated"].description = \
            "contrast_5sigma / (" + " x ".join(parts) + ")"
    params = dict(params or {})
    params.update(annuli_width=int(annuli_width), star_flux=star_flux, fwhm=fwhm,
                  star_flux_method=star_flux_method, snr_method=snr_method,
                  throughput="yes" if throughput is not None else "none")
    primary = add_provenance(image.primary, "coron-hlsp", params)
    if star_flux:
        _star_cards(primary, star_flux, star_flux_method, fwhm)
    header = image.sci_header.copy()
    header["STARCENX"] = (center[0], f"star x, 0-based pixels (from {src})")
    header["STARCENY"] = (center[1], f"star y, 0-based pixels (from {src})")
    header["BUNIT"] = ("", "signal-to-noise ratio")
    header["SNRMETH"] = (snr_method, "ratio: SCI/ERR; mawet: aperture t-test map")
    if snr_method == "mawet":
        header["SNRFWHM"] = (fwhm, "aperture diameter of the t-test, pixels")
    dq = np.where(np.isfinite(snr), 0, core.DO_NOT_USE).astype(np.uint32)
    snr_product = Product(sci=snr, err=None, dq=dq, primary=primary, sci_header=header,
                          path="snr")
    tables = {"CONTRAST": table}
    if throughput is not None:
        tables["THROUGHPUT"] = throughput
    contrast_product = Product(sci=None, primary=primary.copy(), tables=tables,
                               path="contrast")
    return snr_product, contrast_product
