"""Real-data check: coron's defaults against plain KLIP on the real JWST sets.

``python -m coron_cli.realcheck`` (``make realcheck``) runs coron's defaults
and plain KLIP (:data:`coron_cli.panel.PLAIN`) on the two real sets of
``--data`` and prints, each number with its acceptance target and PASS/FAIL
(for coron; plain's figures are shown for comparison):

AU Mic (``aumic-f356w``), with the panel's fake companions injected
(:func:`coron_cli._harness.prepare_real_set`), ``--rotations`` times turned
by 360/N degrees as in the panel:

- residual noise (robust std) per annulus, 6-100 px, in the i2d outside the
  disk (a wedge of +-15 deg about PA 128.5 and 308.5 left out) and the fakes:
  coron <= plain in every annulus;
- the disk's surface brightness along its spine (mean in a strip 3 px wide
  along PA 128.5 and 308.5) at 10-80 px: coron >= 0.95 x plain;
- the fakes' SNR (aperture t-test, as the panel measures it): median of
  coron/plain >= 1.3;
- the fakes' pixels (within lambda/D of each) in the psfsub products: none
  newly flagged OUTLIER (DQ 16) or DO_NOT_USE.

HD 106906 (``hd106906-miri``), as it is:

- what the products record of the background (primary-header cards starting
  with BKG and HISTORY lines on background that the inputs do not already have);
- the residual's median at 50-90 px from the star (HD 106906 b left out):
  within 1 standard error of zero;
- the scatter of the medians of 30x30-px blocks beyond 30 px, over the pixel
  noise: <= 0.3;
- HD 106906 b in the detection table of ``coron3 run --detect 5``:
  7.1" +- 0.1", PA 307 +- 2 deg (its flux and SNR reported).

A measuring tool: nothing is tuned here. ``--json FILE`` keeps every number;
``--keep DIR`` keeps the products (default: a temporary folder, removed).
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np

from . import _harness as H
from .panel import PLAIN, ROTATIONS, plain_options

__all__ = ["check_aumic", "check_hd106906", "format_aumic", "format_hd106906", "main"]

_AUMIC = "aumic-f356w"
_HD = "hd106906-miri"
_DISK_PA = (128.5, 308.5)
_WEDGE_DEG = 15.0
_NOISE_EDGES = np.linspace(6.0, 100.0, 20)       # 19 annuli about 5 px wide
_SPINE_HALF_WIDTH = 1.5
_SPINE_EDGES = np.arange(10.0, 81.0, 10.0)
_B_SEP, _B_PA = 7.1, 307.0
_START = time.perf_counter()


def _progress(msg):
    print(f"[realcheck {time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr,
          flush=True)


def _pf(ok):
    """PASS, FAIL, or n/a for a check that could not be measured (None)."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _check(value, test):
    """test(value) as a bool, or None when the value is not a finite number."""
    if value is None or not np.isfinite(value):
        return None
    return bool(test(value))


def _all(checks):
    """True when every measured check passes (None when none was measured)."""
    done = [c for c in checks if c is not None]
    return all(done) if done else None


def _i2d(path):
    from .products import read_product, star_center

    p = read_product(path, ndims=(2,))
    center, _ = star_center(p.sci_header, p.sci.shape)
    return p, np.asarray(p.sci, dtype=np.float64), center


def _radius(shape, center):
    yy, xx = np.indices(shape, dtype=np.float64)
    return np.hypot(xx - center[0], yy - center[1])


# ---------------------------------------------------------------------------
# AU Mic
# ---------------------------------------------------------------------------
def spine_profile(image, center, pa, edges, *, half_width=_SPINE_HALF_WIDTH):
    """Mean of a north-up image in a strip along position angle `pa`, per distance bin.

    Pixels within `half_width` of the half-line from the star at `pa`, binned
    by their distance along it (`edges`, pixels).

    Returns
    -------
    ndarray of float64 of shape (len(edges) - 1,), and the mean over all bins' pixels.
    """
    img = np.asarray(image, dtype=np.float64)
    yy, xx = np.indices(img.shape, dtype=np.float64)
    u = H.sky_offsets(1.0, pa, 0.0)
    dx, dy = xx - center[0], yy - center[1]
    along = dx * u[0] + dy * u[1]
    perp = np.abs(dx * u[1] - dy * u[0])
    strip = (perp <= half_width) & np.isfinite(img)
    means = []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = strip & (along >= a) & (along < b)
        means.append(float(img[sel].mean()) if sel.any() else float("nan"))
    sel = strip & (along >= edges[0]) & (along < edges[-1])
    return np.array(means), float(img[sel].mean()) if sel.any() else float("nan")


