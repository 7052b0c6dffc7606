#!/usr/bin/env python
"""coron at scale: ``coron3 batch`` on many associations and ``coron-select`` on large
reference libraries, with pyKLIP's ``PSFLibrary`` as a yardstick.

Run as ``.venv/bin/python benchmarks/scale.py [--quick] [--parts A,B,C]
[--library-sizes 500,2000,10000] [--json FILE]`` (``make bench-scale``); see
benchmarks/README.md. Three parts:

* **A**: 16 medium simulated associations (``coron_cli.simulate``, one seed each) run by
  ``coron3 batch`` with ``--workers 1`` and ``--workers 2``: seconds, speed-up, and the
  products of the two runs compared value by value.
* **B**: reference libraries of 500, 2,000 and 10,000 frames of 320x320 written as
  ``*_calints.fits`` files (SCI float32, ERR, DQ; 20 integrations a file) ranked by
  ``coron-select`` with ``--workers 1`` and ``--workers 2``: wall seconds (reading
  included), peak RSS of the client and of every worker process, and the two score
  tables compared.
* **C**: pyKLIP's ``PSFLibrary`` (the N x N correlation matrix of the library) on the
  same frames, in a virtual environment of its own (``benchmarks/.venv-pyklip``, made on
  first use with ``pip install pyklip``; never a dependency of coron), with a timeout.

Plain text tables on stdout, progress on stderr. Not a test: exits 0 unless it crashes.
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = 2.0 ** 20
GB = 2.0 ** 30
_T0 = time.perf_counter()

sys.path.insert(0, HERE)
import bench  # benchmarks/bench.py: the simulated PSFs, the machine table)

#: the set-up keywords of every file written here (coron-select compares them)
SETUP = {"INSTRUME": "NIRCAM", "CORONMSK": "MASKA335R", "FILTER": "F444W",
         "SUBARRAY": "SUB320A335R"}
READ_NOISE = bench.READ_NOISE


def progress(msg):
    print(f"[scale {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# part B: the library
# ---------------------------------------------------------------------------
def _write_calints(path, sci, err, dq, star, name, is_psf):
    from astropy.io import fits

    pri = fits.Header()
    pri["TELESCOP"] = "JWST"
    for key, value in SETUP.items():
        pri[key] = value
    pri["EXP_TYPE"] = "NRC_CORON"
    pri["IS_PSF"] = bool(is_psf)
    pri["NINTS"] = int(sci.shape[0])
    pri["BUNIT"] = "DN"
    pri["ORIGIN"] = "coron benchmarks/scale.py"
    pri["FILENAME"] = name
    sh = fits.Header()
    sh["STARCENX"] = (float(star[0]), "star x, 0-based pixels")
    sh["STARCENY"] = (float(star[1]), "star y, 0-based pixels")
    sh["BUNIT"] = "DN"
    fits.HDUList([fits.PrimaryHDU(header=pri), fits.ImageHDU(sci, header=sh, name="SCI"),
                  fits.ImageHDU(err, name="ERR"), fits.ImageHDU(dq, name="DQ")]).writeto(
        path, overwrite=True)


def _noisy_exposure(model, bad, rng):
    """float32 SCI, ERR and uint32 DQ of model frames (nint, n, n): photon + read noise;
    DQ flags the fixed bad-pixel map (NaN there) and 3e-4 random pixels per integration
    (garbage 1e5 there), as real calints hold garbage where DQ says so."""
    model = model.astype(np.float32, copy=False)
    err = np.sqrt(np.maximum(model, 0.0) + np.float32(READ_NOISE ** 2))
    sci = model + err * rng.standard_normal(model.shape, dtype=np.float32)
    dq = np.zeros(sci.shape, np.uint32)
    dq[:, bad] = 1 | 1024
    extra = rng.random(sci.shape, dtype=np.float32) < 3e-4
    dq[extra] |= 1 | 4
    sci[:, bad] = np.nan
    err[:, bad] = np.nan
    sci[extra] = 1e5
    return sci, err, dq


def _basis(seed):
    """The simulated 320 px PSFs (bench.base_frames: bad pixels repaired) grouped by
    dither position, with the star positions the simulation put them at."""
    base = bench.base_frames(320, seed, "sim")
    ds = bench._BASE_CACHE[("ds", 320, seed)]
    psf = [e for e in ds.exposures if e.exptype == "psf"]
    sci = [e for e in ds.exposures if e.exptype == "science"]
    per = base["ref"].shape[0] // len(psf)
    return {"ref": base["ref"].reshape(len(psf), per, 320, 320),
            "ref_star": np.array([e.star_xy.mean(axis=0) for e in psf]),
            "sci": base["sci"], "sci_star": np.array([e.star_xy.mean(axis=0) for e in sci]),
            "bad": base["bad"]}


def write_library(folder, nframes, per_file, seed, basis):
    """`nframes` reference frames of 320x320 in files of `per_file` integrations
    (``library/lib_NNNNN_calints.fits``) and two science exposures
    (``science/sci_rollN_calints.fits``, 10 integrations) in `folder`.

    A file: two simulated PSFs of one dither position (two wavefront states) A and B,
    both moved by one sub-pixel offset of up to 1 px (Fourier shift; STARCENX/Y say
    where the star then is), integration t = a_t ((1 - w_t) A + w_t B) with w drifting
    linearly through the file and a_t in [0.8, 1.25], plus noise and flagged garbage.

    Returns (science paths, library paths, bytes written).
    """
    for sub in ("science", "library"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng([seed, nframes, per_file])
    ref, ref_star, bad = basis["ref"], basis["ref_star"], basis["bad"]
    ndither, nstate = ref.shape[:2]
    science = []
    for r in range(basis["sci"].shape[0]):
        path = os.path.join(folder, "science", f"sci_roll{r + 1}_calints.fits")
        sci, err, dq = _noisy_exposure(basis["sci"][r] * 0.5, bad, rng)
        _write_calints(path, sci, err, dq, basis["sci_star"][r], os.path.basename(path), False)
        science.append(path)
    paths, done, k = [], 0, 0
    while done < nframes:
        nint = min(per_file, nframes - done)
        d = rng.integers(ndither)
        i, j = rng.choice(nstate, 2, replace=False)
        dx, dy = rng.uniform(-1.0, 1.0, 2)
        a = bench.fourier_shift(ref[d, i], dx, dy).astype(np.float32)
        b = bench.fourier_shift(ref[d, j], dx, dy).astype(np.float32)
        w0, w1 = np.sort(rng.uniform(0.0, 1.0, 2))
        w = np.linspace(w0, w1, nint, dtype=np.float32)[:, None, None]
        gain = rng.uniform(0.8, 1.25, nint).astype(np.float32)[:, None, None]
        model = gain * ((1 - w) * a + w * b) * np.float32(0.5)
        sci, err, dq = _noisy_exposure(model, bad, rng)
        path = os.path.join(folder, "library", f"lib_{k:05d}_calints.fits")
        star = ref_star[d] + (dx, dy)
        _write_calints(path, sci, err, dq, star, os.path.basename(path), True)
        paths.append(path)
        done += nint
        k += 1
    size = sum(os.path.getsize(p) for p in science + paths)
    return science, paths, size


def evict(paths):
    """Drop `paths` from the page cache (written back first), so that the next run reads
    them from the disk: posix_fadvise(DONTNEED) on these files only, nothing else of the
    machine's cache. Returns False where that is not available."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


