"""Science evaluation on simulated data: planets, classical RDI, registration, false alarms.

``python -m coron_cli.evaluate --size medium`` (``make science``) simulates a data set
with its planet-free twin, runs the pipeline on both, and prints per planet the SNR in
each roll and in the combined image for coron and for classical RDI (the scaled mean of
the aligned references subtracted), the registration error against the simulated
truth, and the false-alarm and error-calibration checks on the twin.

``python -m coron_cli.evaluate --size medium --contrast-check`` instead checks the
throughput-calibrated 5-sigma contrast curve of the twin against planets injected into it
(:func:`contrast_check`).
"""

import contextlib
import json
import os
import sys
import tempfile

import numpy as np

from . import core, steps
from .demo import planet_snr, write_simulation
from .pipeline import run_association
from .products import (
    Product,
    read_contrast_table,
    read_product,
    roll_angle,
    star_cards,
    star_center,
)
from .steps import PipelineConfig
from .steps._common import _mean_over_integrations

__all__ = ["evaluate", "registration_error", "planet_snr", "classical_rdi", "twin_checks",
           "contrast_check"]


def registration_error(outdir, truth, asn_id="c1001", root="demo"):
    """RMS (px) and mean of measured minus true offsets, and RMS flux-scale error.

    Returns
    -------
    dict with 'rms_px', 'bias_x', 'bias_y', 'scale_rms' over all (sci_int, ref) pairs.
    """
    exps = {e["name"]: e for e in truth["exposures"]}
    stack = read_product(_find(outdir, "_psfstack.fits"), ndims=(3,))
    refs = stack.tables["REFS"]
    rxy = np.array([exps[f]["star_xy"][i] for f, i in zip(refs["file"], refs["integration"])])
    rfl = np.array([exps[f]["flux_ratio"] for f in refs["file"]])
    ex, ey, es = [], [], []
    for name, e in exps.items():
        if e["exptype"] != "science":
            continue
        stem = name.replace("_calints.fits", "")
        path = os.path.join(outdir, f"{stem}_{asn_id}_psfalign.fits")
        if not os.path.exists(path):
            continue
        from astropy.table import Table

        sh = Table.read(path, hdu="SHIFTS")
        sxy = np.array(e["star_xy"])
        i, j = np.asarray(sh["sci_int"]), np.asarray(sh["ref"])
        ex.append(np.asarray(sh["dx"]) - (sxy[i, 0] - rxy[j, 0]))
        ey.append(np.asarray(sh["dy"]) - (sxy[i, 1] - rxy[j, 1]))
        es.append(np.asarray(sh["scale"]) * rfl[j] - 1.0)
    ex, ey, es = map(np.concatenate, (ex, ey, es))
    return {"rms_px": float(np.sqrt(np.mean(ex ** 2 + ey ** 2))), "bias_x": float(ex.mean()),
            "bias_y": float(ey.mean()), "scale_rms": float(np.sqrt(np.mean(es ** 2)))}


def _find(folder, suffix, contains=""):
    for name in sorted(os.listdir(folder)):
        if name.endswith(suffix) and contains in name:
            return os.path.join(folder, name)
    raise FileNotFoundError(f"no *{suffix} in {folder}")


def classical_rdi(science, psfalign, *, noise_width=2):
    """psfsub-like product of classical RDI: science minus the scaled mean reference.

    Each aligned reference is scaled by its fitted flux factor (SHIFTS) and
    the mean is subtracted from the repaired science integration; ERR is
    propagated and calibrated in annuli exactly as for KLIP.
    """
    sci, err, dq, _ = steps.prepare_science(science)
    sh = psfalign.tables["SHIFTS"]
    refs, ref_err = psfalign.sci, psfalign.err
    if refs.ndim == 3:
        # aligned once per exposure (--align-per exposure): the same for every integration
        refs = np.broadcast_to(refs[None], (sci.shape[0],) + refs.shape)
        ref_err = np.broadcast_to(ref_err[None], refs.shape)
    nint, nref = refs.shape[:2]
    scale = np.zeros((nint, nref))
    scale[np.asarray(sh["sci_int"]), np.asarray(sh["ref"])] = np.asarray(sh["scale"])
    model = np.einsum("ij,ijyx->iyx", scale, refs.astype(np.float64)) / nref
    res = sci - model
    center, _ = star_center(psfalign.sci_header, sci.shape)
    var = err.astype(np.float64) ** 2 + np.einsum(
        "ij,ijyx->iyx", scale ** 2, ref_err.astype(np.float64) ** 2) / nref ** 2
    out_err = core.calibrate_error(res, np.sqrt(var), center, width=noise_width)
    hdr = science.sci_header.copy()
    star_cards(hdr, center)
    return Product(sci=res.astype(np.float32), err=out_err, dq=dq, primary=science.primary,
                   sci_header=hdr, path=science.path)