def _new_flags(psfsub_dq, input_dq, xy, radius, clean_dq=None):
    """Flag counts of the pixels within `radius` of `xy` (summed over integrations).

    Returns
    -------
    (OUTLIER, newly DO_NOT_USE (not in the input), DO_NOT_USE already in the
    input, flagged OUTLIER or newly DO_NOT_USE also in `clean_dq`, the psfsub
    DQ of a run without the fakes (0 without it))
    """
    from . import core

    ny, nx = psfsub_dq.shape[-2:]
    near = H.near_mask((ny, nx), [xy], radius)
    out_dq = np.asarray(psfsub_dq).reshape(-1, ny, nx)[:, near]
    in_dq = np.asarray(input_dq).reshape(-1, ny, nx)[:, near]
    dnu, outl = np.uint32(core.DO_NOT_USE), np.uint32(core.OUTLIER)
    hit = ((out_dq & outl) != 0) | (((out_dq & dnu) != 0) & ((in_dq & dnu) == 0))
    also = 0
    if clean_dq is not None:
        cl = np.asarray(clean_dq).reshape(-1, ny, nx)[:, near]
        also = int((hit & (((cl & outl) != 0) | (((cl & dnu) != 0) & ((in_dq & dnu) == 0))))
                   .sum())
    return (int(((out_dq & outl) != 0).sum()),
            int((((out_dq & dnu) != 0) & ((in_dq & dnu) == 0)).sum()),
            int(((in_dq & dnu) != 0).sum()), also)


#: coron3 run options of coron's runs (empty: its defaults; --options)
CORON_OPTIONS = {}


def _aumic_injection(asn_path, workdir, base_pa):
    """One injection of the fakes: the prepared set, both runs' i2d, SNR and DQ flags."""
    from .products import exposure_root, read_product

    prep = H.prepare_real_set(_AUMIC, asn_path, workdir, plain_options(asn_path),
                              base_pa=base_pa)
    runs = {"coron": H.run_pipeline(prep["asn"], os.path.join(workdir, "coron"),
                                    dict(CORON_OPTIONS)),
            "plain": H.run_pipeline(prep["asn"], os.path.join(workdir, "plain"),
                                    plain_options(prep["asn"]))}
    lod = prep["lod"]
    fakes = [c for c in prep["companions"] if c["kind"] == "fake"]
    imgs = {name: _i2d(run["i2d"])[1:] for name, run in runs.items()}
    off = np.array([c["offset"] for c in fakes]).reshape(-1, 2)
    snr = {name: H.companion_snr(img, c, off, lod, avoid=[f["avoid"] for f in fakes])
           for name, (img, c) in imgs.items()}
    asn_id = H.read_members(prep["asn"])["asn_id"]
    flags = {name: [] for name in runs}
    for e, path in enumerate(prep["exposures"]):
        inp = read_product(path)
        root = exposure_root(path) + (f"_{asn_id}" if asn_id else "")
        clean = os.path.join(prep["calib_dir"], f"{root}_psfsub.fits")
        clean_dq = read_product(clean).dq if os.path.exists(clean) else None
        for name, run in runs.items():
            sub = read_product(os.path.join(run["outdir"], f"{root}_psfsub.fits"))
            flags[name].append([_new_flags(sub.dq, inp.dq, f["detector"][e], lod, clean_dq)
                                for f in fakes])
    rows = []
    for k, f in enumerate(fakes):
        row = {key: f[key] for key in ("name", "sep_lod", "sep_pix", "pa", "amplitude",
                                       "noise")}
        row["base_pa"] = float(base_pa)
        row["transmission"] = f["transmission"]
        row["snr"] = {name: float(s[k]) for name, s in snr.items()}
        row["ratio"] = row["snr"]["coron"] / row["snr"]["plain"] \
            if row["snr"]["plain"] > 0 else float("nan")
        row["flags"] = {name: [int(sum(v[k][i] for v in flags[name])) for i in range(4)]
                        for name in runs}
        rows.append(row)
    return prep, runs, imgs, rows