# ---------------------------------------------------------------------------
# measuring a process tree
# ---------------------------------------------------------------------------
def _status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _children(pid):
    """Every descendant of `pid` (psutil when there, else /proc)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:  # the process is gone
            return []
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    parent[int(name)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _role(cmd):
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "forkserver" in cmd:
        return "forkserver"
    if "multiprocessing" in cmd or "spawn_main" in cmd:
        return "worker"
    return "other"


def run_tree(cmd, *, env=None, cwd=None, timeout=None, interval=0.05):
    """Run `cmd`; wall seconds, return code, output, and the peak RSS (VmHWM, read from
    /proc every `interval` s) of the process and of each of its descendants (dask's
    worker processes are children of the client, which runs the nannies).

    Returns dict: wall, rc, stdout, stderr, timed_out, client (bytes), workers (list of
    bytes, one per worker process), others ({role: bytes}), procs (each process seen:
    pid, role, peak, command line), load (1-min load average
    at the start and at the end), other_cpus and own_cpus (CPUs kept busy on average
    by the other processes of the machine and by this benchmark with its children:
    /proc/stat and getrusage, bench.LoadMeter).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        load0 = os.getloadavg()[0]
        meter = bench.LoadMeter()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        peaks, roles, cmds = {}, {}, {}
        timed_out = False
        while p.poll() is None:
            for pid in [p.pid] + _children(p.pid):
                hwm = _status_kb(pid, "VmHWM")
                if hwm is None:
                    continue
                peaks[pid] = max(peaks.get(pid, 0), hwm)
                if pid not in roles:
                    cmds[pid] = _cmdline(pid)
                    roles[pid] = "client" if pid == p.pid else _role(cmds[pid])
            if timeout and time.perf_counter() - t0 > timeout:
                timed_out = True
                p.kill()
                break
            time.sleep(interval)
        p.wait()
        wall = time.perf_counter() - t0
        other, own, _ = meter.stop()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    result = {"wall": wall, "rc": p.returncode, "timed_out": timed_out,
              "stdout": stdout, "stderr": stderr,
              "client": peaks.get(p.pid), "workers": [], "others": {},
              "load": (load0, os.getloadavg()[0]), "other_cpus": other, "own_cpus": own}
    for pid, role in roles.items():
        if role == "worker":
            result["workers"].append(peaks[pid])
        elif role != "client":
            result["others"][role] = max(result["others"].get(role, 0), peaks[pid])
    result["workers"].sort(reverse=True)
    result["procs"] = [{"pid": pid, "role": roles[pid], "peak": peaks[pid],
                        "cmd": cmds[pid][:200]} for pid in roles]
    return result


