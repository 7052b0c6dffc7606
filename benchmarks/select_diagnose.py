"""Why does (or doesn't) coron-select's ranking raise the companions' SNR? (issue 16)

A diagnosis of ``benchmarks/select_science.py`` on one or a few seeds: the same data
(:func:`select_science.make_data`), made again in this process with the simulator's
noiseless images, wavefronts, star positions and colours recorded (its private
``_images`` wrapped for the duration, nothing else changed), then

1. per library frame: its wavefront's RMS distance from the science's (roll 1, nm), its
   star's colour mismatch and flux ratio, its star's offset from the science star (px),
   its coron-select score and rank against the science's roll 1, and the residual
   (counts, RMS over the scored region) of the noiseless science minus the noiseless
   frame, registered on the science star (Fourier shift by the true offset) and scaled
   by a least-squares fit (plus a constant); then the same residual if the frame had the
   science's wavefront, the science's position, the science's colour: what each
   difference costs;
2. Spearman correlations of the score with those;
3. set fits, noiseless: the science fitted by N frames at once (least squares, as KLIP's
   projection on N modes does, in the region and in three annuli of 2 lambda/D), N
   near-time frames against N random ones and the whole library; then again with every
   frame at the science's position, and with every frame given the science's wavefront;
   with the one-integration photon and read noise of the science in the same annuli;
4. with ``--snr``: ``coron3 run`` on the best N frames by the coron-select score, by the
   noiseless residual of (1) (a perfect single-frame similarity, which no score computed
   from noisy frames can beat), by wavefront distance (the near-time frames first), and on
   N random frames (``--random`` draws): each companion's SNR as in select_science.py.

    .venv/bin/python benchmarks/select_diagnose.py [--seeds 0,1] [--snr] [--drift segments]
        [--other-wfe 20,60]

Plain text on stdout. One medium seed takes about half a minute, a minute with --snr.
"""

import argparse
import contextlib
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import select_science as B  # noqa: E402


@contextlib.contextmanager
def recording():
    """The simulator's images, recorded: a list of dicts (opd, off, weights, img) for
    every coronagraphic call, in order; the data set and the other epochs' exposures."""
    from coron_cli import simulate as S

    calls, cap = [], {}
    images, simulate, epochs = S._images, S.simulate_dataset, B.other_epochs

    def rec_images(opt, opd, offsets, coron, chunk=16, weights=None):
        out = images(opt, opd, offsets, coron, chunk=chunk, weights=weights)
        if coron:
            calls.append({"opd": np.array(opd), "off": np.array(offsets).reshape(-1, 2),
                          "weights": weights, "img": out})
        return out

    def rec_simulate(*a, **k):
        ds = simulate(*a, **k)
        cap["ds"], cap["n_sim"] = ds, len(calls)
        return ds

    def rec_epochs(*a, **k):
        out = epochs(*a, **k)
        cap["epochs"] = out
        return out

    S._images, S.simulate_dataset, B.other_epochs = rec_images, rec_simulate, rec_epochs
    try:
        yield calls, cap, images
    finally:
        S._images, S.simulate_dataset, B.other_epochs = images, simulate, epochs