def check_aumic(asn_path, workdir, *, rotations=ROTATIONS):
    """The AU Mic measures (module docstring); a JSON-able dict.

    The fakes are injected `rotations` times, turned by ``360 / rotations``
    degrees each time (as the panel does); the noise and the spine are
    measured in the first injection's images, with its fakes left out.
    """
    rotations = max(1, int(rotations))
    res = {"fakes": [], "noise": [], "spine": {}, "seconds": {"coron": 0.0, "plain": 0.0},
           "rotations": rotations}
    for k in range(rotations):
        base = H.FAKE_BASE_PA + 360.0 * k / rotations
        _progress(f"AU Mic: fakes from PA {base:.0f}; coron's defaults and plain KLIP")
        prep, runs, imgs_k, rows = _aumic_injection(asn_path, os.path.join(workdir, f"rot{k}"),
                                                    base)
        res["fakes"] += rows
        for name, run in runs.items():
            res["seconds"][name] += run["seconds"]
        if k == 0:
            first, imgs = prep, imgs_k
    lod = res["lod"] = first["lod"]
    img0, center = imgs["coron"]
    mask = H.sector_mask(img0.shape, center, _DISK_PA, _WEDGE_DEG)
    mask |= H.near_mask(img0.shape, [np.asarray(center) + c["offset"]
                                     for c in first["companions"]], 3.0 * lod)
    r = {k: _radius(v[0].shape, v[1]) for k, v in imgs.items()}
    for a, b in zip(_NOISE_EDGES[:-1], _NOISE_EDGES[1:]):
        row = {"r_in": float(a), "r_out": float(b)}
        for name, (img, _) in imgs.items():
            sel = (r[name] >= a) & (r[name] < b) & ~mask
            row[name] = H.robust_std(img[sel])
        row["ratio"] = row["coron"] / row["plain"] if row["plain"] > 0 else float("nan")
        row["pass"] = _check(row["coron"] - row["plain"], lambda d: d <= 0)
        res["noise"].append(row)
    for pa in _DISK_PA:
        side = {}
        for name, (img, c) in imgs.items():
            prof, total = spine_profile(img, c, pa, _SPINE_EDGES)
            side[name] = {"bins": prof.tolist(), "mean": total}
        side["ratio"] = side["coron"]["mean"] / side["plain"]["mean"]
        side["pass"] = _check(side["ratio"], lambda v: v >= 0.95)
        res["spine"][f"{pa:g}"] = side
    both = {}
    for name, (img, c) in imgs.items():
        sums = [spine_profile(img, c, pa, _SPINE_EDGES)[1] for pa in _DISK_PA]
        both[name] = float(np.mean(sums))
    both["ratio"] = both["coron"] / both["plain"]
    both["pass"] = _check(both["ratio"], lambda v: v >= 0.95)
    res["spine"]["both"] = both
    ratios = np.array([f["ratio"] for f in res["fakes"]])
    ratios = ratios[np.isfinite(ratios)]
    res["snr_median_ratio"] = float(np.median(ratios)) if ratios.size else float("nan")
    res["snr_pass"] = _check(res["snr_median_ratio"], lambda v: v >= 1.3)
    res["noise_pass"] = _all(n["pass"] for n in res["noise"])
    res["flag_pass"] = all(f["flags"]["coron"][0] == 0 and f["flags"]["coron"][1] == 0
                           for f in res["fakes"])
    return res