def tool(name):
    """A console script of the environment running this benchmark."""
    exe = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(exe):
        raise SystemExit(f"scale: {exe} not found: run with the project's environment "
                         "(.venv/bin/python benchmarks/scale.py)")
    return exe


def child_env(threads=1):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("NO_COLOR", "1")
    return env


# ---------------------------------------------------------------------------
# part A: coron3 batch
# ---------------------------------------------------------------------------
def make_asns(folder, count, size, seed):
    """`count` simulated data sets of `size` (coron_cli.simulate, seeds seed..), each in
    its own folder, and their associations in ``folder/asns/`` (members by absolute
    path). Returns the association folder."""
    from coron_cli.demo import write_simulation
    from coron_cli.simulate import simulate_dataset

    asns = os.path.join(folder, "asns")
    os.makedirs(asns, exist_ok=True)
    for k in range(count):
        sub = os.path.join(folder, f"set{k:02d}")
        os.makedirs(sub, exist_ok=True)
        progress(f"A: simulating data set {k + 1}/{count} ({size}, seed {seed + k})")
        paths = write_simulation(simulate_dataset(size, seed=seed + k, root=f"s{k:02d}"), sub)
        with open(paths["asn"]) as fh:
            asn = json.load(fh)
        for product in asn["products"]:
            for m in product["members"]:
                m["expname"] = os.path.join(sub, os.path.basename(m["expname"]))
        with open(os.path.join(asns, f"scale{k:02d}_asn.json"), "w") as fh:
            json.dump(asn, fh, indent=1)
    return asns


def _same_fits(pa, pb):
    """'' when two FITS files hold the same data (every HDU, NaN = NaN; headers not
    compared: they hold dates), else what differs."""
    from astropy.io import fits

    with fits.open(pa, memmap=False) as fa, fits.open(pb, memmap=False) as fb:
        if len(fa) != len(fb):
            return f"{len(fa)} vs {len(fb)} HDUs"
        for ha, hb in zip(fa, fb):
            x, y = ha.data, hb.data
            if x is None and y is None:
                continue
            if x is None or y is None:
                return f"{ha.name}: data in one only"
            if isinstance(ha, (fits.BinTableHDU, fits.TableHDU)):
                if x.dtype.names != y.dtype.names:
                    return f"{ha.name}: other columns"
                for name in x.dtype.names:
                    if not _same_array(np.asarray(x[name]), np.asarray(y[name])):
                        return f"{ha.name}: column {name} differs"
            elif not _same_array(np.asarray(x), np.asarray(y)):
                return f"{ha.name}: values differ"
    return ""


def _same_array(x, y):
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "fc":
        return bool(np.all((x == y) | (np.isnan(x) & np.isnan(y))))
    return bool(np.all(x == y))


def same_tree(a, b):
    """Compare every file under folders `a` and `b`: FITS by their data, other files
    byte for byte (lines with a date or the software version left out of text files).
    Returns (files compared, list of 'name: why' that differ)."""
    names = set()
    for top in (a, b):
        for root, _, files in os.walk(top):
            names |= {os.path.relpath(os.path.join(root, f), top) for f in files}
    diffs = []
    for name in sorted(names):
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            diffs.append(f"{name}: in one run only")
            continue
        if name.endswith((".fits", ".fits.gz")):
            why = _same_fits(pa, pb)
        else:
            with open(pa, "rb") as fa, open(pb, "rb") as fb:
                da, db = fa.read(), fb.read()
            why = "" if da == db else "bytes differ"
            if why and not name.endswith(".png"):
                def keep(data):
                    return [line for line in data.decode(errors="replace").splitlines()
                            if not any(k in line.lower() for k in ("date", "version", "time"))]
                why = "" if keep(da) == keep(db) else "text differs"
        if why:
            diffs.append(f"{name}: {why}")
    return len(names), diffs