def annulus_std(image, center, radius, *, half_width=1.5):
    """Standard deviation of an image in the annulus ``|r - radius| <= half_width``."""
    yy, xx = np.indices(image.shape)
    sel = np.abs(np.hypot(xx - center[0], yy - center[1]) - radius) <= half_width
    vals = np.asarray(image, dtype=np.float64)[sel]
    return float(np.nanstd(vals))


def twin_checks(i2d, truth, *, inner_lod=2.0, calib_lod=3.0, width=None):
    """False alarms and SNR spread on a planet-free combined image.

    Returns
    -------
    dict: 'max_abs_snr' outside inner_lod, 'n_false' pixels with |SNR| >= 5 there,
    'annuli' list of (radius_px, std of SNR) from calib_lod lambda/D outwards.
    """
    lod = truth["lambda_over_d_pix"]
    center, _ = star_center(i2d.sci_header, i2d.sci.shape)
    snr = core.snr_image(i2d.sci, i2d.err).astype(np.float64)
    yy, xx = np.indices(snr.shape)
    r = np.hypot(xx - center[0], yy - center[1])
    outside = (r > inner_lod * lod) & np.isfinite(snr)
    width = width or max(2, int(round(2 * lod)))
    ann = []
    rmax = np.nanmax(np.where(np.isfinite(snr), r, np.nan))
    edges = np.arange(calib_lod * lod, rmax, width)
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (r >= a) & (r < b) & np.isfinite(snr)
        if sel.sum() >= 30:
            ann.append((0.5 * (a + b), float(np.std(snr[sel]))))
    return {"max_abs_snr": float(np.nanmax(np.abs(snr[outside]))),
            "n_false": int((np.abs(snr[outside]) >= 5).sum()), "annuli": ann}


