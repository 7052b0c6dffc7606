#!/usr/bin/env python
"""coron benchmark: seconds and peak memory of every step and of a whole run.

Run as ``python benchmarks/bench.py [--quick] [--repeat N] [--sizes 160,320]
[--nrefs 50,200]``; see benchmarks/README.md. This is not a test: it prints
figures (plain text tables on stdout, progress on stderr) and a PASS/FAIL
summary against the performance targets, and always exits 0 unless it
crashes.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

READ_NOISE = 12.0
TRUNCS = (5, 10, 20, 50, 100, 200)
SIM_SIZES = {64: "small", 160: "medium", 320: "large"}
MB = 2.0 ** 20
_T_START = time.perf_counter()


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def progress(msg):
    print(f"[bench {time.perf_counter() - _T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_list(text):
    return [int(v) for v in str(text).replace(" ", "").split(",") if v]


def truncs_for(nref):
    """The truncation list used everywhere, clamped to the number of references."""
    out = sorted({min(k, nref) for k in TRUNCS})
    return out


def proc_status():
    """VmRSS and VmHWM of this process in bytes (0 if /proc is unavailable)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in out:
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class LoadMeter:
    """CPUs kept busy by other processes (not this benchmark or its children)
    between start() and stop(), from /proc/stat and getrusage."""

    def __init__(self):
        self.start()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as fh:
                f = [int(v) for v in fh.readline().split()[1:]]
            # user nice system idle iowait irq softirq steal
            return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK"), \
                f[7] / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None, None

    @staticmethod
    def _own():
        import resource

        a = resource.getrusage(resource.RUSAGE_SELF)
        b = resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def start(self):
        self.t0 = time.perf_counter()
        self.busy0, self.steal0 = self._busy()
        self.own0 = self._own()
        return self

    def stop(self):
        """(other CPUs busy on average, own CPUs on average, steal) over the interval."""
        dt = time.perf_counter() - self.t0
        busy, steal = self._busy()
        own = self._own() - self.own0
        if busy is None or dt <= 0:
            return None, own / max(dt, 1e-9), None
        other = max(0.0, (busy - self.busy0) - own) / dt
        return other, own / dt, (steal - self.steal0) / dt


CLEAN_LOAD = 0.3  # CPUs of other load above which a sample counts as disturbed


class Samples:
    """Wall times of one measurement, each with the CPU load of other processes
    while it ran. Statistics use the undisturbed samples when there are any."""

    def __init__(self):
        self.times, self.loads = [], []

    def add(self, seconds, load):
        self.times.append(seconds)
        self.loads.append(load)

    def clean(self):
        return [t for t, ld in zip(self.times, self.loads) if ld is None or ld < CLEAN_LOAD]

    def use(self):
        return self.clean() or self.times

    @property
    def median(self):
        return statistics.median(self.use())

    @property
    def best(self):
        return min(self.use())

    @property
    def disturbed(self):
        """True when every sample ran while other processes were busy."""
        return not self.clean()

    def count(self):
        return f"{len(self.clean())}/{len(self.times)}"

    def as_dict(self):
        return {"times": self.times, "loads": self.loads}

    @classmethod
    def from_dict(cls, d):
        s = cls()
        s.times, s.loads = list(d["times"]), list(d["loads"])
        return s


def timed(func, samples):
    """Call func(), add its wall time and the other processes' load to samples."""
    gc.collect()
    meter = LoadMeter()
    t0 = time.perf_counter()
    result = func()
    dt = time.perf_counter() - t0
    # /proc/stat counts in 10 ms ticks: too coarse to judge runs shorter than 0.5 s
    samples.add(dt, meter.stop()[0] if dt >= 0.5 else None)
    return result


def more_rounds(sample_sets, repeat, t_start, budget):
    """Go on until every measurement has `repeat` undisturbed samples, for at
    most `budget` seconds (at least one round) and repeat + 3 rounds."""
    nclean = min(len(s.clean()) for s in sample_sets)
    rounds = max(len(s.times) for s in sample_sets)
    if nclean >= repeat or rounds >= repeat + 3:
        return False
    return time.perf_counter() - t_start < budget


def timeit(func, repeat, *, budget):
    """Samples of func() (see more_rounds); returns (Samples, last result)."""
    samples, result = Samples(), None
    t_start = time.perf_counter()
    while True:
        result = None
        result = timed(func, samples)
        if not more_rounds([samples], repeat, t_start, budget):
            break
    return samples, result


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if isinstance(x, str):
        return x
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    return f"{x:.{digits}f}" if abs(x) >= 0.001 or x == 0 else f"{x:.2e}"