def part_a(args, top, env):
    folder = os.path.join(top, "A")
    asns = make_asns(folder, args.asns, args.asn_size, args.seed)
    coron3 = tool("coron3")
    rows, runs = [], {}
    for workers in args.workers:
        walls = []
        for k in range(args.repeat):
            out = os.path.join(folder, f"out_w{workers}")
            shutil.rmtree(out, ignore_errors=True)
            progress(f"A: coron3 batch, {args.asns} associations, --workers {workers} "
                     f"(run {k + 1}/{args.repeat})")
            r = run_tree([coron3, "batch", asns, "--outdir", out, "--workers", str(workers),
                          "--json", "-q"], env=env)
            if r["rc"] != 0:
                progress(f"A: coron3 batch failed (exit {r['rc']}): {r['stderr'][-800:]}")
            walls.append(r["wall"])
            runs.setdefault(workers, []).append(r)
        try:
            summary = json.loads(runs[workers][-1]["stdout"])
            ok = sum(a.get("status") == "ok" for a in summary.get("asns", summary.get("results", [])))
        except (ValueError, AttributeError):
            ok = None
        rows.append({"workers": workers, "wall": statistics.median(walls), "walls": walls,
                     "ok": ok, "rc": runs[workers][-1]["rc"],
                     "client": max(r["client"] or 0 for r in runs[workers]),
                     "worker_peaks": max((r["workers"] for r in runs[workers]), key=len),
                     "own": statistics.median(r["own_cpus"] for r in runs[workers]),
                     "other": statistics.median(r["other_cpus"] or 0.0 for r in runs[workers])})
    same = None
    if len(args.workers) >= 2:
        a, b = (os.path.join(folder, f"out_w{w}") for w in args.workers[:2])
        same = same_tree(a, b)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "same": same, "asns": args.asns, "size": args.asn_size}


def print_part_a(res):
    base = res["rows"][0]["wall"]
    print(f"\nA. coron3 batch: {res['asns']} simulated '{res['size']}' associations "
          "(coron3 run's defaults)")
    head = ("workers", "seconds", "runs", "speed-up", "ok", "client MB", "worker peak MB",
            "own CPUs", "other CPUs")
    lines = []
    for r in res["rows"]:
        wk = ", ".join(f"{x / MB:.0f}" for x in r["worker_peaks"]) or "-"
        lines.append((str(r["workers"]), f"{r['wall']:.1f}",
                      " ".join(f"{w:.1f}" for w in r["walls"]),
                      f"{base / r['wall']:.2f}x", f"{r['ok']}/{res['asns']}"
                      if r["ok"] is not None else f"exit {r['rc']}",
                      f"{r['client'] / MB:.0f}", wk, f"{r['own']:.2f}", f"{r['other']:.2f}"))
    _table(head, lines)
    print("seconds: wall time of the whole coron3 batch process; own CPUs: CPU seconds of "
          "coron3 batch and its workers per second; other CPUs: those of every other process "
          "on the machine meanwhile (/proc/stat), which the runs had to share the 2 CPUs with")
    if res["same"] is not None:
        n, diffs = res["same"]
        print(f"products of the first two runs: {n} files compared, "
              + ("all identical" if not diffs else f"{len(diffs)} differ: "
                 + "; ".join(diffs[:5])))


def _table(head, rows):
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print("  ".join(h.ljust(n) for h, n in zip(head, w)))
    print("  ".join("-" * n for n in w))
    for row in rows:
        print("  ".join(str(x).ljust(n) for x, n in zip(row, w)))
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# part B: coron-select
# ---------------------------------------------------------------------------
def _selection_seconds(stderr):
    for line in stderr.splitlines():
        if "selection done in" in line:
            try:
                return float(line.rsplit("in", 1)[1].split()[0])
            except (ValueError, IndexError):
                pass
    return None


def compare_scores(a, b):
    """Two _refscores.ecsv tables: (same ranking: file, integration, science, rank and
    selected equal row by row; largest |score difference|)."""
    from astropy.table import Table

    ta, tb = Table.read(a), Table.read(b)
    if len(ta) != len(tb):
        return False, None
    same = all(list(ta[c]) == list(tb[c]) for c in ("file", "integration", "science", "rank",
                                                    "selected"))
    return same, float(np.max(np.abs(np.asarray(ta["score"]) - np.asarray(tb["score"]))))


def part_b_runs(args, folder, science, env):
    """coron-select on the library in `folder` with each number of workers."""
    select = tool("coron-select")
    library = os.path.join(folder, "library")
    lib_files = [os.path.join(library, f) for f in sorted(os.listdir(library))]
    runs = []
    for workers in args.workers:
        out = os.path.join(folder, f"out_w{workers}")
        os.makedirs(out, exist_ok=True)
        cold = False if args.warm else evict(lib_files + science)
        progress(f"B: coron-select, {args.workers_label(workers)}, "
                 f"{'files evicted from the page cache' if cold else 'page cache as it is'}")
        r = run_tree([select, *science, "-L", library, "--workers", str(workers),
                      "--top", "20", "-o", os.path.join(out, "sel_asn.json"), "-v"], env=env)
        if r["rc"] != 0:
            progress(f"B: coron-select failed (exit {r['rc']}): {r['stderr'][-800:]}")
        r.update(nworkers=workers, cold=cold, selection=_selection_seconds(r["stderr"]),
                 table=os.path.join(out, "sel_refscores.ecsv"))
        runs.append(r)
    same = None
    ok = [r for r in runs if r["rc"] == 0]
    if len(ok) >= 2:
        same = compare_scores(ok[0]["table"], ok[1]["table"])
    return runs, same