def format_aumic(res):
    """The AU Mic section (plain text)."""
    lines = [f"== AU Mic ({_AUMIC}), fakes injected {res['rotations']} time(s) "
             f"(lambda/D = {res['lod']:.2f} px); run time coron {res['seconds']['coron']:.1f} s, "
             f"plain {res['seconds']['plain']:.1f} s",
             f"-- residual noise, robust std (MJy/sr) in the i2d, disk wedge +-{_WEDGE_DEG:g} "
             "deg and fakes left out; target coron <= plain in every annulus",
             f"{'r/px':>11} {'coron':>10} {'plain':>10} {'ratio':>6}  target"]
    for n in res["noise"]:
        lines.append(f"{n['r_in']:5.1f}-{n['r_out']:5.1f} {n['coron']:10.4g} {n['plain']:10.4g} "
                     f"{n['ratio']:6.3f}  <= 1  {_pf(n['pass'])}")
    npass = sum(n["pass"] is True for n in res["noise"])
    nmeas = sum(n["pass"] is not None for n in res["noise"])
    lines.append(f"noise <= plain in every annulus: {npass}/{nmeas} measured annuli  "
                 f"{_pf(res['noise_pass'])}")
    bins = " ".join(f"{a:>2.0f}-{b:<2.0f}" for a, b in zip(_SPINE_EDGES[:-1], _SPINE_EDGES[1:]))
    lines.append(f"-- disk spine: mean in a {2 * _SPINE_HALF_WIDTH:g}-px strip (MJy/sr), per "
                 f"10-px bin and over 10-80 px; target coron >= 0.95 x plain")
    lines.append(f"{'PA':>6} {'method':>6}  {bins}  {'10-80':>7}")
    for pa in _DISK_PA:
        side = res["spine"][f"{pa:g}"]
        for name in ("coron", "plain"):
            vals = " ".join(f"{v:5.2f}" for v in side[name]["bins"])
            lines.append(f"{pa:6.1f} {name:>6}  {vals}  {side[name]['mean']:7.3f}")
        ratio_bins = " ".join(f"{a / b:5.2f}" if b else "  n/a" for a, b in
                              zip(side["coron"]["bins"], side["plain"]["bins"]))
        lines.append(f"{pa:6.1f} {'ratio':>6}  {ratio_bins}  {side['ratio']:7.3f}  >= 0.95  "
                     f"{_pf(side['pass'])}")
    b = res["spine"]["both"]
    lines.append(f"spine, both sides 10-80 px: coron {b['coron']:.3f}, plain {b['plain']:.3f}, "
                 f"ratio {b['ratio']:.3f}  target >= 0.95  {_pf(b['pass'])}")
    lines.append("-- injected companions: aperture t-test SNR in the i2d (as in the panel); "
                 "flags = pixels within lambda/D in the psfsub DQ, summed over exposures: "
                 "OUTLIER / newly DO_NOT_USE / DO_NOT_USE already in the input / of the "
                 "first two, also flagged without the fakes (plain run on the data as they are)")
    lines.append(f"{'name':<8} {'sep/lD':>6} {'sep/px':>6} {'PA':>6} {'T':>5} {'coron':>6} "
                 f"{'plain':>6} {'ratio':>6}  {'flags coron':>13} {'flags plain':>13}")
    for f in res["fakes"]:
        fl = {k: "/".join(str(v) for v in f["flags"][k]) for k in ("coron", "plain")}
        tag = f"{f['name']}" + (f"@{f['base_pa'] - H.FAKE_BASE_PA:.0f}" if
                                f["base_pa"] != H.FAKE_BASE_PA else "")
        lines.append(f"{tag:<8} {f['sep_lod']:6.2f} {f['sep_pix']:6.1f} {f['pa']:6.1f} "
                     f"{np.mean(f['transmission']):5.2f} {f['snr']['coron']:6.2f} "
                     f"{f['snr']['plain']:6.2f} {f['ratio']:6.2f}  {fl['coron']:>13} "
                     f"{fl['plain']:>13}")
    lines.append(f"companions' median SNR ratio coron/plain ({len(res['fakes'])} fakes): "
                 f"{res['snr_median_ratio']:.3f}  "
                 f"target >= 1.3  {_pf(res['snr_pass'])}")
    nflag = sum(f["flags"]["coron"][0] + f["flags"]["coron"][1] for f in res["fakes"])
    nalso = sum(f["flags"]["coron"][3] for f in res["fakes"])
    lines.append(f"companion pixels newly flagged (OUTLIER or DO_NOT_USE) by coron: {nflag} "
                 f"({nalso} of them also without the fakes)  target none  "
                 f"{_pf(res['flag_pass'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# HD 106906
# ---------------------------------------------------------------------------
def _history_entries(header):
    """HISTORY entries of a header, a wrapped entry's cards joined again.

    FITS cards hold 72 characters: a long entry continues on the next card,
    taken here as a continuation when the card before it is 70 or more
    characters long.
    """
    out, prev = [], 0
    for card in header.get("HISTORY", []):
        text = str(card)
        if out and prev >= 70:
            out[-1] += ("" if prev == 72 else " ") + text
        else:
            out.append(text)
        prev = len(text)
    return out


def _background_record(run_dir, asn_path):
    """What a run's products record of the background, beyond what their inputs say.

    Primary-header cards starting with BKG and HISTORY entries mentioning
    background that no input exposure's header already holds.

    Returns
    -------
    list of dict
        One per distinct record: 'products' (file names), 'cards' ("KEY = value"),
        'history'.
    """
    from astropy.io import fits

    seen_cards, seen_hist = set(), set()
    for _, path, _ in H.read_members(asn_path)["members"]:
        h = fits.getheader(path, 0)
        seen_cards.update((key, h[key]) for key in h if key.startswith("BKG"))
        seen_hist.update(_history_entries(h))
    names = sorted(os.listdir(run_dir), key=lambda n: (not n.endswith("_psfstack.fits"),
                                                       not n.endswith("_psfsub.fits"), n))
    records = []
    for name in names:
        if not name.endswith(".fits"):
            continue
        h = fits.getheader(os.path.join(run_dir, name), 0)
        cards = [f"{key} = {h[key]!r}" for key in h
                 if key.startswith("BKG") and (key, h[key]) not in seen_cards]
        hist = [v for v in _history_entries(h)
                if "background" in v.lower() and v not in seen_hist]
        if not cards and not hist:
            continue
        for rec in records:
            if rec["cards"] == cards and rec["history"] == hist:
                rec["products"].append(name)
                break
        else:
            records.append({"products": [name], "cards": cards, "history": hist})
    return records


def _block_scatter(img, center, mask, *, size=30, rmin=30.0, min_fill=0.5):
    """Std of the medians of size x size blocks beyond rmin px, and the pixels' noise."""
    ny, nx = img.shape
    r = _radius(img.shape, center)
    ok = np.isfinite(img) & ~mask
    x0 = center[0] + size / 2.0 - size * np.ceil((center[0] + size / 2.0) / size)
    y0 = center[1] + size / 2.0 - size * np.ceil((center[1] + size / 2.0) / size)
    meds, pix = [], []
    for ys in np.arange(y0, ny, size):
        for xs in np.arange(x0, nx, size):
            a, b = int(np.ceil(ys)), int(np.ceil(ys + size))
            c, d = int(np.ceil(xs)), int(np.ceil(xs + size))
            a, c = max(a, 0), max(c, 0)
            b, d = min(b, ny), min(d, nx)
            if b - a < size // 2 or d - c < size // 2:
                continue
            blk = (slice(a, b), slice(c, d))
            if r[blk].min() <= rmin:
                continue
            good = ok[blk]
            if good.sum() < min_fill * size * size:
                continue
            vals = img[blk][good]
            meds.append(float(np.median(vals)))
            pix.append(vals)
    if len(meds) < 2:
        return float("nan"), float("nan"), len(meds)
    return float(np.std(meds, ddof=1)), H.robust_std(np.concatenate(pix)), len(meds)


def _nearest_b(det_path):
    from astropy.table import Table

    t = Table.read(det_path, hdu="DETECTIONS")
    if len(t) == 0 or "sep_arcsec" not in t.colnames:
        return None
    want = H.sky_offsets(_B_SEP, _B_PA, 0.0)
    got = H.sky_offsets(np.asarray(t["sep_arcsec"], float), np.asarray(t["pa"], float), 0.0)
    k = int(np.argmin(np.hypot(*(got - want).T)))
    return {key: float(t[key][k]) for key in ("sep_arcsec", "pa", "flux", "snr")} | \
        {"distance_arcsec": float(np.hypot(*(got[k] - want))), "ncand": len(t)}


def check_hd106906(asn_path, workdir):
    """The HD 106906 measures (module docstring); a JSON-able dict."""
    from .products import pixel_scale_arcsec

    runs = {"coron": H.run_pipeline(asn_path, os.path.join(workdir, "coron"),
                                    dict(CORON_OPTIONS, detect=5)),
            "plain": H.run_pipeline(asn_path, os.path.join(workdir, "plain"),
                                    dict(plain_options(asn_path), detect=5))}
    res = {"background": _background_record(runs["coron"]["outdir"], asn_path),
           "background_plain": _background_record(runs["plain"]["outdir"], asn_path),
           "seconds": {k: r["seconds"] for k, r in runs.items()}}
    for name, run in runs.items():
        prod, img, center = _i2d(run["i2d"])
        scale = pixel_scale_arcsec(prod.sci_header)
        geom = H.exposure_geometry(H.read_members(asn_path)["members"][0][1])
        lod = H.lambda_over_d_pix(H.filter_wavelength_um(geom["filter"]), scale)
        b = _nearest_b(H.find_product(run["outdir"], "_detections.fits"))
        b_xy = np.asarray(center) + H.sky_offsets(_B_SEP / scale, _B_PA, 0.0)
        if b is not None and b["distance_arcsec"] < 0.5:
            b_xy = np.asarray(center) + H.sky_offsets(b["sep_arcsec"] / scale, b["pa"], 0.0)
        mask = H.near_mask(img.shape, [b_xy], 3.0 * lod)
        r = _radius(img.shape, center)
        sel = (r >= 50) & (r <= 90) & np.isfinite(img) & ~mask
        vals = img[sel]
        n_eff = vals.size / (np.pi / 4.0 * lod ** 2)       # resolution elements
        med = float(np.median(vals)) if vals.size else float("nan")
        se = float(1.2533 * H.robust_std(vals) / np.sqrt(max(n_eff, 1.0)))
        scatter, noise, nblk = _block_scatter(img, center, mask)
        sep_ok = b is not None and abs(b["sep_arcsec"] - _B_SEP) <= 0.1
        pa_ok = b is not None and abs((b["pa"] - _B_PA + 180.0) % 360.0 - 180.0) <= 2.0
        res[name] = {"median_50_90": med, "stderr_50_90": se, "npix_50_90": int(vals.size),
                     "median_pass": _check(abs(med) - se, lambda d: d <= 0),
                     "block_scatter": scatter, "pixel_noise": noise, "nblocks": nblk,
                     "block_ratio": scatter / noise if noise else float("nan"),
                     "b": b, "b_sep_pass": bool(sep_ok), "b_pa_pass": bool(pa_ok),
                     "b_pass": bool(sep_ok and pa_ok), "lod": lod}
        res[name]["block_pass"] = _check(res[name]["block_ratio"], lambda v: v <= 0.3)
    return res


def format_hd106906(res):
    """The HD 106906 section (plain text)."""
    lines = [f"== HD 106906 ({_HD}), as observed; run time coron {res['seconds']['coron']:.1f} s, "
             f"plain {res['seconds']['plain']:.1f} s"]
    if res["background"]:
        lines.append("background (what coron's products record, beyond their inputs):")
        for rec in res["background"]:
            more = f" (and {len(rec['products']) - 1} more)" if len(rec["products"]) > 1 else ""
            lines.append(f"  {rec['products'][0]}{more}:")
            if rec["cards"]:
                lines.append("    " + ", ".join(rec["cards"]))
            lines += [f"    HISTORY {h}" for h in rec["history"]]
    else:
        lines.append("background: not handled by this version")
    c, p = res["coron"], res["plain"]
    lines.append(f"{'quantity':<38} {'coron':>16} {'plain':>16}  {'target':<22} coron plain")
    lines.append(f"{'residual median 50-90 px (MJy/sr)':<38} "
                 f"{c['median_50_90']:+8.4f}+-{c['stderr_50_90']:.4f} "
                 f"{p['median_50_90']:+8.4f}+-{p['stderr_50_90']:.4f}  "
                 f"{'|median| <= 1 s.e.':<22} {_pf(c['median_pass'])}  {_pf(p['median_pass'])}")
    lines.append(f"{'30-px block median scatter / pix noise':<38} {c['block_ratio']:16.3f} "
                 f"{p['block_ratio']:16.3f}  {'<= 0.3':<22} {_pf(c['block_pass'])}  "
                 f"{_pf(p['block_pass'])}")
    for key, label in (("block_scatter", "  scatter of the block medians"),
                       ("pixel_noise", "  pixel noise (robust std)")):
        lines.append(f"{label:<38} {c[key]:16.4f} {p[key]:16.4f}")
    lines.append(f"{'  blocks used':<38} {c['nblocks']:16d} {p['nblocks']:16d}")

    def b_val(r, key, fmt):
        return format(r["b"][key], fmt) if r["b"] else "not found"

    lines.append(f"{'HD 106906 b separation (arcsec)':<38} {b_val(c, 'sep_arcsec', '16.3f'):>16} "
                 f"{b_val(p, 'sep_arcsec', '16.3f'):>16}  {'7.1 +- 0.1':<22} "
                 f"{_pf(c['b_sep_pass'])}  {_pf(p['b_sep_pass'])}")
    lines.append(f"{'HD 106906 b position angle (deg)':<38} {b_val(c, 'pa', '16.2f'):>16} "
                 f"{b_val(p, 'pa', '16.2f'):>16}  {'307 +- 2':<22} "
                 f"{_pf(c['b_pa_pass'])}  {_pf(p['b_pa_pass'])}")
    lines.append(f"{'HD 106906 b flux (detection table)':<38} {b_val(c, 'flux', '16.4g'):>16} "
                 f"{b_val(p, 'flux', '16.4g'):>16}")
    lines.append(f"{'HD 106906 b SNR (detection table)':<38} {b_val(c, 'snr', '16.2f'):>16} "
                 f"{b_val(p, 'snr', '16.2f'):>16}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m coron_cli.realcheck",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/realdata",
                    help="folder holding aumic-f356w/ and hd106906-miri/ (default %(default)s)")
    ap.add_argument("--rotations", type=int, default=ROTATIONS,
                    help="injections of AU Mic's fakes, turned by 360/N degrees "
                         "(default %(default)s, as the panel)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write every number here")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep the products here (default: a temporary folder, removed)")
    ap.add_argument("--options", default=None, metavar="K=V[,K=V]",
                    help="coron3 run options for coron's runs instead of its defaults (to "
                         "check a candidate default, as the panel's --variant)")
    a = ap.parse_args(argv)
    if a.options:
        from .panel import parse_variant

        try:
            CORON_OPTIONS.update(parse_variant(a.options)[1])
        except ValueError as exc:
            ap.error(str(exc))
        print(f"# coron's runs with {a.options}")
    sets = dict(H.find_real_sets(a.data))
    if not sets:
        print(f"realcheck: no real data at {a.data} (--data DIR); nothing to check",
              file=sys.stderr)
        return 0
    print("# coron realcheck: coron's defaults vs plain KLIP ("
          + ", ".join(f"{k}={v}" for k, v in PLAIN.items())
          + "; truncate=None: all reference slices); targets and PASS/FAIL apply to coron")
    out, verdicts = {}, []
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(H.quiet())
        root = a.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="coron_real_"))
        if _AUMIC in sets:
            _progress("AU Mic")
            out["aumic"] = r = check_aumic(sets[_AUMIC], os.path.join(root, _AUMIC),
                                           rotations=a.rotations)
            print(format_aumic(r), flush=True)
            verdicts += [r["noise_pass"], r["spine"]["both"]["pass"], r["snr_pass"],
                         r["flag_pass"]]
        else:
            print(f"AU Mic: no {_AUMIC}/ in {a.data}; skipped")
        if _HD in sets:
            _progress("HD 106906")
            out["hd106906"] = r = check_hd106906(sets[_HD], os.path.join(root, _HD))
            print(format_hd106906(r), flush=True)
            c = r["coron"]
            verdicts += [c["median_pass"], c["block_pass"], c["b_pass"]]
        else:
            print(f"HD 106906: no {_HD}/ in {a.data}; skipped")
    wall = time.perf_counter() - t0
    npass = sum(v is True for v in verdicts)
    nfail = sum(v is False for v in verdicts)
    print(f"== {npass} PASS, {nfail} FAIL, {len(verdicts) - npass - nfail} not measurable, of "
          f"{len(verdicts)} acceptance checks for coron's defaults; wall time {wall:.1f} s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(H.to_json(dict(out, wall_s=wall)), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