def evaluate(size="medium", seed=0, outdir=None, truncate=(50,), zones=1, zone_sectors=1,
             exclude=(), protect=5.0):
    """Run the whole evaluation; returns a JSON-able dict (see module docstring)."""
    from .simulate import simulate_dataset

    outdir = outdir or tempfile.mkdtemp(prefix="coron_science_")
    os.makedirs(outdir, exist_ok=True)
    ds = simulate_dataset(size, seed=seed)
    paths = write_simulation(ds, outdir)
    truth = ds.truth
    lod = truth["lambda_over_d_pix"]
    prod_dir = os.path.join(outdir, "products")
    twin_dir = os.path.join(outdir, "products_noplanet")
    os.makedirs(prod_dir, exist_ok=True)
    os.makedirs(twin_dir, exist_ok=True)
    config = PipelineConfig.from_options(truncate=truncate, zones=zones,
                                         zone_sectors=zone_sectors, exclude=exclude,
                                         protect=protect)
    run_association(paths["asn"], prod_dir, config)
    run_association(paths["asn_noplanet"], twin_dir, config)
    i2d = read_product(_find(prod_dir, "_i2d.fits"), ndims=(2,))
    c_i2d, _ = star_center(i2d.sci_header, i2d.sci.shape)
    sky = np.array([[c_i2d[0] + p["xy_north_up"][0], c_i2d[1] + p["xy_north_up"][1]]
                    for p in truth["planets"]])
    result = {"size": size, "seed": seed, "lambda_over_d_pix": lod, "planets": []}
    sci_exps = [e for e in ds.exposures if e.exptype == "science"]
    per_roll = {"coron": [], "crdi": []}
    crdi_subs = []
    for k, e in enumerate(sci_exps):
        stem = e.name.replace("_calints.fits", "")
        sub = read_product(os.path.join(prod_dir, f"{stem}_c1001_psfsub.fits"))
        ali = read_product(os.path.join(prod_dir, f"{stem}_c1001_psfalign.fits"), ndims=(3, 4))
        sci = read_product(os.path.join(outdir, e.name))
        crdi = classical_rdi(sci, ali)
        crdi_subs.append(crdi)
        pos = np.array([p["xy_roll"][k] for p in truth["planets"]])
        for name, prod in (("coron", sub), ("crdi", crdi)):
            img, var = _mean_over_integrations(prod)
            c, _ = star_center(prod.sci_header, prod.sci.shape)
            err = core.calibrate_error(img, np.sqrt(var), c)
            per_roll[name].append(planet_snr(img, err, c, pos, lod))
    crdi_i2d = steps.combine_step(crdi_subs)
    i2d_snr = planet_snr(i2d.sci, i2d.err, c_i2d, sky, lod)
    crdi_snr = planet_snr(crdi_i2d.sci, crdi_i2d.err, c_i2d, sky, lod)
    # astrometry in the i2d: flux-weighted centroid within 2 px of the truth
    yy, xx = np.indices(i2d.sci.shape)
    for n, p in enumerate(truth["planets"]):
        x, y = sky[n]
        near = np.hypot(xx - x, yy - y) <= 2.0
        w = np.where(near, np.clip(np.nan_to_num(i2d.sci), 0, None), 0.0)
        cx, cy = ((w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()) if w.sum() > 0 \
            else (np.nan, np.nan)
        result["planets"].append({
            "sep_lod": p["sep_lod"], "contrast": p["contrast"],
            "coron_roll": [per_roll["coron"][k][n] for k in range(len(sci_exps))],
            "coron_i2d": i2d_snr[n],
            "crdi_roll": [per_roll["crdi"][k][n] for k in range(len(sci_exps))],
            "crdi_i2d": crdi_snr[n],
            "astrometry_px": float(np.hypot(cx - x, cy - y)),
        })
    result["registration"] = registration_error(prod_dir, truth)
    twin = read_product(_find(twin_dir, "_i2d.fits"), ndims=(2,))
    result["twin"] = twin_checks(twin, truth)
    # the residual noise itself, free of any error estimate: the twin's i2d, both methods
    twin_crdi = []
    for t in ds.twin:
        stem = t.name.replace("_calints.fits", "")
        ali = read_product(os.path.join(twin_dir, f"{stem}_c1001_psfalign.fits"), ndims=(3, 4))
        twin_crdi.append(classical_rdi(read_product(os.path.join(outdir, t.name)), ali))
    noise = {"coron": twin, "crdi": steps.combine_step(twin_crdi)}
    for n, p in enumerate(truth["planets"]):
        rad = float(np.hypot(*p["xy_north_up"]))
        for name, img in noise.items():
            result["planets"][n][f"{name}_noise"] = annulus_std(img.sci, c_i2d, rad)
    result["outdir"] = outdir
    return result


def contrast_check(size="medium", seed=0, outdir=None, *, truncate=(50,),
                   groups_lod=((3.0, 8.0), (4.5, 10.0), (6.0, 12.0)), n_pa=6, level=1.5):
    """Check the calibrated 5-sigma contrast curve against injected planets.

    The planet-free twin is run with ``contrast=True`` (throughput by
    fake-source injection) and aperture photometry (star flux and noise as
    sums in disks of diameter lambda/D, the photometry of the t-test below),
    giving the calibrated curve. Then planets (the off-axis PSF scaled by a contrast) are added to
    copies of the twin's science exposures, relative to the pipeline's star
    position, at the separations of one group of `groups_lod` (lambda/D;
    far apart, so that one planet's rings do not reach another's reference
    apertures) and `n_pa` position angles per separation, one angle per
    copy, at the contrast ``level * curve(r)`` (the curve interpolated
    linearly in log contrast between its annuli); each copy goes through the
    whole pipeline (align, KLIP, combine). In the i2d, every planet's
    aperture t-test (Mawet et al. 2014, :func:`coron_cli.core.aperture_snr`)
    is measured with the other planets avoided and without the two
    reference apertures next to the planet (which hold its own wings), as
    is the same position in the twin (contrast 0). The t value of a
    Gaussian 5 sigma (Student-t with ``n2 - 1`` degrees of freedom, n2
    reference apertures) is reached, by linear interpolation in the
    injected contrast, at the measured 5-sigma contrast of that angle; its
    median over the angles is compared with the calibrated curve.

    Returns
    -------
    dict
        'rows': per separation (sep_lod, sep_pix, curve, measured, ratio
        measured/curve, per-angle values); 'timings'; 'outdir'.
    """
    import time

    from scipy import stats

    from .products import write_product
    from .simulate import simulate_dataset

    outdir = outdir or tempfile.mkdtemp(prefix="coron_contrast_")
    os.makedirs(outdir, exist_ok=True)
    ds = simulate_dataset(size, seed=seed)
    paths = write_simulation(ds, outdir)
    lod = ds.truth["lambda_over_d_pix"]
    psf = np.asarray(ds.offaxis_psf, dtype=np.float64)
    method = "aperture"
    star = core.psf_flux(psf, method=method, fwhm=lod)
    twin_dir = os.path.join(outdir, "twin")
    os.makedirs(twin_dir, exist_ok=True)
    t0 = time.perf_counter()
    summ = run_association(paths["asn_noplanet"], twin_dir, PipelineConfig.from_options(
        truncate=truncate, star_flux=star, star_flux_method=method, fwhm=lod, contrast=True),
        offaxis_psf=psf)
    timings = {"twin_with_contrast": time.perf_counter() - t0, **summ["timings"]}
    curve_t = read_contrast_table(_find(twin_dir, "_contrast.fits"))
    rc = np.asarray(curve_t["radius"], float)
    cc = np.asarray(curve_t["contrast_5sigma_calibrated"], float)
    good = np.isfinite(cc) & (cc > 0)
    twin_sci = [read_product(os.path.join(outdir, t.name)) for t in ds.twin]
    twin_i2d = read_product(_find(twin_dir, "_i2d.fits"), ndims=(2,))
    npix = twin_sci[0].sci.shape[-1]
    rmax = (npix - 1) / 2.0 - 1.5 * lod - 2
    asn = json.loads(open(paths["asn_noplanet"]).read())
    fpf = stats.norm.sf(5.0)

    def tests(i2d, sky):
        c2, _ = star_center(i2d.sci_header, i2d.sci.shape)
        t = [core.aperture_snr(i2d.sci, sky[j:j + 1], c2, fwhm=lod, avoid=sky)[0][0]
             for j in range(len(sky))]
        n2 = np.array([_reference_count(sky, j, c2, lod) for j in range(len(sky))])
        return np.array(t), n2

    results = {}
    t0 = time.perf_counter()
    for g, group in enumerate(groups_lod):
        seps = np.array([v for v in group if v * lod <= rmax]) * lod
        if not seps.size:
            continue
        curve = np.exp(np.interp(seps, rc[good], np.log(cc[good])))  # read on a log scale
        pa = core.injection_grid(seps, n_pa, base=17.0 * g)
        for k in range(n_pa):
            tag = f"g{g}k{k}"
            names = {}
            for exp in twin_sci:
                roll, _ = roll_angle(exp.sci_header, exp.primary)
                c, _ = star_center(exp.sci_header, exp.sci.shape)
                pos = np.asarray(c) + core.sky_offsets(seps, pa[k], roll)
                fake = core.inject_sources(exp.sci.shape[-2:], psf, pos, level * curve)
                name = os.path.basename(exp.path).replace("_calints", f"_{tag}_calints")
                write_product(Product(sci=(exp.sci + fake[None]).astype(np.float32),
                                      err=exp.err, dq=exp.dq, primary=exp.primary,
                                      sci_header=exp.sci_header), os.path.join(outdir, name))
                names[os.path.basename(exp.path)] = name
            a = json.loads(json.dumps(asn))
            a["products"][0]["name"] += f"_{tag}"
            for m in a["products"][0]["members"]:
                m["expname"] = names.get(m["expname"], m["expname"])
            apath = os.path.join(outdir, f"{tag}_asn.json")
            with open(apath, "w") as fh:
                json.dump(a, fh)
            run_dir = os.path.join(outdir, tag)
            os.makedirs(run_dir, exist_ok=True)
            run_association(apath, run_dir, PipelineConfig.from_options(truncate=truncate))
            i2d = read_product(_find(run_dir, "_i2d.fits"), ndims=(2,))
            c2, _ = star_center(i2d.sci_header, i2d.sci.shape)
            sky = np.asarray(c2) + core.sky_offsets(seps, pa[k], 0.0)
            t1, n2 = tests(i2d, sky)
            t0_, _ = tests(twin_i2d, sky)
            tau = stats.t.isf(fpf, n2 - 1)            # t value of a Gaussian 5 sigma
            c5 = level * curve * (tau - t0_) / (t1 - t0_)
            for j, sep in enumerate(seps):
                r = results.setdefault(float(sep), {"curve": float(curve[j]), "c5": [],
                                                    "tau": float(tau[j])})
                r["c5"].append(float(c5[j]))
    timings["injected_runs"] = time.perf_counter() - t0
    rows = []
    for sep in sorted(results):
        r = results[sep]
        med = float(np.nanmedian(r["c5"]))
        rows.append({"sep_lod": sep / lod, "sep_pix": sep, "curve": r["curve"],
                     "measured": med, "ratio": med / r["curve"], "per_pa": r["c5"],
                     "tau": r["tau"]})
    return {"size": size, "seed": seed, "method": method, "rows": rows, "timings": timings,
            "outdir": outdir}


def _reference_count(sky, j, center, fwhm):
    """Reference apertures :func:`core.aperture_snr` uses for planet j with ``avoid=sky``."""
    x, y = sky[j]
    dx, dy = x - center[0], y - center[1]
    r = np.hypot(dx, dy)
    n = int(np.floor(2 * np.pi * r / fwhm))
    ang = np.arctan2(dy, dx) + 2 * np.pi * np.arange(1, n) / n
    xs, ys = center[0] + r * np.cos(ang), center[1] + r * np.sin(ang)
    d = np.hypot(xs[:, None] - sky[None, :, 0], ys[:, None] - sky[None, :, 1])
    return int((d > 1.5 * fwhm).all(axis=1).sum())


def format_contrast_check(res):
    """The contrast check as a plain-text table."""
    lines = [f"# calibrated 5-sigma contrast ({res['method']}) of the planet-free twin vs the "
             f"contrast at which injected planets reach 5 sigma (t-test), {res['size']}, "
             f"seed {res['seed']}",
             f"{'sep_lod':>7} {'sep_pix':>7} {'curve':>9} {'measured':>9} {'ratio':>6} "
             f"{'tau':>5}  per-angle / curve"]
    for r in res["rows"]:
        per = " ".join(f"{v / r['curve']:.2f}" for v in r["per_pa"])
        lines.append(f"{r['sep_lod']:7.2f} {r['sep_pix']:7.2f} {r['curve']:9.2e} "
                     f"{r['measured']:9.2e} {r['ratio']:6.2f} {r['tau']:5.2f}  {per}")
    lines.append("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res["timings"].items()))
    return "\n".join(lines)


def format_report(res):
    """The evaluation as a plain-text report."""
    lines = [f"# coron science evaluation: {res['size']} simulation, seed {res['seed']}",
             "# SNR pairs are map/aperture: map = highest SCI/ERR within 1.5 px of the truth,",
             "# aperture = Mawet et al. 2014 t-test. cRDI = classical RDI (scaled mean reference).",
             "# noise = std of the planet-free twin's i2d in the planet's annulus (3 px wide),",
             "# coron/cRDI: the residual noise itself, with no error estimate in between.",
             f"{'sep_lod':>7} {'contrast':>8} | {'coron r1':>11} {'coron r2':>11} "
             f"{'coron i2d':>11} | {'cRDI r1':>11} {'cRDI r2':>11} {'cRDI i2d':>11} | "
             f"{'noise':>11} | {'astrom':>6}"]

    def f(pair):
        return f"{pair[0]:5.1f}/{pair[1]:5.1f}"

    for p in res["planets"]:
        lines.append(f"{p['sep_lod']:7.2f} {p['contrast']:8.1e} | {f(p['coron_roll'][0])} "
                     f"{f(p['coron_roll'][1])} {f(p['coron_i2d'])} | {f(p['crdi_roll'][0])} "
                     f"{f(p['crdi_roll'][1])} {f(p['crdi_i2d'])} | "
                     f"{p['coron_noise']:5.1f}/{p['crdi_noise']:5.1f} | {p['astrometry_px']:6.2f}")
    r = res["registration"]
    lines.append(f"registration vs truth: RMS {r['rms_px']:.4f} px (bias {r['bias_x']:+.4f}, "
                 f"{r['bias_y']:+.4f}), flux scale RMS error {100 * r['scale_rms']:.2f} %")
    t = res["twin"]
    lines.append(f"planet-free twin: max |SNR| beyond 2 lambda/D = {t['max_abs_snr']:.2f}, "
                 f"pixels with |SNR| >= 5: {t['n_false']}")
    stds = [s for _, s in t["annuli"]]
    if stds:
        lines.append(f"twin SNR std per annulus from 3 lambda/D: min {min(stds):.2f}, "
                     f"max {max(stds):.2f} over {len(stds)} annuli")
    inner = [p for p in res["planets"] if p["sep_lod"] < 8]
    beats = all(p["coron_i2d"][0] > p["crdi_i2d"][0] for p in inner)
    bright = [p for p in res["planets"] if p["contrast"] >= 1e-4]
    det = all(p["coron_i2d"][0] >= 5 for p in bright)
    lines.append(f"coron beats cRDI (map SNR, i2d) on every planet inside 8 lambda/D: "
                 f"{'yes' if beats else 'NO'}; every planet >= 1e-4 detected (map SNR >= 5): "
                 f"{'yes' if det else 'NO'}")
    quieter = all(p["coron_noise"] < p["crdi_noise"] for p in inner)
    lines.append(f"coron's residual noise (twin i2d) below cRDI's at every planet inside 8 "
                 f"lambda/D: {'yes' if quieter else 'NO'}")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    import logging

    logging.getLogger("coron").setLevel(logging.ERROR)  # the report is the output

    ap = argparse.ArgumentParser(prog="python -m coron_cli.evaluate", description=__doc__)
    ap.add_argument("--size", default="medium", choices=["small", "medium", "large"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--outdir", default=None,
                    help="keep the simulated data and products here (default: a temporary "
                         "folder, removed at the end)")
    ap.add_argument("--truncate", default="50")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--contrast-check", action="store_true",
                    help="instead: check the calibrated 5-sigma contrast curve (aperture "
                         "photometry) against planets injected into the planet-free twin")
    a = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        # without --outdir the simulated data and products (about 1 GB at the medium
        # size) go to a temporary folder that is removed afterwards
        outdir = a.outdir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="coron_science_"))
        if a.contrast_check:
            res = contrast_check(a.size, a.seed, outdir,
                                 truncate=steps.parse_truncate(a.truncate))
        else:
            res = evaluate(a.size, a.seed, outdir, truncate=steps.parse_truncate(a.truncate))
        if not a.outdir:
            res["outdir"] = None            # removed on the way out
        if a.json:
            print(json.dumps(res, indent=1))
        else:
            print(format_contrast_check(res) if a.contrast_check else format_report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