def print_part_b(results):
    print("\nB. coron-select on libraries of 320x320 frames (calints files of 20 integrations; "
          "2 science exposures; ranking library x science)")
    head = ("frames", "files GB", "workers", "wall s", "selection s", "frames/s", "client MB",
            "worker peak MB", "cache", "own CPUs", "other CPUs", "same ranking 1 vs 2")
    rows = []
    for res in results:
        for r in res["runs"]:
            same = "-"
            if res["same"] is not None and r is res["runs"][-1]:
                same = ("yes" if res["same"][0] else "NO") + f" (max |d score| {res['same'][1]:.1e})"
            rows.append((f"{res['frames']:,}", f"{res['bytes'] / 1e9:.2f}", str(r["nworkers"]),
                         f"{r['wall']:.1f}" if r["rc"] == 0 else f"exit {r['rc']}",
                         f"{r['selection']:.1f}" if r["selection"] else "-",
                         f"{res['frames'] / r['wall']:.0f}",
                         f"{(r['client'] or 0) / MB:.0f}",
                         ", ".join(f"{x / MB:.0f}" for x in r["workers"]) or "-",
                         "cold" if r["cold"] else "warm", f"{r['own_cpus']:.2f}",
                         f"{r['other_cpus'] or 0.0:.2f}", same))
    _table(head, rows)
    print("wall s: the whole coron-select process (start, imports, cluster, headers, reading "
          "every file, scores, writing); selection s: its own timer (after the imports); "
          "MB: peak RSS (VmHWM); cold: the library's files were dropped from the page cache "
          "before the run (posix_fadvise), so it read them from the disk; own / other CPUs: "
          "as in A")


# ---------------------------------------------------------------------------
# part C: pyKLIP's PSFLibrary
# ---------------------------------------------------------------------------
def ensure_pyklip_venv(venv, base_python):
    """The python of `venv` with pyklip installed (made and installed when needed).
    Returns (python, version, seconds spent installing); RuntimeError saying what failed."""
    py = os.path.join(venv, "bin", "python")
    spent = 0.0
    if not os.path.exists(py):
        progress(f"C: creating {venv} ({base_python} -m venv)")
        r = subprocess.run([base_python, "-m", "venv", venv], capture_output=True, text=True,
                           check=False)
        if r.returncode:
            raise RuntimeError(f"python -m venv {venv} failed: {r.stderr.strip()[-300:]}")
        with open(os.path.join(venv, ".gitignore"), "w") as fh:   # never committed
            fh.write("*\n")

    def version():
        r = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('pyklip'))"],
                           capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    have = version()
    if have is None:
        progress(f"C: pip install pyklip into {venv}")
        spent = bench.pip_install(py, "pyklip")
        have = version()
        if have is None:
            raise RuntimeError("pyklip installed but does not import")
    return py, have, spent


def pyklip_runner(spec_path):
    """Run by the pyKLIP environment's python: read the library and the science, align
    them with pyklip.klip.align_and_scale onto the science star, keep the pixels of
    coron's region (the others NaN: PSFLibrary correlates the pixels finite in both
    frames), time the correlation of pairs on a small sub-library (the rate), then
    PSFLibrary(..., compute_correlation=True) on the whole library plus the science
    means (as pyKLIP's RDI wants them: one library holding both). Prints one JSON line
    per phase; saves the science rows of the matrix."""
    from astropy.io import fits
    from pyklip import klip
    from pyklip.rdi import PSFLibrary

    with open(spec_path) as fh:
        spec = json.load(fh)
    target = spec["target"]

    def say(**kw):
        print(json.dumps(kw), flush=True)

    def frames(path):
        with fits.open(path, memmap=False) as h:
            sci = h["SCI"].data.astype(np.float64)
            dq = h["DQ"].data.astype(np.uint32)
            star = (float(h["SCI"].header["STARCENX"]), float(h["SCI"].header["STARCENY"]))
        sci[(dq & np.uint32(spec["bad_bits"])) != 0] = np.nan
        return sci, star

    t0 = time.perf_counter()
    region = np.load(spec["region"])
    lib, names = [], []
    for path in spec["library"]:
        sci, star = frames(path)
        for k, f in enumerate(sci):
            lib.append(klip.align_and_scale(f, target, star))
            names.append(f"{os.path.basename(path)}[{k}]")
    means = []
    for path in spec["science"]:
        sci, star = frames(path)
        means.append(np.nanmean([klip.align_and_scale(f, target, star) for f in sci], axis=0))
    data = np.array(lib + means)
    del lib
    data[:, ~region] = np.nan
    names += [os.path.basename(p) for p in spec["science"]]
    say(phase="read+align", seconds=time.perf_counter() - t0, frames=len(data))
    n = min(spec["rate_frames"], len(data))
    t0 = time.perf_counter()
    PSFLibrary(data[:n], target, names[:n], compute_correlation=True)
    dt = time.perf_counter() - t0
    say(phase="rate", seconds=dt, frames=n, per_pair=dt / (n * (n - 1) / 2))
    t0 = time.perf_counter()
    library = PSFLibrary(data, target, names, compute_correlation=True)
    say(phase="correlation", seconds=time.perf_counter() - t0, frames=len(data))
    nsci = len(spec["science"])
    np.save(spec["out"], library.master_correlation[-nsci:, :-nsci])


