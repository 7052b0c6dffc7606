"""Does choosing references from a library raise the companions' SNR? (issue 16)

For each seed, coron's simulator makes a science target (two rolls, companions of known
position and contrast at several separations) and a reference library of calints files
of the same set-up (NIRCam round mask) that mixes

- a few references taken close in time to the science: the simulator's own reference
  visits (one or two stars; wavefront 2-6 nm RMS from the science's, colour mismatch
  within +-1, flux ratio 0.25-4), and
- many from other epochs: each epoch a star of its own (colour mismatch within +-1.5,
  flux ratio 0.25-4) observed when the wavefront had drifted by 5-20 nm RMS from the
  science's (the simulator's drift model: a power-law low-order aberration on top of
  the same static one; the same detector, sky level and noise model).

The library's make-up (how many near-time stars and their dithers, how many epochs, each
epoch's drift, star and dither) is drawn from the seed. Then ``coron3 run`` (default
settings) runs on

- best:   the frames ``coron-select --top N`` chooses (frame-level: ``integrations``);
- whole:  every frame of the library;
- random: as many frames as ``best`` uses, drawn at random from the library (several
          draws: their median and range);
- near:   only the near-time frames (what a perfect selection would know; context);
- whole/Mm: the whole library with ``--truncate M``, M the number of frames of ``best``
          (a diagnostic: how much of a difference is the number of KL modes).

and each companion's SNR is measured in the i2d as ``make panel`` does (the aperture
t-test of Mawet et al. 2014 at the true position, the other companions kept out of the
noise apertures; :func:`coron_cli._harness.companion_snr`).

Plain text table on stdout, progress on stderr. ``--quick`` (64 px, one seed, two random
draws) runs in under a minute; the default (160 px, seeds 0-4, five draws) in under ten
on two cores.

    .venv/bin/python benchmarks/select_science.py [--quick] [--seeds 0,1,2] [--top N]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

_TAG = 16002                 # random-stream tag of this benchmark (the simulator's are small)
_OTHER_WFE_NM = (5.0, 20.0)  # drift of the other epochs' wavefront from the science's
_OTHER_COLOUR = 1.5          # colour mismatch of the other epochs' stars: within +-this
_NEAR_COLOUR = 1.0           # ... of the near-time stars (the simulator's colour_spread)
_OTHER_DITHERS = ("NONE", "NONE", "5-POINT-BOX")


def progress(msg):
    print(f"[select-science] {msg}", file=sys.stderr, flush=True)


def _tool(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def _run(cmd):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                         check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(str(c) for c in cmd[:2])} failed "
                           f"({res.returncode}): {res.stderr.strip()[-400:]}")
    return res


# --------------------------------------------------------------------------- the data

def draw_composition(seed, quick, other_wfe=_OTHER_WFE_NM):
    """The library's make-up for a seed: near-time stars and the other epochs (their
    drift uniform over `other_wfe`, nm RMS)."""
    rng = np.random.default_rng([seed, _TAG])
    n_near = int(rng.integers(1, 3))
    near = ["5-POINT-BOX" if rng.random() < 0.5 else "NONE"] + ["NONE"] * (n_near - 1)
    n_epochs = int(rng.integers(4, 7) if quick else rng.integers(8, 15))
    epochs = []
    for _ in range(n_epochs):
        epochs.append({"wfe_nm": float(rng.uniform(*other_wfe)),
                       "colour": float(rng.uniform(-_OTHER_COLOUR, _OTHER_COLOUR)),
                       "flux_ratio": float(np.exp(rng.uniform(np.log(0.25), np.log(4.0)))),
                       "dither": str(rng.choice(_OTHER_DITHERS))})
    return {"near_dithers": near, "epochs": epochs}


def _static_opd(S, opt, seed):
    """The static wavefront of the simulation of `seed` (the simulator's own draws)."""
    rng_w = np.random.default_rng([seed, S._S_WAVE])
    static = S._powerlaw_opd(rng_w, opt, 1, 2.5, S._STATIC_WFE_NM)[0]
    pist = rng_w.normal(0.0, S._SEGMENT_PISTON_NM, 18)
    static = static + np.where(opt.seg_index >= 0, pist[opt.seg_index], 0.0)
    return S._remove_ptt(opt, static[None])[0]


def other_epochs(ds, seed, composition, nint):
    """The other epochs' reference exposures (SimExposure), with the science's optics,
    static wavefront, detector (bad-pixel map) and sky level, each epoch's own drift,
    star, pointing, noise and cosmic rays."""
    from coron_cli import simulate as S
    from coron_cli.sim_setups import dither_offsets

    truth = ds.truth
    npix = truth["npix"]
    opt = S._get_optics(npix, "nircam-round", 0)
    mc = np.array(opt.center)
    static = _static_opd(S, opt, seed)
    unocc = S._images(opt, static[None], np.zeros((1, 2)), coron=False)[0]
    norm = truth["star_peak"] / unocc.max()
    if not np.allclose(unocc * norm, ds.offaxis_psf, rtol=1e-4, atol=1e-3 * norm):
        raise RuntimeError("the static wavefront differs from the simulator's (its draws "
                           "changed): update _static_opd")
    tot = sum(w * lw ** 2 for w, lw in zip(opt.weights, opt.lod_w))
    rng_b = np.random.default_rng([seed, S._S_BADPIX])
    fixed = rng_b.random((npix, npix)) < S._BADPIX_FRAC
    badmap = (fixed, rng_b.integers(0, 4, (npix, npix)))
    skymap = S._sky_pattern(opt, S._transmission_map(opt, False), None)
    spec = S._CORONAGRAPHS["nircam-round"]
    # the wavefront the other epochs scatter about: the science's own (0, as before), or
    # one `science_epoch_nm` RMS away from it (the science epoch's own offset from the
    # long-term mean, which no other epoch shares); a stream of its own
    common = None
    if composition.get("science_epoch_nm"):
        rng_e = np.random.default_rng([seed, _TAG, 6])
        common = S._powerlaw_opd(rng_e, opt, 1, 3.0, composition["science_epoch_nm"])[0]
    out = []
    for e, ep in enumerate(composition["epochs"]):
        rng = np.random.default_rng([seed, _TAG, 1, e])
        rng_n = np.random.default_rng([seed, _TAG, 2, e])
        rng_bad = np.random.default_rng([seed, _TAG, 3, e])
        rng_c = np.random.default_rng([seed, _TAG, 4, e])
        if composition.get("drift") == "segments":
            # half the drift's variance in the segments' pistons (their own stream, so the
            # other draws stay those of the low-order model): speckles at a few lambda/D
            rng_s = np.random.default_rng([seed, _TAG, 5, e])
            pist = rng_s.normal(0.0, 1.0, 18)
            seg = np.where(opt.seg_index >= 0, pist[np.maximum(opt.seg_index, 0)], 0.0)
            seg = S._normalise(opt, seg[None], ep["wfe_nm"] / np.sqrt(2.0))[0]
            delta = S._powerlaw_opd(rng, opt, 1, 3.0, ep["wfe_nm"] / np.sqrt(2.0))[0] + seg
        else:
            delta = S._powerlaw_opd(rng, opt, 1, 3.0, ep["wfe_nm"])[0]
        if common is not None:
            delta = delta + common
        pix, hdr_off = dither_offsets(ep["dither"], "NIRCAM", opt.pixscale)
        npt = len(pix)
        opd = S._visit_opd(rng, opt, static + delta, npt * nint)
        ta = S._ta_offset(rng)
        xy = []
        for k in range(npt):
            pos = mc + ta + pix[k]
            if npt > 1:
                pos = pos + rng.normal(0.0, S._DITHER_ERR_MAS / 1000.0 / opt.pixscale, 2)
            xy.append(pos + rng.normal(0.0, S._POINT_JITTER_PIX, (nint, 2)))
        weights = S._colour_weights(opt, ep["colour"])
        img = S._images(opt, opd, np.concatenate(xy) - mc, coron=True, weights=weights)
        img = img.reshape(npt, nint, npix, npix)
        scale = norm * ep["flux_ratio"]
        if weights is not None:
            scale *= tot / sum(w * lw ** 2 for w, lw in zip(weights, opt.lod_w))
        roll = float(np.round(rng.uniform(0.0, 360.0), 3))
        coord = (160.0 + 3.0 * e, -20.0 - 1.5 * e)
        level = truth["background"] * (1.0 + rng.normal(0.0, 0.03))
        for k in range(npt):
            model = scale * img[k] + level * skymap
            events = S._cosmic_rays(rng_c, model.shape)
            (sci, err, dq), _, _ = S._detector(model, None, (rng_n, rng_bad), badmap, events)
            extra = {"PATTTYPE": ep["dither"], "PATT_NUM": k + 1, "NUMDTHPT": npt,
                     "XOFFSET": float(hdr_off[k][0]), "YOFFSET": float(hdr_off[k][1]),
                     "VISIT": "001", "EXPOSURE": str(k + 1)}
            hdr = S._header(f"LIB-STAR{e + 1:02d}", coord, roll, nint, True, "001",
                            S._T0_MJD - 30.0 * (e + 1) + 0.02 * k, extra, spec["header"],
                            f"{90000 + e}", opt.pixscale, spec["subarray"])
            name = f"epoch{e + 1:02d}" + (f"_dither{k + 1}" if npt > 1 else "") + \
                "_calints.fits"
            out.append(S.SimExposure(name, "psf", sci, err, dq, hdr,
                                     S._wcs(mc, coord, roll, opt.pixscale), xy[k].copy()))
    return out


def make_data(seed, size, quick, folder, drift="low-order", other_wfe=_OTHER_WFE_NM,
              star_peak=None, science_epoch=0.0):
    """Write the science (``sci/``) and the library (``library/``) of a seed.

    Returns a dict: science paths, library paths, near-time paths, truth, composition.
    """
    from coron_cli.demo import _to_product, write_simulation
    from coron_cli.products import write_product
    from coron_cli.sim_setups import RefStar, Setup
    from coron_cli.simulate import SIZES, simulate_dataset

    comp = draw_composition(seed, quick, other_wfe)
    comp["drift"] = drift
    comp["science_epoch_nm"] = float(science_epoch or 0.0)
    nint = 2
    setup = Setup(name="select-science", coronagraph="nircam-round", science_rolls=2,
                  roll_delta_deg=10.0, nints=nint,
                  refs=tuple(RefStar(dither=d) for d in comp["near_dithers"]),
                  colour_spread=_NEAR_COLOUR, star_peak=star_peak)
    ds = simulate_dataset(size, seed=seed, setup=setup)
    sci_dir, lib_dir = os.path.join(folder, "sci"), os.path.join(folder, "library")
    os.makedirs(sci_dir)
    os.makedirs(lib_dir)
    write_simulation(ds, sci_dir)
    near = []
    for exp in ds.exposures:
        if exp.exptype == "psf":
            name = exp.name.replace("demo_", "near_")
            os.replace(os.path.join(sci_dir, exp.name), os.path.join(lib_dir, name))
            near.append(os.path.join(lib_dir, name))
    for exp in other_epochs(ds, seed, comp, nint):
        write_product(_to_product(exp), os.path.join(lib_dir, exp.name))
    science = [os.path.join(sci_dir, e.name) for e in ds.exposures if e.exptype == "science"]
    library = sorted(os.path.join(lib_dir, f) for f in os.listdir(lib_dir)
                     if f.endswith("_calints.fits"))
    comp["near_wfe_nm"] = [r["wfe_delta_nm"] for r in ds.truth["refs"]]
    comp["near_frames"] = len(near) * nint
    comp["other_frames"] = (len(library) - len(near)) * nint
    comp["nint"] = nint
    assert SIZES[size][0] == ds.truth["npix"]
    return {"science": science, "library": library, "near": near, "truth": ds.truth,
            "composition": comp}


# --------------------------------------------------------------------------- the runs

def write_asn(path, science, frames, name):
    """An association of `science` and the library `frames` ({file: [integrations] or
    None for all})."""
    folder = os.path.dirname(os.path.abspath(path))
    members = [{"expname": os.path.relpath(p, folder), "exptype": "science"} for p in science]
    for f, ints in frames.items():
        m = {"expname": os.path.relpath(f, folder), "exptype": "psf"}
        if ints is not None:
            m["integrations"] = sorted(int(i) for i in ints)
        members.append(m)
    data = {"asn_type": "coron3", "asn_id": "c1001", "asn_pool": "select-science",
            "products": [{"name": name, "members": members}]}
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
    return path


def run_and_measure(asn, outdir, truth, options=()):
    """coron3 run (defaults, or `options`) on `asn`; each companion's SNR in the i2d."""
    from coron_cli import _harness as H
    from coron_cli.products import read_product, star_center

    _run([_tool("coron3"), "run", asn, "--outdir", outdir, "-q", *options])
    i2d_path = [os.path.join(outdir, f) for f in os.listdir(outdir) if f.endswith("_i2d.fits")]
    i2d = read_product(i2d_path[0], ndims=(2,))
    center, _ = star_center(i2d.sci_header, i2d.sci.shape)
    off = np.array([p["xy_north_up"] for p in truth["planets"]], dtype=np.float64)
    snr = H.companion_snr(np.asarray(i2d.sci, np.float64), center, off,
                          float(truth["lambda_over_d_pix"]))
    shutil.rmtree(outdir, ignore_errors=True)    # the products are large; the SNRs are kept
    return snr


def near_ranks(scores_path, near):
    """The ranks (1 = best; per science exposure, all of them) that coron-select gave the
    near-time frames."""
    from astropy.table import Table

    t = Table.read(scores_path)
    is_near = np.array([os.path.normpath(os.path.abspath(str(f))) in near for f in t["file"]])
    return [int(r) for r in t["rank"][is_near]]


def one_seed(seed, args, workroot):
    t0 = time.perf_counter()
    folder = os.path.join(workroot, f"seed{seed}")
    os.makedirs(folder)
    data = make_data(seed, args.size, args.quick, folder, args.drift, args.other_wfe,
                     getattr(args, "star_peak", None), getattr(args, "science_epoch", 0.0))
    comp, truth = data["composition"], data["truth"]
    nint = comp["nint"]
    progress(f"seed {seed}: {len(comp['near_dithers'])} near-time star(s), {comp['near_frames']} "
             f"frames; {len(comp['epochs'])} other epochs, {comp['other_frames']} frames "
             f"({time.perf_counter() - t0:.0f} s)")
    res = {"seed": seed, "composition": comp, "snr": {}, "planets": truth["planets"]}
    # (a) coron-select --top N
    best_asn = os.path.join(folder, "best_asn.json")
    _run([_tool("coron-select"), *data["science"], "-L", os.path.join(folder, "library"),
          "--top", args.top, "-o", best_asn, "-q", *args.select_option])
    with open(best_asn) as fh:
        members = json.load(fh)["products"][0]["members"]
    chosen = {os.path.normpath(os.path.join(folder, m["expname"])): m.get("integrations")
              for m in members if m["exptype"] == "psf"}
    n_frames = sum(len(v) if v is not None else nint for v in chosen.values())
    near_set = set(data["near"])
    res["best_frames"] = n_frames
    res["best_near"] = sum(len(v) if v is not None else nint
                           for f, v in chosen.items() if f in near_set)
    res["near_ranks"] = near_ranks(os.path.join(folder, "best_refscores.ecsv"), near_set)
    runs = [("best", best_asn)]
    runs.append(("whole", write_asn(os.path.join(folder, "whole_asn.json"), data["science"],
                                    {f: None for f in data["library"]}, "whole")))
    # a diagnostic: the whole library, but as many KL modes as best has frames
    runs.append(("whole_m", runs[-1][1], ["--truncate", n_frames]))
    runs.append(("near", write_asn(os.path.join(folder, "near_asn.json"), data["science"],
                                   {f: None for f in data["near"]}, "near")))
    frames = [(f, i) for f in data["library"] for i in range(nint)]
    for r in range(args.random):
        rng = np.random.default_rng([seed, _TAG, 9, r])
        pick = rng.choice(len(frames), size=n_frames, replace=False)
        sel = {}
        for k in sorted(pick):
            sel.setdefault(frames[k][0], []).append(frames[k][1])
        runs.append((f"random{r}", write_asn(os.path.join(folder, f"random{r}_asn.json"),
                                             data["science"], sel, f"random{r}")))
    for label, asn, *options in runs:
        t1 = time.perf_counter()
        res["snr"][label] = run_and_measure(asn, os.path.join(folder, f"out_{label}"), truth,
                                            *options).tolist()
        progress(f"seed {seed}: {label}: median SNR {np.nanmedian(res['snr'][label]):.1f} "
                 f"({time.perf_counter() - t1:.0f} s)")
    res["seconds"] = time.perf_counter() - t0
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- the table

def _random_stats(res):
    """Per companion, the median and range over the random draws; per draw, the median."""
    draws = np.array([v for k, v in res["snr"].items() if k.startswith("random")])
    return draws


def format_table(results, args):
    lines = []
    top = args.top
    lines.append(f"coron-select science check: {args.size} simulation, NIRCam round mask, two "
                 f"rolls; other epochs' drift {getattr(args, 'drift', 'low-order')}, "
                 f"{args.other_wfe[0]:g}-{args.other_wfe[1]:g} nm RMS; coron3 "
                 f"run defaults; best = coron-select --top {top}"
                 + (f"; star peak {args.star_peak:.3g} counts per integration"
                    if getattr(args, "star_peak", None) else "")
                 + (f"; the other epochs scatter about a wavefront {args.science_epoch:g} nm "
                    f"RMS from the science's" if getattr(args, "science_epoch", 0) else ""))
    lines.append("SNR: aperture t-test (Mawet et al. 2014) at each companion's true position "
                 "in the i2d")
    lines.append("")
    for res in results:
        comp = res["composition"]
        ep = comp["epochs"]
        wfe = [e["wfe_nm"] for e in ep]
        lines.append(
            f"seed {res['seed']}: library {comp['near_frames'] + comp['other_frames']} frames "
            f"({comp['nint']} integrations a file): {comp['near_frames']} near-time "
            f"({len(comp['near_dithers'])} star(s), dithers {'/'.join(comp['near_dithers'])}, "
            f"wavefront {'/'.join(f'{w:.1f}' for w in comp['near_wfe_nm'])} nm from the "
            f"science's) + {comp['other_frames']} of {len(ep)} other epochs (drift "
            f"{min(wfe):.1f}-{max(wfe):.1f} nm)")
        ranks = res["near_ranks"]
        lines.append(f"  best: {res['best_frames']} frames chosen, {res['best_near']} of them "
                     f"near-time (their ranks: median {np.median(ranks):.0f}, best {min(ranks)} "
                     f"of {comp['near_frames'] + comp['other_frames']}); random: "
                     f"{res['best_frames']} frames, {args.random} draws")
        draws = _random_stats(res)
        rmed = np.nanmedian(draws, axis=0)
        rlo, rhi = np.nanmin(draws, axis=0), np.nanmax(draws, axis=0)
        m = res["best_frames"]
        lines.append(f"  {'sep_lod':>7} {'contrast':>8} {'best':>7} {'whole':>7} "
                     f"{'random (min-max)':>22} {'near':>7} {f'whole/{m}m':>9}")
        for k, p in enumerate(res["planets"]):
            lines.append(f"  {p['sep_lod']:7.2f} {p['contrast']:8.1e} "
                         f"{res['snr']['best'][k]:7.1f} {res['snr']['whole'][k]:7.1f} "
                         f"{rmed[k]:8.1f} ({rlo[k]:5.1f}-{rhi[k]:5.1f}) "
                         f"{res['snr']['near'][k]:7.1f} {res['snr']['whole_m'][k]:9.1f}")
        per_draw = np.nanmedian(draws, axis=1)
        lines.append(f"  {'median':>7} {'':8} {np.nanmedian(res['snr']['best']):7.1f} "
                     f"{np.nanmedian(res['snr']['whole']):7.1f} "
                     f"{np.nanmedian(per_draw):8.1f} ({per_draw.min():5.1f}-"
                     f"{per_draw.max():5.1f}) {np.nanmedian(res['snr']['near']):7.1f} "
                     f"{np.nanmedian(res['snr']['whole_m']):9.1f}")
        lines.append("")
    # over all seeds and companions
    best = np.concatenate([r["snr"]["best"] for r in results])
    whole = np.concatenate([r["snr"]["whole"] for r in results])
    near = np.concatenate([r["snr"]["near"] for r in results])
    whole_m = np.concatenate([r["snr"]["whole_m"] for r in results])
    rand = np.concatenate([np.nanmedian(_random_stats(r), axis=0) for r in results])
    n = len(best)
    lines.append(f"all {len(results)} seed(s), {n} companions: median SNR best "
                 f"{np.nanmedian(best):.1f}, whole {np.nanmedian(whole):.1f}, random "
                 f"{np.nanmedian(rand):.1f} (median of the draws), near-time only "
                 f"{np.nanmedian(near):.1f}, whole with as many modes as best has frames "
                 f"{np.nanmedian(whole_m):.1f}")
    with np.errstate(divide="ignore", invalid="ignore"):
        for other, vals in (("whole", whole), ("random", rand), ("near", near),
                            ("whole/Mm", whole_m)):
            ratio = best / vals
            wins = int(np.sum(best > vals))
            lines.append(f"  best / {other}: median ratio {np.nanmedian(ratio):.2f} "
                         f"(range {np.nanmin(ratio):.2f}-{np.nanmax(ratio):.2f}); best higher "
                         f"for {wins} of {n} companions")
    return "\n".join(lines)


def _wfe_range(ap, text):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        ap.error(f"--other-wfe: two numbers LO,HI, got {text!r}")
    if not 0.0 < lo <= hi:
        ap.error(f"--other-wfe: need 0 < LO <= HI, got {text!r}")
    return (lo, hi)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="64 px, seed 0, a smaller library, two random draws (under a minute)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds [0,1,2,3,4; quick: 0]")
    ap.add_argument("--size", default=None, choices=("small", "medium", "large"),
                    help="simulation size [medium; quick: small]")
    ap.add_argument("--top", type=int, default=None, help="N of coron-select --top [10; quick: 6]")
    ap.add_argument("--random", type=int, default=None, help="random draws [5; quick: 2]")
    ap.add_argument("--workdir", default=None, help="folder for the data and products "
                                                   "[a temporary folder, removed]")
    ap.add_argument("--keep", action="store_true", help="keep each seed's files")
    ap.add_argument("--drift", default="low-order", choices=("low-order", "segments"),
                    help="how the other epochs' wavefront differs from the science's: the "
                         "simulator's low-order power law, or half of it in segment pistons "
                         "(JWST's segments drift between wavefront controls; their speckles "
                         "fall at a few lambda/D)")
    ap.add_argument("--other-wfe", default="5,20", metavar="LO,HI",
                    help="the other epochs' drift from the science's wavefront, nm RMS, "
                         "uniform between LO and HI [5,20] (the near-time references' is "
                         "the simulator's, 2-6)")
    ap.add_argument("--star-peak", type=float, default=None, metavar="COUNTS",
                    help="the star's unocculted peak per integration [drawn, 2e6-6e6]; "
                         "brighter makes the residual speckles stand further above the "
                         "photon and read noise (the regime where the choice of references "
                         "matters)")
    ap.add_argument("--science-epoch", type=float, default=0.0, metavar="NM",
                    help="the wavefront the other epochs scatter about, NM RMS from the "
                         "science's [0: the science's own, so that together they model "
                         "it]; JWST's epochs each sit off the long-term mean, the science's "
                         "too, and only its near-time references share its offset")
    ap.add_argument("--select-option", action="append", default=[], metavar="ARG",
                    help="an argument passed on to coron-select (repeat for several, e.g. "
                         "--select-option=--inner --select-option=16)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results")
    args = ap.parse_args(argv)
    if not args.science_epoch >= 0:
        ap.error("--science-epoch must be 0 or more")
    if args.star_peak is not None and not args.star_peak > 0:
        ap.error("--star-peak must be positive")
    args.other_wfe = _wfe_range(ap, args.other_wfe)
    args.size = args.size or ("small" if args.quick else "medium")
    args.top = args.top or (6 if args.quick else 10)
    args.random = args.random or (2 if args.quick else 5)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2,3,4")).split(",")]
    t0 = time.perf_counter()
    workroot = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="select_science_"))
    os.makedirs(workroot, exist_ok=True)
    try:
        results = [one_seed(seed, args, workroot) for seed in seeds]
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    print(format_table(results, args))
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