def table(title, header, rows, note=None):
    """Print a plain aligned text table."""
    cells = [[str(h) for h in header]] + [[c if isinstance(c, str) else fmt(c) for c in r]
                                          for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print()
    print(title)
    print("-" * len(title))
    for k, r in enumerate(cells):
        line = "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                         enumerate(zip(r, widths)))
        print(line.rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    if note:
        for line in note.strip().splitlines():
            print(f"  {line}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# simulated inputs
# ---------------------------------------------------------------------------
def fourier_shift(img, dx, dy):
    """float64 periodic Fourier shift: out(x, y) = img(x - dx, y - dy) (numpy.fft)."""
    img = np.asarray(img, dtype=np.float64)
    ny, nx = img.shape[-2:]
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    ramp = np.exp(-2j * np.pi * (kx * dx + ky * dy))
    return np.fft.irfft2(np.fft.rfft2(img) * ramp, s=(ny, nx))


def speckle_frames(npix, count, seed, *, drift=0.04):
    """Speckle-like coronagraphic frames from random phase screens.

    A circular pupil of radius npix/4 (2 pixels per lambda/D) carries a
    static power-law phase screen (PSD ~ f^-2.5, 0.3 rad RMS) plus a small
    independent screen per frame (`drift` rad RMS); an ideal coronagraph
    removes the coherent part of the pupil field and the detector sees
    |FFT|^2, scaled to a peak of ~1e5 counts on a background of 10.
    """
    rng = np.random.default_rng([seed, 99])
    y, x = np.indices((npix, npix)) - npix / 2.0
    pupil = (np.hypot(x, y) < npix / 4.0).astype(np.float64)
    f = np.hypot(np.fft.fftfreq(npix)[:, None], np.fft.fftfreq(npix)[None, :])
    f[0, 0] = np.inf
    amp = f ** (-1.25)

    def screen(rms):
        s = np.fft.ifft2(np.fft.fft2(rng.standard_normal((npix, npix))) * amp).real
        s -= s[pupil > 0].mean()
        return s * rms / s[pupil > 0].std()

    static = screen(0.3)
    out = np.empty((count, npix, npix))
    for k in range(count):
        field = pupil * np.exp(1j * (static + screen(drift)))
        field -= pupil * (field.sum() / pupil.sum())
        out[k] = np.abs(np.fft.fftshift(np.fft.fft2(field))) ** 2
    return out / out.max() * 1e5 + 10.0


_BASE_CACHE = {}


def base_frames(npix, seed, source="sim"):
    """Clean (bad pixels repaired) PSF frames to build the benchmark inputs from.

    source 'sim': coron's own simulation (``simulate_dataset``: small = 64 px,
    medium = 160 px, large = 320 px); other sizes below 320 are centre crops
    of the next larger simulation. source 'speckle' (or sizes above 320):
    :func:`speckle_frames`.

    Returns
    -------
    dict with 'ref' (nb, n, n) and 'sci' (2, ns, n, n) float64 frames, and
    'bad' (n, n) the fixed bad-pixel map of the detector.
    """
    key = (npix, seed, source)
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    if source == "sim" and npix <= 320:
        from coron_cli.core import bad_pixel_mask, repair_bad_pixels
        from coron_cli.simulate import simulate_dataset

        big = min(s for s in SIM_SIZES if s >= npix)
        if ("ds", big, seed) not in _BASE_CACHE:
            progress(f"simulating a {SIM_SIZES[big]} ({big} px) data set with simulate_dataset")
            _BASE_CACHE[("ds", big, seed)] = simulate_dataset(SIM_SIZES[big], seed=seed)
        ds = _BASE_CACHE[("ds", big, seed)]
        lo = big // 2 - npix // 2
        cut = (Ellipsis, slice(lo, lo + npix), slice(lo, lo + npix))

        def clean(e):
            return np.asarray(repair_bad_pixels(e.sci, bad_pixel_mask(e.sci, e.dq)),
                              dtype=np.float64)[cut]

        sci = np.stack([clean(e) for e in ds.exposures if e.exptype == "science"])
        ref = np.concatenate([clean(e) for e in ds.exposures if e.exptype == "psf"])
        bad = (ds.exposures[0].dq[0] & 1 & (ds.exposures[0].dq[-1] & 1)).astype(bool)[cut[1:]]
        base = {"ref": ref, "sci": sci, "bad": bad}
    else:
        progress(f"synthesising {npix} px speckle frames from phase screens")
        frames = speckle_frames(npix, 60, seed)
        rng = np.random.default_rng([seed, 98])
        base = {"ref": frames[:40] * 2.0, "sci": frames[40:].reshape(2, 10, npix, npix),
                "bad": rng.random((npix, npix)) < 0.003}
    _BASE_CACHE[key] = base
    return base


def noisy(model, rng, *, extra=1.0):
    """Model plus Gaussian photon + read noise (scaled by `extra`), and its ERR."""
    err = np.sqrt(np.maximum(model, 0.0) + READ_NOISE ** 2)
    return model + extra * err * rng.standard_normal(model.shape), err


def make_frames(npix, nint, nref, seed, source="sim"):
    """Science integrations and references with real structure.

    Science integration i of roll r: simulated science frame (i mod ns) of
    that roll, Fourier-shifted by a pointing jitter (0.01 px RMS) plus fresh
    noise at half the simulated photon + read level. Reference j: simulated
    reference frame b = j mod nb, mixed with a weight w in [0, 0.2] with
    another one (a different wavefront: speckle diversity), Fourier-shifted
    by a dither in [-0.3, 0.3] px, scaled by [0.8, 1.25], plus noise.

    Returns
    -------
    sci : (2, nint, n, n) float64, sci_err : same, ref : (nref, n, n) float64,
    ref_err : same, bad : (n, n) bool
    """
    base = base_frames(npix, seed, source)
    rng = np.random.default_rng([seed, npix, nint, nref])
    bsci, bref = base["sci"], base["ref"]
    ns, nb = bsci.shape[1], bref.shape[0]
    sci = np.empty((2, nint, npix, npix))
    sci_err = np.empty_like(sci)
    for r in range(2):
        for i in range(nint):
            jx, jy = rng.normal(0.0, 0.01, 2)
            sci[r, i], sci_err[r, i] = noisy(fourier_shift(bsci[r, i % ns], jx, jy), rng,
                                             extra=0.5)
    ref = np.empty((nref, npix, npix))
    ref_err = np.empty_like(ref)
    for j in range(nref):
        w = rng.uniform(0.0, 0.2)
        mix = (1 - w) * bref[j % nb] + w * bref[(7 * j + 3) % nb]
        dx, dy = rng.uniform(-0.3, 0.3, 2)
        ref[j], ref_err[j] = noisy(rng.uniform(0.8, 1.25) * fourier_shift(mix, dx, dy), rng,
                                   extra=0.5)
    return sci, sci_err, ref, ref_err, base["bad"]


def make_align_set(npix, nint, nref, seed, source="sim"):
    """Inputs with known shifts: every frame is one PSF B, Fourier-shifted.

    Science i = shift(B, sx_i, sy_i) + noise, sx, sy ~ N(0, 0.05) px;
    reference j = a_j shift(B, rx_j, ry_j) + noise, rx, ry ~ U(-0.5, 0.5) px,
    a_j ~ U(1.3, 3); noise = photon + read noise of the frame. The shift that
    puts reference j on science i is (sx_i - rx_j, sy_i - ry_j), scale 1/a_j.

    Returns
    -------
    sci (nint, n, n) float32, ref (nref, n, n) float32, tdx, tdy (nint, nref)
    """
    base = base_frames(npix, seed, source)
    B = base["ref"][0]
    rng = np.random.default_rng([seed, npix, nint, nref, 7])
    sx, sy = rng.normal(0.0, 0.05, (2, nint))
    rx, ry = rng.uniform(-0.5, 0.5, (2, nref))
    a = rng.uniform(1.3, 3.0, nref)
    sci = np.stack([noisy(fourier_shift(B, sx[i], sy[i]), rng)[0] for i in range(nint)])
    ref = np.stack([noisy(a[j] * fourier_shift(B, rx[j], ry[j]), rng)[0] for j in range(nref)])
    return (sci.astype(np.float32), ref.astype(np.float32),
            sx[:, None] - rx[None, :], sy[:, None] - ry[None, :])


def _headers(npix, *, roll, is_psf, nint, name):
    from astropy.io import fits

    pri = fits.Header()
    pri["TELESCOP"] = "JWST"
    pri["INSTRUME"] = "NIRCAM"
    pri["FILTER"] = "F444W"
    pri["EXP_TYPE"] = "NRC_CORON"
    pri["TARGNAME"] = "BENCH-REF" if is_psf else "BENCH-STAR"
    pri["IS_PSF"] = bool(is_psf)
    pri["ROLL_REF"] = float(roll)
    pri["NINTS"] = int(nint)
    pri["BUNIT"] = "DN"
    pri["PIXSCALE"] = 0.063
    pri["ORIGIN"] = "coron benchmarks/bench.py"
    pri["FILENAME"] = name
    sh = fits.Header()
    s = 0.063 / 3600.0
    phi = np.deg2rad(roll)
    sh["CTYPE1"], sh["CTYPE2"] = "RA---TAN", "DEC--TAN"
    sh["CUNIT1"], sh["CUNIT2"] = "deg", "deg"
    sh["CRPIX1"], sh["CRPIX2"] = npix / 2 + 1.0, npix / 2 + 1.0
    sh["CRVAL1"], sh["CRVAL2"] = (151.2, -29.4) if is_psf else (150.0, -30.0)
    sh["CD1_1"], sh["CD1_2"] = -s * np.cos(phi), s * np.sin(phi)
    sh["CD2_1"], sh["CD2_2"] = s * np.sin(phi), s * np.cos(phi)
    sh["BUNIT"] = "DN"
    return pri, sh


def _exposure(sci, err, bad, rng, *, roll, is_psf, name):
    """A calints Product: DQ from the fixed bad-pixel map plus 3e-4 random
    flags per integration, garbage (NaN / 1e5) in the flagged SCI pixels."""
    from coron_cli.products import Product

    nint, nx = sci.shape[0], sci.shape[-1]
    sci = sci.astype(np.float32)
    err = err.astype(np.float32)
    dq = np.zeros(sci.shape, np.uint32)
    dq[:, bad] = 1 | 1024
    extra = rng.random(sci.shape) < 3e-4
    dq[extra] |= 1 | 4
    sci[:, bad] = np.nan
    err[:, bad] = np.nan
    sci[extra] = 1e5
    pri, sh = _headers(nx, roll=roll, is_psf=is_psf, nint=nint, name=name)
    return Product(sci=sci, err=err, dq=dq, primary=pri, sci_header=sh, path=name)


def write_dataset(folder, npix, nint, nref, seed, source="sim"):
    """Write two science exposures of `nint` integrations and `nref` references
    split into exposures of 10 integrations, plus the association.

    Returns the association path and the in-memory arrays (for the yardsticks).
    """
    from coron_cli.products import write_product

    sci, sci_err, ref, ref_err, bad = make_frames(npix, nint, nref, seed, source)
    rng = np.random.default_rng([seed, 5])
    members = []
    for r, roll in enumerate((40.0, 50.0)):
        name = f"bench_sci_roll{r + 1}_calints.fits"
        write_product(_exposure(sci[r], sci_err[r], bad, rng, roll=roll, is_psf=False,
                                name=name), os.path.join(folder, name))
        members.append({"exptype": "science", "expname": name})
    for k, j0 in enumerate(range(0, nref, 10)):
        name = f"bench_ref_exp{k + 1:02d}_calints.fits"
        sl = slice(j0, min(nref, j0 + 10))
        write_product(_exposure(ref[sl], ref_err[sl], bad, rng, roll=300.0, is_psf=True,
                                name=name), os.path.join(folder, name))
        members.append({"exptype": "psf", "expname": name})
    asn = {"asn_rule": "CORON", "asn_type": "coron", "asn_id": "c1001",
           "asn_pool": "bench_pool",                # the JWST pipeline's loader wants one
           "products": [{"prodtype": "coroncmb", "name": "bench_nircam_f444w",
                         "members": members}]}
    asn_path = os.path.join(folder, "bench_asn.json")
    with open(asn_path, "w") as fh:
        json.dump(asn, fh, indent=1)
    return asn_path, {"sci": sci, "ref": ref}


# ---------------------------------------------------------------------------
# yardsticks written plainly here
# ---------------------------------------------------------------------------
# classic KLIP, the float64 reference, is coron_cli._harness.classic_klip (the tests of
# coron_cli.core.klip_subtract use the same one)

def blas_bound(science, references, ntrunc, seed=0):
    """Seconds spent in the matrix products KLIP cannot avoid, float64:
    C = R R^T (numpy uses syrk), R t, and the (ntrunc x nref) @ (nref x npix)
    model product, for every integration. Conversions are not timed."""
    nint, nref = references.shape[:2]
    B = np.random.default_rng(seed).standard_normal((ntrunc, nref))
    total = 0.0
    for i in range(nint):
        R = np.ascontiguousarray(references[i].reshape(nref, -1), dtype=np.float64)
        t = science[i].reshape(-1).astype(np.float64)
        t0 = time.perf_counter()
        C = R @ R.T
        a = R @ t
        M = B @ R
        total += time.perf_counter() - t0
        del C, a, M, R
    return total


def classic_align_pair(reference, target):
    """scipy.optimize.leastsq fit of (dx, dy, scale), start (0, 0, 1), whose
    model is scale * float64 Fourier shift of the reference (rfft2 once per
    pair, then phase ramp + irfft2 at every evaluation)."""
    from scipy.optimize import leastsq

    ref = np.asarray(reference, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    ny, nx = ref.shape
    R = np.fft.rfft2(ref)
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]

    def resid(p):
        model = p[2] * np.fft.irfft2(R * np.exp(-2j * np.pi * (kx * p[0] + ky * p[1])),
                                     s=(ny, nx))
        return (tgt - model).ravel()

    p, _ = leastsq(resid, [0.0, 0.0, 1.0])
    return p


# ---------------------------------------------------------------------------
# core measurements at one (size, nref) point
# ---------------------------------------------------------------------------
_POINTS = {}


def core_point(n, nref, args):
    """coron KLIP vs classic vs BLAS bound, KLIP accuracy, coron align vs
    classic align (speed and accuracy), at n x n pixels and nref references."""
    key = (n, nref)
    if key in _POINTS:
        return _POINTS[key]
    from coron_cli._harness import classic_klip
    from coron_cli.core import align_references, klip_subtract

    nint = args.nint
    truncs = truncs_for(nref)
    point_meter = LoadMeter()
    progress(f"core point {n}x{n}, {nref} refs, {nint} integrations: building inputs")
    sci_all, _, ref, ref_err, _ = make_frames(n, nint, nref, args.seed, args.source)
    sci = sci_all[0].astype(np.float32)
    rng = np.random.default_rng([args.seed, n, nref, 3])
    # aligned-reference layers, one per integration, distinct by fresh noise
    refs4 = np.empty((nint, nref, n, n), np.float32)
    half_err = (0.5 * ref_err).astype(np.float32)
    for i in range(nint):
        refs4[i] = ref + half_err * rng.standard_normal(ref.shape, dtype=np.float32)
    del sci_all, ref, ref_err, half_err
    res = {"n": n, "nref": nref, "nint": nint, "truncs": truncs}

    # --- KLIP: coron, classic, BLAS bound, interleaved rounds
    sc, sk, sb = Samples(), Samples(), Samples()
    acc = None
    budget = args.budget * (2 if (n, nref) == (320, 200) else 1)
    t_start = time.perf_counter()
    r = 0
    while True:
        r += 1
        progress(f"  klip round {r}: coron")
        resid_c, _, _ = timed(lambda: klip_subtract(sci, refs4, truncations=truncs), sc)
        progress(f"  klip round {r}: classic")
        resid_k = timed(lambda: classic_klip(sci, refs4, truncs), sk)
        if acc is None:
            rc = resid_c.reshape(len(truncs), nint, -1).astype(np.float64)
            acc = [float(np.sqrt(np.mean((rc[k] - resid_k[k]) ** 2) /
                                 np.mean(resid_k[k] ** 2))) for k in range(len(truncs))]
            del rc
        del resid_c, resid_k
        progress(f"  klip round {r}: BLAS bound")
        gc.collect()
        meter = LoadMeter()
        t0 = time.perf_counter()
        tb = blas_bound(sci, refs4, len(truncs))
        sb.add(tb, meter.stop()[0] if time.perf_counter() - t0 >= 0.5 else None)
        if not more_rounds([sc, sk, sb], args.repeat, t_start, budget):
            break
    res.update(klip_coron=sc, klip_classic=sk, klip_blas=sb, klip_acc=acc)
    del refs4

    # --- align: coron vs classic on known shifts
    progress("  align inputs with known shifts")
    a_sci, a_ref, tdx, tdy = make_align_set(n, nint, nref, args.seed, args.source)
    npairs = nint * nref
    psub = min(args.classic_pairs, npairs)
    prng = np.random.default_rng([args.seed, 11])
    flat = np.sort(prng.choice(npairs, psub, replace=False))
    pairs = [(int(f // nref), int(f % nref)) for f in flat]
    sa, sca = Samples(), Samples()
    cdx = np.empty(psub)
    cdy = np.empty(psub)

    def classic_subset():
        for k, (i, j) in enumerate(pairs):
            cdx[k], cdy[k], _ = classic_align_pair(a_ref[j], a_sci[i])

    t_start = time.perf_counter()
    r = 0
    while True:
        r += 1
        progress(f"  align round {r}: coron")
        _aligned, dx, dy, _scale = timed(lambda: align_references(a_ref, a_sci), sa)
        del _aligned
        progress(f"  align round {r}: classic on {psub} pairs")
        timed(classic_subset, sca)
        if not more_rounds([sa, sca], args.repeat, t_start, budget):
            break
    ii = np.array([p[0] for p in pairs])
    jj = np.array([p[1] for p in pairs])

    def rms(ex, ey):
        return float(np.sqrt(np.mean(ex ** 2 + ey ** 2)))

    res.update(
        align_coron=sa, align_classic_sub=sca, align_pairs=psub, align_npairs=npairs,
        align_extrap=npairs / psub,
        align_rms_coron_all=rms(dx - tdx, dy - tdy),
        align_rms_coron_sub=rms(dx[ii, jj] - tdx[ii, jj], dy[ii, jj] - tdy[ii, jj]),
        align_rms_classic_sub=rms(cdx - tdx[ii, jj], cdy - tdy[ii, jj]),
        align_max_coron=float(np.max(np.hypot(dx - tdx, dy - tdy))),
    )
    res["other_load"], res["own_load"], res["steal"] = point_meter.stop()
    _POINTS[key] = res
    return res


# ---------------------------------------------------------------------------
# whole runs and single steps
# ---------------------------------------------------------------------------
STEPS = ("stack", "align", "klip", "combine", "hlsp")


def venv_tool(name):
    """Path of a console script next to this interpreter, else `python -m`."""
    exe = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(exe):
        return [exe]
    module = {"coron3": "coron3", "coron-klip": "klip", "coron-align": "align",
              "coron-stack": "stack", "coron-hlsp": "hlsp"}[name]
    return [sys.executable, "-m", f"coron_cli.cli.{module}"]


def run_measured(cmd, *, sample=False, env=None):
    """Run a command; return wall seconds, its own peak RSS (wait4 ru_maxrss),
    return code, stdout, stderr lines with arrival times, RSS samples."""
    import threading

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines, out = [], []

    def pump_err():
        for raw in p.stderr:
            lines.append((time.perf_counter() - t0, raw.decode(errors="replace").rstrip()))

    def pump_out():
        out.append(p.stdout.read())

    threads = [threading.Thread(target=pump_err, daemon=True),
               threading.Thread(target=pump_out, daemon=True)]
    for th in threads:
        th.start()
    samples = []
    peak = 0
    status = None
    ru = None
    while True:
        pid, st, r = os.wait4(p.pid, os.WNOHANG)
        if pid:
            status, ru = st, r
            break
        if sample:
            try:
                rss = hwm = 0
                with open(f"/proc/{p.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS"):
                            rss = int(line.split()[1]) * 1024
                        elif line.startswith("VmHWM"):
                            hwm = int(line.split()[1]) * 1024
                samples.append((time.perf_counter() - t0, rss))
                peak = max(peak, hwm)
            except OSError:
                pass
        time.sleep(0.02 if sample else 0.005)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for th in threads:
        th.join(timeout=5)
    # ru_maxrss of a child also counts the parent's memory at fork/exec time
    # (Linux records the pre-exec mm's high-water mark), so with a large
    # parent it overstates; VmHWM read from /proc/<pid>/status does not.
    return {"wall": wall, "ru_maxrss": ru.ru_maxrss * 1024, "hwm": peak, "rc": p.returncode,
            "stdout": b"".join(out).decode(errors="replace"), "stderr": lines,
            "samples": samples}


def import_baseline():
    """Peak RSS (VmHWM) of a bare interpreter that imports what a coron run imports."""
    code = ("import numpy, scipy.fft, scipy.ndimage, astropy.io.fits, astropy.table, "
            "astropy.wcs, coron_cli.cli.coron3, coron_cli.pipeline, coron_cli.steps\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    r = run_measured([sys.executable, "-c", code])
    try:
        return int(r["stdout"].split()[-1]) * 1024
    except (IndexError, ValueError):
        return 0


class IOTimer:
    """Times coron's own read_product/write_product calls inside run_association
    (wraps the names coron_cli.pipeline looked up; behaviour is unchanged)."""

    def __init__(self):
        import coron_cli.pipeline as pl

        self.pl = pl
        self.orig = (pl.read_product, pl.write_product)
        self.reset()

    def reset(self):
        self.read = 0.0
        self.write = {}

    def __enter__(self):
        read0, write0 = self.orig

        def read(*a, **k):
            t0 = time.perf_counter()
            try:
                return read0(*a, **k)
            finally:
                self.read += time.perf_counter() - t0

        def write(product, path):
            t0 = time.perf_counter()
            try:
                return write0(product, path)
            finally:
                self.write[path] = self.write.get(path, 0.0) + time.perf_counter() - t0

        self.pl.read_product, self.pl.write_product = read, write
        return self

    def __exit__(self, *exc):
        self.pl.read_product, self.pl.write_product = self.orig


def io_by_step(write_times):
    """Attribute write seconds to steps by product kind."""
    kinds = {"_psfstack": "stack", "_psfalign": "align", "_psfsub": "klip", "_i2d": "combine",
             "_snr": "hlsp", "_contrast": "hlsp"}
    out = dict.fromkeys(STEPS, 0.0)
    for path, sec in write_times.items():
        for suffix, step in kinds.items():
            if suffix in os.path.basename(path):
                out[step] += sec
    return out


def worker_main(spec):
    """Fresh-process measurement of one step (see step_worker)."""
    import warnings

    warnings.simplefilter("ignore")
    import astropy.io.fits  # noqa: F401
    import astropy.table  # noqa: F401
    import scipy.fft  # noqa: F401
    import scipy.ndimage  # noqa: F401

    from coron_cli import steps
    from coron_cli.asn import read_asn
    from coron_cli.products import read_product

    base = proc_status()["VmRSS"]
    asn = read_asn(spec["asn"]).products[0]
    out = spec["outdir"]
    name = asn.name
    roots = [os.path.basename(p).replace("_calints.fits", "") + "_c1001" for p in asn.science]
    step = spec["step"]
    if step == "stack":
        inputs = [read_product(p, what="reference exposure") for p in asn.psf]
        run = lambda: steps.stack_step(inputs, asn_id="c1001")  # noqa: E731
    elif step == "align":
        sci = read_product(asn.science[0], what="science exposure")
        stack = read_product(os.path.join(out, f"{name}_psfstack.fits"), ndims=(3,))
        run = lambda: steps.align_step(sci, stack, asn_id="c1001")  # noqa: E731
    elif step == "klip":
        sci = read_product(asn.science[0], what="science exposure")
        aligned = read_product(os.path.join(out, f"{roots[0]}_psfalign.fits"), ndims=(3, 4))
        run = lambda: steps.klip_step(sci, aligned, steps.KlipConfig(truncate=spec["truncs"]))  # noqa: E731
    elif step == "combine":
        subs = []
        for r in roots:
            p = read_product(os.path.join(out, f"{r}_psfsub.fits"))
            p.path = os.path.join(out, f"{r}_psfsub.fits")
            subs.append(p)
        run = lambda: steps.combine_step(subs)  # noqa: E731
    else:
        i2d = read_product(os.path.join(out, f"{name}_i2d.fits"), ndims=(2,))
        run = lambda: steps.hlsp_step(i2d)  # noqa: E731
    gc.collect()
    loaded = proc_status()["VmRSS"]
    can_reset = reset_peak()
    samples, _ = timeit(run, spec["repeat"], budget=spec["budget"])
    st = proc_status()
    print(json.dumps({"samples": samples.as_dict(), "base": base, "loaded": loaded,
                      "peak": st["VmHWM"], "reset": can_reset}))


def step_worker(step, asn, outdir, truncs, args):
    spec = {"step": step, "asn": asn, "outdir": outdir, "truncs": truncs,
            "repeat": args.repeat, "budget": args.budget / 2}
    r = run_measured([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)])
    try:
        res = json.loads(r["stdout"].strip().splitlines()[-1])
        res["samples"] = Samples.from_dict(res["samples"])
    except (IndexError, ValueError, KeyError):
        progress(f"worker {step} failed (rc {r['rc']}): "
                 + " | ".join(text for _, text in r["stderr"][-5:]))
        return None
    return res


def cli_step_peaks(run):
    """Peak sampled RSS of a `coron3 run -v` per step, from its 'X done' lines."""
    marks = []
    for t, text in run["stderr"]:
        for s in STEPS:
            if f" {s} done in " in text:
                marks.append((t, s))
    peaks = dict.fromkeys(STEPS, 0)
    start = 0.0
    for t_end, s in marks:
        vals = [v for (t, v) in run["samples"] if start - 0.025 <= t <= t_end + 0.025]
        if vals:
            peaks[s] = max(peaks[s], max(vals))
        start = t_end
    return peaks


def pipeline_config(n, nref, args):
    """Write a data set, run coron3 (CLI once, API several times), then every
    step alone in a fresh process."""
    import warnings

    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    nint = args.nint
    truncs = truncs_for(nref)
    folder = tempfile.mkdtemp(prefix=f"coron_bench_{n}_{nref}_", dir=args.tmpdir)
    res = {"n": n, "nref": nref, "nint": nint, "truncs": truncs}
    meter = LoadMeter()
    try:
        progress(f"pipeline {n}x{n}, {nref} refs: writing inputs to {folder}")
        asn, _ = write_dataset(folder, n, nint, nref, args.seed, args.source)
        res["input_bytes"] = sum(os.path.getsize(os.path.join(folder, f))
                                 for f in os.listdir(folder) if f.endswith(".fits"))
        out_cli = os.path.join(folder, "out_cli")
        os.mkdir(out_cli)
        progress(f"pipeline {n}x{n}, {nref} refs: coron3 run (subprocess)")
        cmd = venv_tool("coron3") + ["run", asn, "--outdir", out_cli, "--truncate",
                                     ",".join(map(str, truncs)), "-v"]
        cli_meter = LoadMeter()
        cli = run_measured(cmd, sample=True)
        res.update(cli_wall=None, cli_maxrss=None, cli_step_peak={},
                   cli_load=cli_meter.stop()[0])
        if cli["rc"] != 0:
            res["cli_error"] = " | ".join(t for _, t in cli["stderr"][-3:])[:300]
            progress(f"coron3 run failed (rc {cli['rc']}): {res['cli_error']}")
        else:
            res.update(cli_wall=cli["wall"], cli_maxrss=cli["hwm"],
                       cli_step_peak=cli_step_peaks(cli))

        # in-process: run_association, with coron's read/write timed
        out_api = os.path.join(folder, "out_api")
        walls, steps_t, io_t, dpeak = Samples(), [], [], []
        iot = IOTimer()
        t_start = time.perf_counter()
        r = 0
        while True:
            r += 1
            progress(f"pipeline {n}x{n}, {nref} refs: run_association in-process, run {r}")
            shutil.rmtree(out_api, ignore_errors=True)
            os.mkdir(out_api)
            gc.collect()
            rss0 = proc_status()["VmRSS"]
            reset_ok = reset_peak()
            iot.reset()
            with iot, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                summary = timed(lambda: run_association(asn, out_api, PipelineConfig.from_options(truncate=truncs)), walls)
            steps_t.append(summary["timings"])
            io = io_by_step(iot.write)
            io["_read"] = iot.read
            io_t.append(io)
            if reset_ok:
                dpeak.append(proc_status()["VmHWM"] - rss0)
            if not more_rounds([walls], args.repeat, t_start, args.budget):
                break
        # step figures from the undisturbed runs when there are some
        keep = [i for i, ld in enumerate(walls.loads) if ld is None or ld < CLEAN_LOAD] \
            or list(range(len(walls.times)))
        steps_t = [steps_t[i] for i in keep]
        io_t = [io_t[i] for i in keep]
        done = out_cli if res["cli_wall"] is not None else out_api
        sizes = {f: os.path.getsize(os.path.join(done, f)) for f in os.listdir(done)}
        largest = max(sizes, key=sizes.get)
        res.update(largest=largest, largest_bytes=sizes[largest],
                   products_bytes=sum(sizes.values()))
        if done != out_api:
            shutil.rmtree(out_api, ignore_errors=True)
        names = list(STEPS) + sorted({k for t in steps_t for k in t} - set(STEPS))
        res.update(api_wall=walls, api_dpeak=max(dpeak) if dpeak else None,
                   api_step={s: statistics.median(t.get(s, 0.0) for t in steps_t)
                             for s in names},
                   api_write={s: statistics.median(t[s] for t in io_t) for s in STEPS},
                   api_read=statistics.median(t["_read"] for t in io_t))

        # every step alone, in a fresh process, inputs read from the CLI run
        res["worker"] = {}
        for s in STEPS:
            progress(f"pipeline {n}x{n}, {nref} refs: {s} step alone (fresh process)")
            res["worker"][s] = step_worker(s, asn, done, truncs, args)
        res["import_base"] = import_baseline()
        res["other_load"], res["own_load"], res["steal"] = meter.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return res


def help_times(args):
    """Wall time of `<tool> --help` (median of 5), plus a bare interpreter."""
    def row(label, cmd, **kw):
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run(cmd, **kw)
            ts.append(time.perf_counter() - t0)
        return (label, statistics.median(ts), min(ts), max(ts))

    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [row(name + " --help", venv_tool(name) + ["--help"], **quiet)
            for name in ("coron-klip", "coron3", "coron-align", "coron-stack", "coron-hlsp")]
    rows.append(row("python -c pass", [sys.executable, "-c", "pass"]))
    rows.append(row("python -c 'import numpy'", [sys.executable, "-c", "import numpy"]))
    return rows


# ---------------------------------------------------------------------------
# machine description and calibration
# ---------------------------------------------------------------------------
def machine_rows():
    import astropy
    import scipy

    model, nproc = "unknown", 0
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("processor"):
                    nproc += 1
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 2 ** 20:.1f} GiB"
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
        extra = cfg.get("openblas configuration")
        if extra:
            blas += f" ({extra})"
    except Exception:  # older numpy: no mode="dicts"
        pass
    try:
        import threadpoolctl  # noqa: F401 - only if already installed

        info = threadpoolctl.threadpool_info()
        blas += "; threadpoolctl: " + ", ".join(
            f"{d.get('internal_api')} {d.get('num_threads')} threads" for d in info)
    except Exception:
        pass
    threads = ", ".join(f"{k}={os.environ[k]}" for k in
                        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                        if k in os.environ) or "not set"
    return [
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("host", f"{platform.node()} ({platform.system()} {platform.release()})"),
        ("CPU", f"{model}; {nproc} logical CPUs in /proc/cpuinfo, {affinity} usable"),
        ("memory", mem),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("numpy / scipy / astropy", f"{np.__version__} / {scipy.__version__} / "
                                    f"{astropy.__version__}"),
        ("BLAS (numpy)", blas),
        ("thread variables", threads),
    ]


_SYRK_CODE = """
import json, time, numpy as np
A = np.random.default_rng(0).standard_normal((200, 102400))
C = A @ A.T
ts = []
for _ in range(7):
    t0 = time.perf_counter(); C = A @ A.T; ts.append(time.perf_counter() - t0)
print(json.dumps([200 * 200 * 102400 / 1e9 / t for t in ts]))
"""


def calibration_rows():
    """How fast and how steady this machine is right now: float64 syrk rate
    with the default BLAS threads and with one thread, cost of fresh memory."""
    rows = []
    for label, extra in (("default BLAS threads", {}),
                         ("OPENBLAS_NUM_THREADS=1", {"OPENBLAS_NUM_THREADS": "1",
                                                     "OMP_NUM_THREADS": "1"})):
        env = dict(os.environ, **extra)
        r = subprocess.run([sys.executable, "-c", _SYRK_CODE], capture_output=True, env=env,
                           text=True)
        try:
            rates = sorted(json.loads(r.stdout.strip().splitlines()[-1]))
            text = (f"median {statistics.median(rates):.1f}, min {rates[0]:.1f}, "
                    f"max {rates[-1]:.1f} (7 runs)")
        except (IndexError, ValueError):
            text = "failed"
        rows.append((f"syrk 200x102400 float64 GFLOP/s, {label}", text))
    fresh, rewrite = [], []
    for _ in range(3):
        gc.collect()
        t0 = time.perf_counter()
        a = np.ones(2 ** 27)
        fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        a += 1.0
        rewrite.append(time.perf_counter() - t0)
        del a
    rows.append(("allocate + first touch of 1 GiB", f"median {statistics.median(fresh):.2f} s "
                 f"(min {min(fresh):.2f}, max {max(fresh):.2f}); rewriting it: "
                 f"{statistics.median(rewrite):.3f} s"))
    return rows


def print_machine(rows):
    print("Machine")
    print("-------")
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(w)}  {v}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def pip_install(python, spec):
    """`python -m pip install --quiet spec` (a benchmark's own environment); seconds spent,
    or RuntimeError with the end of pip's errors."""
    t0 = time.perf_counter()
    r = subprocess.run([python, "-m", "pip", "install", "--quiet", spec],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"pip install {spec} failed: {tail}")
    return time.perf_counter() - t0


def finish_report(result, json_path, note=""):
    """The end of a benchmark's report: the load average now (also put in `result`), and
    every number written to `json_path` when given."""
    la = os.getloadavg()
    result["loadavg_end"] = la
    print(f"\nload average at the end: {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} (1, 5, 15 min) "
          f"on {os.cpu_count()} CPUs{note}")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
        print(f"every number: {json_path}")


def mb(x):
    return None if x is None else x / MB


def slope(xs, ys):
    """log-log slope between the first and last point."""
    if len(xs) < 2 or min(ys) <= 0:
        return None
    return float(np.log(ys[-1] / ys[0]) / np.log(xs[-1] / xs[0]))


def tm(samples, scale=1.0):
    """Median of a Samples as text, '!' when every sample was disturbed."""
    if samples is None:
        return "-"
    return fmt(samples.median * scale) + ("!" if samples.disturbed else "")


def ratio(a, b, best=False, scale_a=1.0):
    va = (a.best if best else a.median) * scale_a
    vb = b.best if best else b.median
    return va / vb


def load_text(r, key="other_load"):
    other = r.get(key)
    return "-" if other is None else f"{other:.2f}"


DISTURBED_NOTE = ("'!' after a time: every run of it had other processes using more than "
                  f"{CLEAN_LOAD} CPU\n  (otherwise only the undisturbed runs are used); "
                  "n = undisturbed/total runs (runs under 0.5 s count as\n  undisturbed).")


def report_pipeline(configs):
    rows = []
    for c in configs:
        tag = f"{c['n']}px/{c['nref']}r"
        names = list(c["api_step"])
        for s in names:
            w = c["worker"].get(s) or {}
            if w:
                above_base = mb(w["peak"] - w["base"])
                working = mb(w["peak"] - w["loaded"]) if w.get("reset") else None
            else:
                above_base = working = None
            rows.append([tag, s, c["api_step"][s], c["api_write"].get(s),
                         tm(w.get("samples")), w["samples"].count() if w else "-",
                         above_base, working, mb(c["cli_step_peak"].get(s) or None)])
        rows.append([tag, "whole run (API)", tm(c["api_wall"]), sum(c["api_write"].values()),
                     None, c["api_wall"].count(), mb(c["api_dpeak"]), None, None])
        if c["cli_maxrss"] is not None:
            rows.append([tag, "whole run (CLI)", c["cli_wall"], None, None,
                         "1/1" if (c["cli_load"] or 0) < CLEAN_LOAD else "0/1",
                         mb(c["cli_maxrss"] - c["import_base"]), None, mb(c["cli_maxrss"])])
        else:
            rows.append([tag, "whole run (CLI)", "failed", None, None, "-", None, None, None])
    table("Steps and whole run (2 science exposures of NINT integrations; align and klip "
          "run once per exposure)",
          ["config", "step", "in run s", "of which write s", "alone s", "n",
           "alone peak-base MB", "alone working MB", "CLI RSS MB"], rows,
          note="""in run s: coron's own per-step timings inside run_association called in this
  process (read + compute + write; align/klip summed over the 2 exposures), median
  over the runs; n of the whole-run row.
of which write s: part of 'in run s' spent in write_product (FITS + fsync).
alone s: the step function on ONE exposure with its inputs already in memory, in a
  fresh process (stack/combine/hlsp: the whole product); n of that column.
alone peak-base MB: that process's peak RSS minus interpreter+imports (inputs included).
alone working MB: peak RSS during the step minus RSS with its inputs loaded
  (VmHWM reset through /proc/self/clear_refs).
CLI RSS MB: largest RSS of the `coron3 run -v` subprocess sampled every 20 ms while
  the step ran; whole-run row: its peak (VmHWM), and that minus the imports.
whole run (API) peak column: growth of this process's peak RSS during run_association.
""" + DISTURBED_NOTE)
    rows = []
    for c in configs:
        peak = c["cli_maxrss"]
        rows.append([f"{c['n']}px/{c['nref']}r", tm(c["api_wall"]), c["api_wall"].count(),
                     "failed" if peak is None else c["cli_wall"], load_text(c, "cli_load"),
                     mb(peak), mb(c["import_base"]), mb(c["input_bytes"]), mb(c["products_bytes"]),
                     c["largest"].replace("_c1001", "").replace(".fits", ""),
                     mb(c["largest_bytes"]), None if peak is None else peak / c["largest_bytes"],
                     None if peak is None else (peak - c["import_base"]) / c["largest_bytes"]])
    table("Whole run: wall time and memory",
          ["config", "run_association s", "n", "coron3 run s", "other load", "peak RSS MB",
           "imports MB", "inputs MB", "products MB", "largest product", "MB", "peak/largest",
           "(peak-imports)/largest"], rows,
          note="peak RSS: VmHWM of the `coron3 run` process, read from /proc/<pid>/status every\n"
               "20 ms (wait4's ru_maxrss is not used: Linux folds the parent's memory at\n"
               "spawn time into it). imports: VmHWM of a bare interpreter importing what\n"
               "coron3 run imports. other load: CPUs used by other processes during the\n"
               "coron3 run.")


def report_klip(points, target):
    rows = []
    for p in points:
        c, k, b = p["klip_coron"], p["klip_classic"], p["klip_blas"]
        rows.append([f"{p['n']}", f"{p['nref']}", ",".join(map(str, p["truncs"])),
                     tm(c), tm(k), tm(b), ratio(k, c), ratio(c, b), ratio(k, c, True),
                     ratio(c, b, True), c.count(), max(p["klip_acc"]), load_text(p)])
    table("KLIP: coron vs classic vs BLAS bound (NINT integrations; seconds, medians of "
          "interleaved rounds)",
          ["px", "nref", "truncations", "coron s", "classic s", "BLAS s", "speed-up",
           "coron/BLAS", "speed-up best", "coron/BLAS best", "n", "max rel diff",
           "other load"], rows,
          note="""coron: coron_cli.core.klip_subtract on float32 inputs (no zones, no variance).
classic: float64, per integration eigh(R R^T), explicit basis Z = V^T R / sqrt(lam),
  Python loop over truncations (coron_cli._harness.classic_klip).
BLAS: only R R^T (syrk) + R t + (ntrunc x nref)@(nref x npix) per integration, float64.
speed-up = classic / coron and coron/BLAS from the medians; 'best' = the same from the
  fastest run of each. max rel diff = max over truncations of
  RMS(coron - classic) / RMS(classic) residual (classic is the float64 reference).
other load: CPUs used by other processes (/proc/stat minus this benchmark's own CPU
  time) on average while the row was measured.
""" + DISTURBED_NOTE)
    if target:
        rows = [[f"{k}", a] for k, a in zip(target["truncs"], target["klip_acc"])]
        table(f"KLIP accuracy at {target['n']}px, {target['nref']} refs: relative RMS "
              "difference coron vs float64 reference",
              ["K", "RMS(coron-ref)/RMS(ref)"], rows)


def report_align(points):
    rows = []
    for p in points:
        a, k, x = p["align_coron"], p["align_classic_sub"], p["align_extrap"]
        rows.append([f"{p['n']}", f"{p['nref']}", f"{p['align_npairs']}", tm(a), tm(k, x),
                     f"{p['align_pairs']} in {tm(k)}", ratio(k, a, scale_a=x),
                     ratio(k, a, True, scale_a=x), p["align_rms_coron_all"],
                     p["align_rms_coron_sub"], p["align_rms_classic_sub"],
                     p["align_max_coron"], a.count()])
    table("Align: coron vs classic leastsq on known injected shifts (NINT integrations)",
          ["px", "nref", "pairs", "coron s", "classic s (extrap.)", "classic measured",
           "speed-up", "speed-up best", "RMS coron px", "RMS coron sub", "RMS classic sub",
           "max coron px", "n"], rows,
          note="""coron: coron_cli.core.align_references (fit + shift of all refs onto all
  integrations). classic: scipy.optimize.leastsq of (dx, dy, scale) per pair, model =
  scale x float64 Fourier shift of the reference, start (0, 0, 1); timed on a random
  subset of pairs and extrapolated linearly to all pairs (classic s = measured / subset x
  pairs). It fits but does not produce shifted images (coron's time includes them).
RMS = sqrt(mean(err_x^2 + err_y^2)) vs the injected shifts, px; 'sub' = the same
  subset of pairs for both.
""" + DISTURBED_NOTE)


def report_scaling(points_nref, points_size, args):
    def med(p, key):
        return p[key].median

    cols = ["klip coron s", "klip classic s", "BLAS s", "align coron s", "align ms/pair"]
    keys = ["klip_coron", "klip_classic", "klip_blas", "align_coron"]

    def scaling_table(points, label, x, slope_label, title):
        rows = [[f"{p[label]}"] + [tm(p[k]) for k in keys] +
                [1e3 * med(p, "align_coron") / p["align_npairs"]] for p in points]
        xs = [x(p) for p in points]
        rows.append([slope_label] + [slope(xs, [med(p, k) for p in points]) for k in keys]
                    + [None])
        table(title, [label if label == "nref" else "px"] + cols, rows)

    if points_nref:
        scaling_table(points_nref, "nref", lambda p: p["nref"], "slope (log-log)",
                      f"Scaling with the number of references at {points_nref[0]['n']}x"
                      f"{points_nref[0]['n']} px, {args.nint} integrations")
    if points_size:
        scaling_table(points_size, "n", lambda p: p["n"] ** 2, "slope vs pixels",
                      f"Scaling with image size at {points_size[0]['nref']} references, "
                      f"{args.nint} integrations")


def report_summary(target, config, help_rows, notes):
    rows = []

    def add(name, value, goal, ok, disturbed=False):
        res = "-" if ok is None else ("PASS" if ok else "FAIL")
        if disturbed and ok is not None:
            res += " (disturbed)"
        rows.append([name, value, goal, res])

    if target:
        where = f" @{target['n']}px/{target['nref']}r"
        c, k, b = target["klip_coron"], target["klip_classic"], target["klip_blas"]
        su, sub = ratio(k, c), ratio(k, c, True)
        add("KLIP speed-up vs classic" + where, f"{su:.2f}x (best {sub:.2f}x)", ">= 20x",
            su >= 20, c.disturbed or k.disturbed)
        rb, rbb = ratio(c, b), ratio(c, b, True)
        add("KLIP time / BLAS bound" + where, f"{rb:.2f}x (best {rbb:.2f}x)", "<= 1.5x",
            rb <= 1.5, c.disturbed or b.disturbed)
        a, ka, x = target["align_coron"], target["align_classic_sub"], target["align_extrap"]
        sa, sab = ratio(ka, a, scale_a=x), ratio(ka, a, True, scale_a=x)
        add("align speed-up vs classic" + where, f"{sa:.2f}x (best {sab:.2f}x)", ">= 20x",
            sa >= 20, a.disturbed or ka.disturbed)
        rc, rk = target["align_rms_coron_all"], target["align_rms_classic_sub"]
        rcs = target["align_rms_coron_sub"]
        add("align RMS error coron (all pairs)" + where, f"{rc:.4f} px", "<= 0.01 px",
            rc <= 0.01)
        add("align RMS coron vs classic (same pairs)" + where,
            f"{rcs:.4f} vs {rk:.4f} px", "coron <= 1.1 x classic", rcs <= 1.1 * rk)
        acc = max(target["klip_acc"])
        add("KLIP max rel. diff vs float64" + where, f"{acc:.1e}", "(info)", None)
    if config and config["cli_maxrss"] is None:
        add(f"coron3 run peak RSS / largest product @{config['n']}px/{config['nref']}r",
            "coron3 run failed", "<= 2x", False)
    elif config:
        r = config["cli_maxrss"] / config["largest_bytes"]
        add(f"coron3 run peak RSS / largest product @{config['n']}px/{config['nref']}r",
            f"{r:.2f}x ({mb(config['cli_maxrss']):.0f} / {mb(config['largest_bytes']):.0f}"
            " MB)", "<= 2x", r <= 2.0)
    h = next(r for r in help_rows if r[0].startswith("coron-klip"))
    add("coron-klip --help wall (median of 5)", f"{h[1]:.3f} s", "< 0.3 s", h[1] < 0.3)
    table("Summary against the targets (PASS/FAIL on medians)",
          ["target", "measured", "goal", "result"], rows,
          note="\n".join(notes) if notes else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, one round: a smoke run of about a minute")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per measurement, the median is shown [3; --quick 1]")
    ap.add_argument("--sizes", default=None,
                    help="image sizes of the pipeline runs and yardsticks [160,320; quick 64]")
    ap.add_argument("--nrefs", default=None,
                    help="reference counts of the pipeline runs and yardsticks "
                         "[50,200; quick 20,50]")
    ap.add_argument("--scale-nrefs", default=None,
                    help="reference counts of the scaling table [50,100,200,400; quick 10,20,50]")
    ap.add_argument("--scale-size", type=int, default=None,
                    help="image size of the reference-count scaling [160; quick 64]")
    ap.add_argument("--scale-sizes", default=None,
                    help="image sizes of the size scaling [64,160,320; quick 32,64]")
    ap.add_argument("--scale-nref", type=int, default=None,
                    help="reference count of the size scaling [200; quick 50]")
    ap.add_argument("--nint", type=int, default=10, help="science integrations per exposure")
    ap.add_argument("--classic-pairs", type=int, default=None,
                    help="(integration, reference) pairs timed for the classic align "
                         "[20; quick 5]")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds: stop repeating a measurement once its runs took longer "
                         "than this (at least one run) [20, doubled at 320 px/200 refs; quick 10]")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the inputs")
    ap.add_argument("--source", choices=("sim", "speckle"), default="sim",
                    help="PSFs from coron's simulate_dataset or from random phase screens")
    ap.add_argument("--tmpdir", default=None, help="folder for the temporary FITS files")
    ap.add_argument("--skip-pipeline", action="store_true", help="only the core yardsticks")
    ap.add_argument("--skip-core", action="store_true", help="only the pipeline runs")
    ap.add_argument("--threads", type=int, default=None,
                    help="set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS for "
                         "the whole benchmark and its subprocesses [unset: library default]")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    if args.threads and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        env = dict(os.environ)
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(args.threads)
        # BLAS reads these when numpy is first imported: start again with them set
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                  env)

    q = args.quick
    args.repeat = args.repeat or (1 if q else 3)
    sizes = parse_list(args.sizes or ("64" if q else "160,320"))
    nrefs = parse_list(args.nrefs or ("20,50" if q else "50,200"))
    scale_nrefs = parse_list(args.scale_nrefs or ("10,20,50" if q else "50,100,200,400"))
    scale_size = args.scale_size or (64 if q else 160)
    scale_sizes = parse_list(args.scale_sizes or ("32,64" if q else "64,160,320"))
    scale_nref = args.scale_nref or (50 if q else 200)
    args.classic_pairs = args.classic_pairs or (5 if q else 20)
    args.budget = args.budget if args.budget is not None else (10.0 if q else 20.0)
    notes = []

    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)
    # import every coron module now: one consistent version for the in-process runs
    import coron_cli.core  # noqa: F401
    import coron_cli.pipeline  # noqa: F401
    import coron_cli.products  # noqa: F401
    import coron_cli.simulate  # noqa: F401
    import coron_cli.steps  # noqa: F401

    whole = LoadMeter()
    progress("machine description and calibration")
    print_machine(machine_rows() + calibration_rows())
    print(f"\nsettings: repeat {args.repeat} (budget {args.budget:g} s per measurement), "
          f"integrations {args.nint}, PSF source '{args.source}', seed {args.seed}, "
          f"pipeline configs {sizes} px x {nrefs} refs, truncations {list(TRUNCS)} "
          "clamped to nref")
    sys.stdout.flush()

    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh
                         if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        avail = None

    def affordable(n, nref, what):
        # inputs + klip_subtract's float64 working copies of one chunk (~512 MiB)
        need = args.nint * nref * n * n * 4 * 2 + 3 * 2 ** 29
        if avail is not None and need > 0.6 * avail:
            notes.append(f"skipped {what} at {n}px/{nref} refs: needs ~{need / 2 ** 30:.1f} GiB, "
                         f"{avail / 2 ** 30:.1f} GiB available")
            progress(notes[-1])
            return False
        return True

    # core yardsticks: every pipeline config, the scaling points
    def guarded(func, n, nref, what):
        try:
            return func(n, nref, args)
        except Exception as exc:  # report and go on with the other measurements
            import traceback

            traceback.print_exc(file=sys.stderr)
            notes.append(f"{what} at {n}px/{nref} refs failed: {type(exc).__name__}: "
                         f"{str(exc)[:200]}")
            progress(notes[-1])
            return None

    points_nref, points_size = [], []
    if not args.skip_core:
        for n in sizes:
            for nref in nrefs:
                if affordable(n, nref, "yardsticks"):
                    guarded(core_point, n, nref, "yardsticks")
        for nref in scale_nrefs:
            if affordable(scale_size, nref, "scaling"):
                points_nref.append(guarded(core_point, scale_size, nref, "scaling"))
        for n in scale_sizes:
            if affordable(n, scale_nref, "scaling"):
                points_size.append(guarded(core_point, n, scale_nref, "scaling"))
        points_nref = [p for p in points_nref if p]
        points_size = [p for p in points_size if p]
        allpts = sorted(_POINTS.values(), key=lambda p: (p["n"], p["nref"]))
        want = (320, 200) if not q else (max(sizes), max(nrefs))
        target = _POINTS.get(want) or (allpts[-1] if allpts else None)
        if target and (target["n"], target["nref"]) != (320, 200):
            notes.append(f"targets are defined at 320px/200 refs; shown at {target['n']}px/"
                         f"{target['nref']} refs")
        report_klip(allpts, target)
        report_align(allpts)
        report_scaling(points_nref, points_size, args)
    else:
        target = None

    configs = []
    if not args.skip_pipeline:
        for n in sizes:
            for nref in nrefs:
                if affordable(n, nref, "pipeline run"):
                    c = guarded(pipeline_config, n, nref, "pipeline run")
                    if c:
                        configs.append(c)
        if configs:
            report_pipeline(configs)
    for c in configs:
        if c.get("cli_error"):
            notes.append(f"coron3 run failed at {c['n']}px/{c['nref']} refs: {c['cli_error']}")
    config = None
    if configs:
        config = next((c for c in configs if (c["n"], c["nref"]) == (320, 200)), configs[-1])

    progress("--help timings")
    hrows = help_times(args)
    table("Start-up: wall time of --help (subprocess, median of 5)",
          ["command", "median s", "min s", "max s"], hrows)
    other, own, steal = whole.stop()
    if other is not None and other > 0.25:
        notes.append(f"other processes kept {other:.2f} of {os.cpu_count()} CPUs busy on "
                     "average during the benchmark: times are inflated and noisy")
    report_summary(target, config, hrows, notes)
    total = time.perf_counter() - _T_START
    print(f"\nbenchmark wall time: {total:.0f} s ({total / 60:.1f} min); CPUs used on average: "
          f"this benchmark {own:.2f}, other processes "
          f"{'-' if other is None else f'{other:.2f}'}, steal "
          f"{'-' if steal is None else f'{steal:.2f}'}")
    progress(f"done in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