def part_c(args, folder, science, coron_runs, env):
    """pyKLIP's PSFLibrary on the library in `folder` (its first args.pyklip_frames
    frames), in its own environment, with a timeout."""
    from astropy.io import fits

    from coron_cli.core.select import largest_radius, region_mask
    from coron_cli.products import star_center

    res = {"frames": None, "error": None}
    try:
        py, version, spent = ensure_pyklip_venv(os.path.abspath(args.pyklip_venv), args.base_python)
        res.update(version=version, install_s=spent)
    except RuntimeError as exc:
        res["error"] = str(exc)
        progress(f"C: pyKLIP unavailable, skipped: {exc}")
        return res
    library = os.path.join(folder, "library")
    files = [os.path.join(library, f) for f in sorted(os.listdir(library))]
    take, n = [], 0
    for path in files:
        if n >= args.pyklip_frames:
            break
        take.append(path)
        n += fits.getval(path, "NAXIS3", "SCI")
    with fits.open(science[0]) as h:
        shape = h["SCI"].data.shape[-2:]
        target = star_center(h["SCI"].header, shape, h[0].header)[0]
    region = region_mask(shape, target, 8.0, largest_radius(shape, target))
    np.save(os.path.join(folder, "region.npy"), region)
    spec = {"library": take, "science": science, "target": list(target), "bad_bits": 1,
            "region": os.path.join(folder, "region.npy"), "rate_frames": args.pyklip_rate_frames,
            "out": os.path.join(folder, "pyklip_science_rows.npy")}
    with open(os.path.join(folder, "pyklip_spec.json"), "w") as fh:
        json.dump(spec, fh)
    progress(f"C: pyKLIP PSFLibrary on {n} frames + {len(science)} science means "
             f"(timeout {args.pyklip_timeout:.0f} s)")
    if not args.warm:
        evict(take + science)
    r = run_tree([py, os.path.abspath(__file__), "--pyklip-runner",
                  os.path.join(folder, "pyklip_spec.json")], env=env, timeout=args.pyklip_timeout)
    phases = {}
    for line in r["stdout"].splitlines():
        try:
            d = json.loads(line)
            phases[d["phase"]] = d
        except (ValueError, KeyError, TypeError):
            pass
    res.update(frames=n, nsci=len(science), wall=r["wall"], rc=r["rc"], timed_out=r["timed_out"],
               peak=r["client"], phases=phases, timeout=args.pyklip_timeout,
               stderr=r["stderr"][-600:], load=r["load"], other=r["other_cpus"])
    if "correlation" in phases and os.path.exists(spec["out"]):
        res["agreement"] = _agreement(np.load(spec["out"]), coron_runs, take, n)
    return res


def _agreement(rows, coron_runs, files, n):
    """pyKLIP's science rows against coron's scores of the same frames: the best 20 of each
    science exposure in common, and the Spearman correlation of the two rankings."""
    from astropy.table import Table

    ok = [r for r in coron_runs if r["rc"] == 0]
    if not ok:
        return None
    t = Table.read(ok[0]["table"])
    names = {os.path.basename(f) for f in files}
    out = []
    for j, sci in enumerate(sorted(set(t["science"]), key=list(t["science"]).index)):
        sub = t[(t["science"] == sci)]
        keep = np.array([os.path.basename(f) in names for f in sub["file"]])
        sub = sub[keep]
        order = np.lexsort((np.asarray(sub["integration"]),
                            np.array([os.path.basename(f) for f in sub["file"]])))
        coron = np.asarray(sub["score"])[order]
        pk = rows[j][: len(coron)]
        if len(coron) != len(pk):
            return None
        top_c = set(np.argsort(-coron, kind="stable")[:20])
        top_p = set(np.argsort(-pk, kind="stable")[:20])
        rc = np.argsort(np.argsort(-coron, kind="stable"))
        rp = np.argsort(np.argsort(-pk, kind="stable"))
        spearman = float(np.corrcoef(rc, rp)[0, 1])
        out.append({"science": os.path.basename(sci), "top20_common": len(top_c & top_p),
                    "spearman": spearman, "max_abs_diff": float(np.max(np.abs(coron - pk)))})
    return out