def library_frames(data, calls, cap):
    """Per library frame: file, integration, near, star, colour, flux, opd, off, weights,
    noiseless image (unit-amplitude star). The science's roll 1: opd, off, image."""
    ds, comp = cap["ds"], data["composition"]
    nint = comp["nint"]
    sim, oth = calls[:cap["n_sim"]], calls[cap["n_sim"]:]
    nvis = len(comp["near_dithers"])
    sci = sim[0]
    science = {"opd": sci["opd"][:nint].mean(0), "off": sci["off"][:nint].mean(0),
               "img": sci["img"][:nint].mean(0)}
    frames = []
    psf = [e for e in ds.exposures if e.exptype == "psf"]
    truth = {t["name"]: t for t in ds.truth["exposures"]}
    pos = 0
    for r in sim[1:1 + nvis]:
        for k in range(len(r["opd"]) // nint):
            e = psf[pos]
            pos += 1
            st = ds.truth["refs"][truth[e.name]["ref_star"] - 1]
            for i in range(nint):
                frames.append({"file": e.name.replace("demo_", "near_"), "int": i, "near": True,
                               "star": f"near{truth[e.name]['ref_star']}",
                               "colour": st["colour"], "flux": st["flux_ratio"],
                               "opd": r["opd"][k * nint + i], "off": r["off"][k * nint + i],
                               "weights": r["weights"], "img": r["img"][k * nint + i]})
    if pos != len(psf):
        raise RuntimeError("the near-time exposures do not match the simulator's calls")
    pos = 0
    for e_i, (ep, r) in enumerate(zip(comp["epochs"], oth)):
        for k in range(len(r["opd"]) // nint):
            e = cap["epochs"][pos]
            pos += 1
            for i in range(nint):
                frames.append({"file": e.name, "int": i, "near": False,
                               "star": f"ep{e_i + 1:02d}", "colour": ep["colour"],
                               "flux": ep["flux_ratio"], "opd": r["opd"][k * nint + i],
                               "off": r["off"][k * nint + i], "weights": r["weights"],
                               "img": r["img"][k * nint + i]})
    if pos != len(cap["epochs"]):
        raise RuntimeError("the other epochs' exposures do not match the simulator's calls")
    return frames, science


def fshift(img, dx, dy):
    from coron_cli.core.registration import shift_images

    return shift_images(np.asarray(img, np.float64)[None], np.array([dx]), np.array([dy]))[0]


def fit_rms(target, refs, mask):
    """RMS over `mask` of target minus its least-squares fit by refs (k, ny, nx) and a
    constant."""
    a = np.vstack([np.asarray(refs)[:, mask], np.ones((1, int(mask.sum())))]).T
    c, *_ = np.linalg.lstsq(a, target[mask], rcond=None)
    return float(np.sqrt(np.mean((target[mask] - a @ c) ** 2)))


def diagnose(seed, args, workroot):
    from astropy.table import Table
    from scipy.stats import spearmanr

    from coron_cli import simulate as S

    folder = os.path.join(workroot, f"seed{seed}")
    os.makedirs(folder)
    with recording() as (calls, cap, images):
        data = B.make_data(seed, "medium", False, folder, args.drift, args.other_wfe)
    frames, sci = library_frames(data, calls, cap)
    truth = data["truth"]
    npix = truth["npix"]
    opt = S._get_optics(npix, "nircam-round", 0)
    norm = truth["star_peak"] / images(opt, B._static_opd(S, opt, seed)[None],
                                       np.zeros((1, 2)), coron=False)[0].max()
    # coron-select, as select_science runs it
    asn = os.path.join(folder, "best_asn.json")
    B._run([B._tool("coron-select"), *data["science"], "-L", os.path.join(folder, "library"),
            "--top", 10, "-o", asn, "-q"])
    t = Table.read(os.path.join(folder, "best_refscores.ecsv"))
    roll1 = data["science"][0]
    score = {(os.path.basename(str(r["file"])), int(r["integration"])):
             (float(r["score"]), int(r["rank"])) for r in t
             if os.path.basename(str(r["science"])) == os.path.basename(roll1)}
    mc = np.array(opt.center)
    sx, sy = mc + sci["off"]
    yy, xx = np.mgrid[:npix, :npix].astype(np.float64)
    rr = np.hypot(xx - sx, yy - sy)
    lod = truth["lambda_over_d_pix"]
    tmap = S._transmission_map(opt, False)
    region = (rr >= 8.0) & (rr <= npix / 2 - 1) & (tmap > 0.2)
    target = norm * sci["img"]
    noise = np.sqrt(target + truth["background"] + S._READ_NOISE ** 2)
    annuli = [(a, (rr >= a) & (rr < a + 2 * lod) & region) for a in (10.0, 16.0, 22.0)]

    out = [f"seed {seed}: {len(frames)} library frames ({sum(f['near'] for f in frames)} "
           f"near-time); science star in the region: RMS {np.std(target[region]):.1f} counts, "
           f"one integration's noise RMS {np.sqrt(np.mean(noise[region] ** 2)):.1f}; "
           f"lambda/D {lod:.2f} px"]
    rows = []
    for f in frames:
        d = sci["off"] - f["off"]
        cases = {
            "actual": fshift(f["img"], *d),
            "sci_wfe": fshift(images(opt, sci["opd"][None], f["off"][None], True,
                                     weights=f["weights"])[0], *d),
            "sci_pos": images(opt, f["opd"][None], sci["off"][None], True,
                              weights=f["weights"])[0],
            "sci_col": fshift(images(opt, f["opd"][None], f["off"][None], True)[0], *d),
        }
        f.update({k: norm * v for k, v in cases.items()})
        s, rank = score.get((f["file"], f["int"]), (np.nan, -1))
        rows.append({"file": f["file"], "int": f["int"], "near": f["near"], "star": f["star"],
                     "colour": f["colour"], "flux": f["flux"],
                     "wfe": float(S._rms(opt, f["opd"] - sci["opd"])),
                     "offset": float(np.hypot(*d)), "score": s, "rank": rank,
                     **{k: fit_rms(target, f[k][None], region) for k in cases}})
    rows.sort(key=lambda r: (r["rank"], r["file"], r["int"]))
    out.append(f"{'file':30s} {'i':>1} {'near':>4} {'star':>6} {'colour':>6} {'flux':>5} "
               f"{'wfe_nm':>6} {'off_px':>6} {'resid':>6} {'|wfe':>6} {'|pos':>6} "
               f"{'|col':>6} {'score':>6} {'rank':>4}")
    for r in rows:
        out.append(f"{r['file']:30s} {r['int']:1d} {'yes' if r['near'] else '':>4} "
                   f"{r['star']:>6} {r['colour']:+6.2f} {r['flux']:5.2f} {r['wfe']:6.1f} "
                   f"{r['offset']:6.2f} {r['actual']:6.1f} {r['sci_wfe']:6.1f} "
                   f"{r['sci_pos']:6.1f} {r['sci_col']:6.1f} {r['score']:6.3f} {r['rank']:4d}")
    col = {k: np.array([r[k] for r in rows], np.float64)
           for k in ("score", "wfe", "offset", "actual", "flux", "colour")}
    near = np.array([r["near"] for r in rows])

    def rho(a, b):
        return spearmanr(a, b)[0]

    out.append("(resid: noiseless science minus the frame, registered and scaled, RMS "
               "counts in the region; |wfe, |pos, |col: the same with the science's "
               "wavefront, position, colour)")
    out.append(f"Spearman of the score with: wavefront distance {rho(col['score'], col['wfe']):+.2f}"
               f", offset {rho(col['score'], col['offset']):+.2f}, noiseless residual "
               f"{rho(col['score'], col['actual']):+.2f}, |colour| "
               f"{rho(col['score'], np.abs(col['colour'])):+.2f}, flux ratio "
               f"{rho(col['score'], col['flux']):+.2f}")
    out.append(f"Spearman of the noiseless residual with: wavefront distance "
               f"{rho(col['actual'], col['wfe']):+.2f}, offset "
               f"{rho(col['actual'], col['offset']):+.2f}, |colour| "
               f"{rho(col['actual'], np.abs(col['colour'])):+.2f}")
    ranks = sorted(int(r["rank"]) for r in rows if r["near"])
    out.append(f"near-time frames: wavefront distance median {np.median(col['wfe'][near]):.1f} "
               f"nm (others {np.median(col['wfe'][~near]):.1f}); noiseless residual median "
               f"{np.median(col['actual'][near]):.1f} (others "
               f"{np.median(col['actual'][~near]):.1f}); ranks {ranks}")

    n = args.top or int(near.sum())
    rng = np.random.default_rng([seed, B._TAG, 77])
    near_f = np.array([f["near"] for f in frames])      # in the order of `frames`
    sets = [("near", np.flatnonzero(near_f)[:n])]
    sets += [(f"random{k}", rng.choice(len(frames), n, replace=False))
             for k in range(args.random)]
    sets += [("whole", np.arange(len(frames)))]
    head = "  ".join(f"{int(a)}-{int(a + 2 * lod)}px" for a, _ in annuli)
    out.append(f"set fits, noiseless (N = {n}; the whole library {len(frames)}): RMS counts "
               f"in the region, then {head}")
    for key, label in (("actual", "as observed"), ("sci_pos", "every frame at the science's "
                                                             "position"),
                       ("sci_wfe", "every frame with the science's wavefront")):
        out.append(f"  {label}:")
        for name, sel in sets:
            stack = np.array([frames[k][key] for k in sel])
            out.append(f"    {name:8s} {fit_rms(target, stack, region):6.2f}  "
                       + "  ".join(f"{fit_rms(target, stack, m):6.2f}" for _, m in annuli)
                       + f"   ({int(near_f[sel].sum())} near-time)")
    out.append("  one integration's noise:  "
               + "  ".join(f"{np.sqrt(np.mean(noise[m] ** 2)):6.2f}" for _, m in annuli))

    if args.snr:
        keys = [(r["file"], r["int"]) for r in rows]
        order = {"score": np.argsort(-col["score"], kind="stable"),
                 "noiseless residual": np.argsort(col["actual"], kind="stable"),
                 "wavefront distance": np.argsort(col["wfe"], kind="stable")}
        rng = np.random.default_rng([seed, B._TAG, 78])
        for k in range(args.random):
            order[f"random{k}"] = rng.permutation(len(rows))
        out.append(f"coron3 run on the best {n} frames by ... (median companion SNR; each "
                   f"companion's SNR):")
        for name, idx in order.items():
            sel = {}
            for k in idx[:n]:
                sel.setdefault(os.path.join(folder, "library", keys[k][0]), []).append(keys[k][1])
            tag = name.replace(" ", "_")
            a = B.write_asn(os.path.join(folder, f"{tag}_asn.json"), data["science"], sel, tag)
            snr = B.run_and_measure(a, os.path.join(folder, f"out_{tag}"), truth)
            out.append(f"  {name:20s} {np.nanmedian(snr):5.2f}   "
                       + " ".join(f"{v:5.1f}" for v in snr)
                       + f"   ({int(near[idx[:n]].sum())} near-time)")
    shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0", help="comma-separated seeds [0]")
    ap.add_argument("--top", type=int, default=None,
                    help="N of the set fits and --snr [the number of near-time frames]")
    ap.add_argument("--random", type=int, default=3, help="random sets [3]")
    ap.add_argument("--snr", action="store_true", help="also run coron3 on the best N by "
                                                      "score, by truth, and random")
    ap.add_argument("--drift", default="low-order", choices=("low-order", "segments"))
    ap.add_argument("--other-wfe", default="5,20", metavar="LO,HI",
                    help="the other epochs' drift, nm RMS (select_science.py's option) [5,20]")
    args = ap.parse_args(argv)
    args.other_wfe = B._wfe_range(ap, args.other_wfe)
    workroot = tempfile.mkdtemp(prefix="select_diagnose_")
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            print(diagnose(seed, args, workroot), flush=True)
            print()
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