def print_part_c(res, coron_by_size, sizes):
    print("\nC. pyKLIP's PSFLibrary (rdi.PSFLibrary, compute_correlation=True) next to "
          "coron-select")
    if res.get("error"):
        print(f"skipped: {res['error']}")
        return
    n, nsci = res["frames"], res["nsci"]
    ph = res["phases"]
    rate = ph.get("rate", {}).get("per_pair")
    print(f"pyklip {res['version']} in its own environment; {n} library frames + {nsci} "
          f"science means aligned with pyklip.klip.align_and_scale, the pixels outside "
          f"coron's region set NaN; peak RSS {(res['peak'] or 0) / MB:.0f} MB; "
          f"other CPUs meanwhile {res['other'] or 0.0:.2f}")
    if rate:
        print(f"correlation rate measured on {ph['rate']['frames']} frames: "
              f"{rate * 1e3:.2f} ms per pair of frames")
    head = ("frames", "what is computed", "coron-select 1 worker s", "coron-select 2 workers s",
            "pyKLIP read+align s", "pyKLIP correlation s", "pyKLIP memory (library cube)")
    rows = []
    for size in sizes:
        c = coron_by_size.get(size, {})
        total = size + nsci
        pairs = total * (total - 1) / 2
        if size == n and "correlation" in ph:
            corr = f"{ph['correlation']['seconds']:.1f} (measured)"
        elif size == n and res["timed_out"]:
            extra = f"; ~{pairs * rate:.0f} extrapolated" if rate else ""
            corr = f"did not finish in {res['timeout']:.0f}{extra}"
        elif rate:
            corr = f"~{pairs * rate:,.0f} (extrapolated)"
        else:
            corr = "-"
        align = (f"{ph['read+align']['seconds']:.1f}" if size == n and "read+align" in ph
                 else "-")
        mem = size * 320 * 320 * 8 + total * total * 8
        rows.append((f"{size:,}", f"coron: {size:,} x {nsci}; pyKLIP: {total:,} x {total:,}",
                     c.get(1, "-"), c.get(2, "-"), align, corr,
                     f"{mem / GB:.2f} GiB" + ("" if size == n else " (computed)")))
    _table(head, rows)
    agree = res.get("agreement")
    if agree:
        for a in agree:
            print(f"{a['science']}: pyKLIP's row vs coron's scores of the same {n} frames: "
                  f"{a['top20_common']}/20 of the best 20 in common, Spearman {a['spearman']:.4f}, "
                  f"max |difference| {a['max_abs_diff']:.1e} (pyKLIP leaves out the pixels NaN "
                  "in either frame, coron counts them as the mean)")
    print("coron-select's seconds are whole runs (reading included); pyKLIP's correlation "
          "seconds exclude its reading and alignment. coron ranks library x science "
          "(n_science columns); pyKLIP's PSFLibrary correlates library x library, "
          "science included (N x N, a Python double loop over pairs), which a library "
          "reused for many targets pays once.")


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def _ints(text):
    try:
        out = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be positive")
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~1 min): A on 4 small associations, B on 200 frames, "
                         "C on 60 frames (only when the pyKLIP environment exists already)")
    ap.add_argument("--parts", default="A,B,C", help="which parts to run [A,B,C]")
    ap.add_argument("--asns", type=int, default=None, help="A: associations [16; quick 4]")
    ap.add_argument("--asn-size", default=None, choices=("small", "medium", "large"),
                    help="A: simulation size [medium; quick small]")
    ap.add_argument("--repeat", type=int, default=1,
                    help="A: runs per worker count; the median is printed [1]")
    ap.add_argument("--workers", type=_ints, default=[1, 2],
                    help="worker counts of A and B [1,2]; the first two are compared")
    ap.add_argument("--library-sizes", type=_ints, default=None,
                    help="B: library frames [500,2000,10000; quick 200]")
    ap.add_argument("--per-file", type=int, default=20, help="B: integrations a file [20]")
    ap.add_argument("--warm", action="store_true",
                    help="B, C: leave the page cache as it is (default: the library's files "
                         "are dropped from it before each run, so reading means the disk)")
    ap.add_argument("--pyklip-frames", type=int, default=None,
                    help="C: library frames given to pyKLIP [500; quick 60]")
    ap.add_argument("--pyklip-rate-frames", type=int, default=60,
                    help="C: frames of the sub-library the per-pair rate is measured on [60]")
    ap.add_argument("--pyklip-timeout", type=float, default=900.0,
                    help="C: seconds before pyKLIP is stopped [900]")
    ap.add_argument("--pyklip-venv", default=os.path.join(HERE, ".venv-pyklip"),
                    help="C: pyKLIP's environment [benchmarks/.venv-pyklip]")
    ap.add_argument("--base-python", default="python3",
                    help="C: the python the pyKLIP environment is made with [python3]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="where inputs and products go [a temporary folder, removed]")
    ap.add_argument("--keep", action="store_true", help="keep the inputs and products")
    ap.add_argument("--json", default=None, metavar="FILE", help="write every number here")
    ap.add_argument("--pyklip-runner", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.parts = {p.strip().upper() for p in args.parts.split(",") if p.strip()}
    args.asns = args.asns or (4 if args.quick else 16)
    args.asn_size = args.asn_size or ("small" if args.quick else "medium")
    args.library_sizes = args.library_sizes or ([200] if args.quick else [500, 2000, 10000])
    args.pyklip_frames = args.pyklip_frames or (60 if args.quick else 500)
    if args.quick:
        args.pyklip_rate_frames = min(args.pyklip_rate_frames, 30)
    args.workers_label = lambda w: f"--workers {w}"
    return args


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def main(argv=None):
    args = parse_args(argv)
    if args.pyklip_runner:
        pyklip_runner(args.pyklip_runner)
        return
    env = child_env()
    rows = bench.machine_rows()
    la = os.getloadavg()
    rows.append(("load average at the start", (f"{la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} "
                                               f"(1, 5, 15 min) on {os.cpu_count()} CPUs")))
    bench.print_machine(rows)
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "argv": sys.argv[1:], "machine": dict(rows)}
    top = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="coron_scale_"))
    os.makedirs(top, exist_ok=True)
    try:
        if "A" in args.parts:
            res = part_a(args, top, env)
            result["A"] = res
            print_part_a(res)
        if "B" in args.parts or "C" in args.parts:
            basis = _basis(args.seed)
            sizes = sorted(set(args.library_sizes if "B" in args.parts else []))
            if "C" in args.parts and not any(s >= args.pyklip_frames for s in sizes):
                sizes.append(args.pyklip_frames)    # C: on the first pyklip_frames of one
            results, coron_by_size, c_res = [], {}, None
            if "C" in args.parts and args.quick and not os.path.exists(
                    os.path.join(args.pyklip_venv, "bin", "python")):
                c_res = {"error": "--quick does not make the pyKLIP environment (a full run "
                                  "does)"}
            for size in sizes:
                need = size * 320 * 320 * 12 * 1.02
                if free_bytes(top) < need + 2 * GB:
                    progress(f"B: {size} frames need {need / GB:.1f} GiB, "
                             f"{free_bytes(top) / GB:.1f} GiB free: skipped")
                    results.append({"frames": size, "bytes": 0, "runs": [], "same": None,
                                    "skipped": "not enough disk space"})
                    continue
                folder = os.path.join(top, f"B{size}")
                progress(f"B: writing a library of {size} frames of 320x320 in {folder}")
                t0 = time.perf_counter()
                science, lib, nbytes = write_library(folder, size, args.per_file, args.seed, basis)
                progress(f"B: {len(lib)} files, {nbytes / 1e9:.2f} GB in "
                         f"{time.perf_counter() - t0:.0f} s")
                runs, same = [], None
                if "B" in args.parts and size in args.library_sizes:
                    runs, same = part_b_runs(args, folder, science, env)
                    res = {"frames": size, "bytes": nbytes, "runs": runs, "same": same}
                    results.append(res)
                    coron_by_size[size] = {r["nworkers"]: f"{r['wall']:.1f}" for r in runs
                                           if r["rc"] == 0}
                if "C" in args.parts and size >= args.pyklip_frames and c_res is None:
                    c_res = part_c(args, folder, science, runs, env)
                if not args.keep:
                    shutil.rmtree(folder, ignore_errors=True)
            for res in results:
                for r in res["runs"]:
                    r.pop("stdout", None)
            result["B"] = results
            if results:
                print_part_b([r for r in results if r["runs"]])
            if "C" in args.parts:
                result["C"] = c_res
                print_part_c(c_res or {"error": "not run"}, coron_by_size,
                             sorted(set(args.library_sizes) | {args.pyklip_frames}))
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    bench.finish_report(result, args.json,
                        " (other jobs share this machine: compare with the start)")


if __name__ == "__main__":
    main()
