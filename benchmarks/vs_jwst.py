#!/usr/bin/env python
"""coron against the JWST pipeline's coron3 steps: seconds and peak memory, same files.

Run as ``.venv/bin/python benchmarks/vs_jwst.py [--quick] [--config 160x10x50 ...]
[--repeat 3] [--resample] [--json FILE]`` (``make bench-jwst``); see benchmarks/README.md.

For every configuration (pixels x science integrations x reference slices) it writes
the simulated exposures and their association with ``bench.write_dataset``, then, in
interleaved rounds:

* the JWST stage's ``stack_refs``, ``align_refs`` and ``klip`` (and ``resample`` with
  ``--resample``), offline, products written as the stage writes them: the separate
  script ``_jwst_runner.py`` run by the python of a virtual environment of its own
  (``benchmarks/.venv-jwst``, ``pip install jwst==3.0.0``, made on first use);
* ``coron3 run`` (the project environment's console script, default settings, every
  product written);
* coron's single tools chained through files: ``coron-stack``, ``coron-align`` and
  ``coron-klip`` per science exposure, ``coron-combine``, ``coron-hlsp``.

It prints the machine, one table per configuration (seconds and peak RSS per step,
ratios coron/JWST), the chain against ``coron3 run``, the peak RSS against the largest
product, and the load other processes put on the machine meanwhile. ``--json FILE``
keeps every number. It is not a test and exits 0 unless it crashes.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUNNER = os.path.join(HERE, "_jwst_runner.py")
JWST_PIN = "jwst==3.0.0"
DEFAULT_VENV = os.path.join(HERE, ".venv-jwst")
DEFAULT_CONFIGS = ("160x10x50", "320x10x200")
QUICK_CONFIGS = ("64x3x20",)
ASN_ID = "c1001"
MB = 2.0 ** 20
# coron step <-> the JWST step it matches (None: no counterpart in the JWST run)
MATCH = (("stack", "stack_refs"), ("align", "align_refs"), ("klip", "klip"),
         ("combine", "resample"), ("hlsp", None))
_T0 = time.perf_counter()

# benchmarks/bench.py: the inputs, measuring a process, the machine
sys.path.insert(0, HERE)
import bench


def progress(msg):
    print(f"[vs_jwst {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# the two environments
# ---------------------------------------------------------------------------
def coron_tool(bindir, name):
    path = os.path.join(bindir, name)
    if not os.path.exists(path):
        raise SystemExit(f"vs_jwst: {path} not found (make install, or --coron-bin DIR)")
    return path


def default_coron_bin():
    """The project venv's bin folder: this interpreter's when it holds coron3."""
    here = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(here, "coron3")):
        return here
    return os.path.join(ROOT, ".venv", "bin")


def ensure_jwst_venv(venv, pin, base_python):
    """The JWST environment's python, the venv made and `pin` installed when needed.

    Returns (python path, jwst version, seconds spent installing) or raises
    RuntimeError saying what failed.
    """
    py = os.path.join(venv, "bin", "python")
    wanted = pin.split("==", 1)[1] if "==" in pin else None
    spent = 0.0
    if not os.path.exists(py):
        progress(f"creating the JWST environment {venv} ({base_python} -m venv)")
        r = subprocess.run([base_python, "-m", "venv", venv], capture_output=True, text=True, check=False)
        if r.returncode:
            raise RuntimeError(f"python -m venv {venv} failed: {r.stderr.strip()[-300:]}")

    def version():
        r = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('jwst'))"],
                           capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    have = version()
    if have is None or (wanted and have != wanted):
        progress(f"pip install {pin} into {venv} (about a minute)")
        spent = bench.pip_install(py, pin)
        have = version()
        progress(f"installed jwst {have} in {spent:.0f} s")
    return py, have, spent


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------
def parse_config(text):
    try:
        n, nint, nref = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NPIXxNINTxNREF, e.g. 160x10x50")
    if min(n, nint, nref) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be positive")
    return n, nint, nref


def write_inputs(folder, n, nint, nref, seed):
    """bench.write_dataset in a child process (so that this process stays small and
    the memory figures of the children are not polluted); adds the association's
    `asn_pool`, which the JWST pipeline's association loader requires."""
    spec = json.dumps({"folder": folder, "n": n, "nint": nint, "nref": nref, "seed": seed})
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--write-dataset", spec],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"vs_jwst: writing the inputs failed:\n{r.stderr[-2000:]}")
    asn = os.path.join(folder, "bench_asn.json")
    with open(asn) as fh:
        table = json.load(fh)
    table.setdefault("asn_pool", "vs_jwst_simulated_pool")
    with open(asn, "w") as fh:
        json.dump(table, fh, indent=1)
    return asn, table


def _write_dataset_child(spec):
    import warnings

    warnings.simplefilter("ignore")
    s = json.loads(spec)
    bench.write_dataset(s["folder"], s["n"], s["nint"], s["nref"], s["seed"])


# ---------------------------------------------------------------------------
# one measured process
# ---------------------------------------------------------------------------
def measured(cmd, *, env=None, cwd=None):
    """Run cmd, sampling its RSS; returns bench.run_measured's dict plus the other
    processes' load meanwhile (CPUs) and the load average before and after."""
    meter = bench.LoadMeter()
    la0 = os.getloadavg()
    if cwd is not None:
        old = os.getcwd()
        os.chdir(cwd)
    try:
        r = bench.run_measured(cmd, sample=True, env=env)
    finally:
        if cwd is not None:
            os.chdir(old)
    other, own, steal = meter.stop()
    r.update(other_load=other, own_load=own, steal=steal, loadavg_before=la0,
             loadavg_after=os.getloadavg(), cmd=cmd)
    return r


def failure_text(r):
    return " | ".join(t for _, t in r["stderr"][-4:])[-600:]


def slim(r):
    """What of a measured run goes into the JSON."""
    return {"wall": r["wall"], "peak_rss": r["hwm"], "rc": r["rc"],
            "other_load": r["other_load"], "own_load": r["own_load"], "steal": r["steal"],
            "loadavg_before": r["loadavg_before"], "loadavg_after": r["loadavg_after"],
            "cmd": " ".join(r["cmd"]),
            "error": failure_text(r) if r["rc"] else None}


def product_sizes(folder):
    return {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
            if f.endswith(".fits")}


def run_jwst(asn, out, args, env):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    jfile = out + "_runner.json"
    cmd = [args.jwst_python, RUNNER, asn, "--outdir", out, "--json", jfile]
    if args.resample:
        cmd.append("--resample")
    r = measured(cmd, env=env)
    res = slim(r)
    if r["rc"] == 0:
        with open(jfile) as fh:
            inner = json.load(fh)
        res["runner"] = inner
        sec, peak = inner["seconds"], inner["peak_rss"]
        steps = {s: sec.get(s, 0.0) + sec.get(s + "_save", 0.0)
                 for s in ("stack_refs", "align_refs", "klip", "resample") if s in sec}
        res["steps"] = steps
        res["save"] = {s: sec.get(s + "_save", 0.0) for s in steps}
        res["step_peak"] = {s: max(peak.get(s, 0), peak.get(s + "_save", 0)) for s in steps}
        res["peak_rss"] = max(res["peak_rss"], inner["peak_rss_overall"])
        res["resample_s"] = sum(v for k, v in sec.items() if k.startswith("resample"))
        res["total"] = r["wall"] - res["resample_s"]
        res["open"] = sec.get("open", 0.0)
        res["import"] = sec.get("import", 0.0)
        res["products"] = product_sizes(out)
        res["status"] = inner["status"]
        os.remove(jfile)
    else:
        progress(f"JWST runner failed (rc {r['rc']}): {res['error']}")
    return res


def run_coron3(coron_bin, asn, out, env):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [coron_tool(coron_bin, "coron3"), "run", asn, "--outdir", out, "--json", "-v"]
    r = measured(cmd, env=env)
    res = slim(r)
    if r["rc"] == 0:
        summary = json.loads(r["stdout"])
        res["steps"] = summary["timings"]
        res["step_peak"] = bench.cli_step_peaks(r)
        res["total"] = r["wall"]
        res["products"] = product_sizes(out)
        res["log"] = [t for _, t in r["stderr"]]
    else:
        progress(f"coron3 run failed (rc {r['rc']}): {res['error']}")
    return res


def chain_commands(coron_bin, asn, table, out):
    """The single tools as a user chains them through files, with the JWST names."""
    prod = table["products"][0]
    name = prod["name"]
    base = os.path.dirname(asn)
    sci = [os.path.join(base, m["expname"]) for m in prod["members"]
           if m["exptype"] == "science"]
    stack = os.path.join(out, f"{name}_psfstack.fits")
    i2d = os.path.join(out, f"{name}_i2d.fits")

    def tool(name):
        return coron_tool(coron_bin, name)

    cmds = [("coron-stack", [tool("coron-stack"), "--asn", asn, "-o", stack])]
    subs = []
    for k, path in enumerate(sci, 1):
        root = os.path.basename(path).replace("_calints.fits", "")
        aligned = os.path.join(out, f"{root}_{ASN_ID}_psfalign.fits")
        sub = os.path.join(out, f"{root}_{ASN_ID}_psfsub.fits")
        subs.append(sub)
        cmds.append((f"coron-align sci{k}", [tool("coron-align"), path, stack, "--asn-id",
                                             ASN_ID, "-o", aligned]))
        # the other rolls as references, as coron3 run takes them from the association
        rolls = [a for other in sci if other != path for a in ("--roll-ref", other)]
        cmds.append((f"coron-klip sci{k}", [tool("coron-klip"), path, aligned, "-o", sub]
                     + rolls))
    cmds.append(("coron-combine", [tool("coron-combine")] + subs + ["-o", i2d]))
    cmds.append(("coron-hlsp", [tool("coron-hlsp"), i2d, "-o",
                                os.path.join(out, f"{name}_snr.fits"), "--contrast-output",
                                os.path.join(out, f"{name}_contrast.fits")]))
    return cmds


def run_chain(coron_bin, asn, table, out, env):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    res = {"tools": {}, "rc": 0}
    for label, cmd in chain_commands(coron_bin, asn, table, out):
        r = measured(cmd, env=env, cwd=out)
        res["tools"][label] = slim(r)
        if r["rc"]:
            res["rc"], res["error"] = r["rc"], f"{label}: {failure_text(r)}"
            progress(f"chain failed at {label} (rc {r['rc']}): {failure_text(r)}")
            return res
    tools = res["tools"].values()
    res["total"] = sum(t["wall"] for t in tools)
    res["peak_rss"] = max(t["peak_rss"] for t in tools)
    res["other_load"] = statistics.mean(t["other_load"] or 0.0 for t in tools)
    res["products"] = product_sizes(out)
    return res


def same_products(a, b, names):
    """Products of two coron runs compared value by value (SCI, ERR, DQ).

    Returns a list of {product, ext, differing (pixels), of (pixels), max_rel (largest
    absolute difference over the RMS of the first run's finite values)}, empty when
    they are identical.
    """
    import numpy as np
    from astropy.io import fits

    diffs = []
    for name in names:
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            diffs.append({"product": name, "ext": None, "missing": True})
            continue
        with fits.open(pa, memmap=False) as fa, fits.open(pb, memmap=False) as fb:
            for ext in ("SCI", "ERR", "DQ"):
                if ext not in fa or ext not in fb:
                    continue
                x, y = fa[ext].data, fb[ext].data
                if x is None and y is None:
                    continue
                if x is None or y is None or x.shape != y.shape:
                    diffs.append({"product": name, "ext": ext, "shape": True})
                    continue
                if x.dtype.kind == "f":
                    same = (x == y) | (np.isnan(x) & np.isnan(y))
                else:
                    same = x == y
                if same.all():
                    continue
                d = {"product": name, "ext": ext, "differing": int((~same).sum()),
                     "of": int(same.size)}
                if x.dtype.kind == "f":
                    both = np.isfinite(x) & np.isfinite(y)
                    rms = float(np.sqrt(np.mean(x[both].astype(np.float64) ** 2))) \
                        if both.any() else 0.0
                    dev = np.abs(x[both].astype(np.float64) - y[both]) if both.any() else [0.0]
                    d["max_rel"] = float(np.max(dev) / rms) if rms else None
                diffs.append(d)
    return diffs


def diff_text(d):
    if d.get("missing"):
        return f"{d['product']} missing"
    if d.get("shape"):
        return f"{d['product']}[{d['ext']}] shapes differ"
    rel = f", max |diff| {d['max_rel']:.1e} x RMS" if d.get("max_rel") is not None else ""
    return f"{d['product']}[{d['ext']}] {d['differing']} of {d['of']} values{rel}"


# ---------------------------------------------------------------------------
# statistics and printing
# ---------------------------------------------------------------------------
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rat(a, b):
    return None if a is None or not b else a / b


def summarize(runs):
    """Medians over the rounds of one configuration."""
    jw = [r["jwst"] for r in runs if r.get("jwst") and r["jwst"]["rc"] == 0]
    co = [r["coron3"] for r in runs if r["coron3"]["rc"] == 0]
    ch = [r["chain"] for r in runs if r.get("chain") and r["chain"]["rc"] == 0]
    s = {"n_jwst": len(jw), "n_coron3": len(co), "n_chain": len(ch), "steps": {}}
    for cs, js in MATCH:
        c = med(r["steps"].get(cs) for r in co)
        j = med(r["steps"].get(js) for r in jw) if js else None
        s["steps"][cs] = {"jwst_step": js, "coron_s": c, "jwst_s": j, "ratio": rat(c, j),
                          "coron_peak": med(r["step_peak"].get(cs) for r in co),
                          "jwst_peak": med(r["step_peak"].get(js) for r in jw) if js else None,
                          "jwst_save_s": med(r["save"].get(js) for r in jw) if js else None}
    c3 = med(sum(r["steps"].get(k, 0.0) for k in ("stack", "align", "klip")) for r in co)
    j3 = med(sum(r["steps"].get(k, 0.0) for k in ("stack_refs", "align_refs", "klip"))
             for r in jw)
    s["steps_1_3"] = {"coron_s": c3, "jwst_s": j3, "ratio": rat(c3, j3)}
    cw, jwall = med(r["total"] for r in co), med(r["total"] for r in jw)
    c_other = med(r["total"] - sum(r["steps"].values()) for r in co)
    j_other = med(r["total"] - sum(v for k, v in r["steps"].items() if k != "resample")
                  for r in jw)
    s["other"] = {"coron_s": c_other, "jwst_s": j_other,
                  "jwst_import_s": med(r["import"] for r in jw),
                  "jwst_open_s": med(r["open"] for r in jw)}
    s["total"] = {"coron_s": cw, "jwst_s": jwall, "ratio": rat(cw, jwall),
                  "coron_peak": med(r["peak_rss"] for r in co),
                  "jwst_peak": med(r["peak_rss"] for r in jw)}
    if ch:
        labels = list(ch[0]["tools"])
        s["chain"] = {"tools": {k: {"wall": med(r["tools"][k]["wall"] for r in ch),
                                    "peak": med(r["tools"][k]["peak_rss"] for r in ch)}
                                for k in labels},
                      "total": med(r["total"] for r in ch),
                      "peak": med(r["peak_rss"] for r in ch)}
        s["chain"]["ratio_to_coron3"] = rat(s["chain"]["total"], cw)
    if co:
        sizes = co[0]["products"]
        big = max(sizes, key=sizes.get)
        s["coron_largest"] = {"name": big, "bytes": sizes[big],
                              "all_bytes": sum(sizes.values())}
        s["coron_peak_over_largest"] = rat(s["total"]["coron_peak"], sizes[big])
        if ch:
            s["chain_peak_over_largest"] = rat(s["chain"]["peak"], sizes[big])
    if jw:
        sizes = jw[0]["products"]
        big = max(sizes, key=sizes.get)
        s["jwst_largest"] = {"name": big, "bytes": sizes[big], "all_bytes": sum(sizes.values())}
        s["jwst_peak_over_largest"] = rat(s["total"]["jwst_peak"], sizes[big])
        s["jwst_status"] = jw[0]["status"]
    return s


def f(x, digits=2):
    return bench.fmt(x, digits) if x is not None else "-"


def fmb(x):
    return "-" if x is None else f"{x / MB:.0f}"


def fratio(x):
    return "-" if x is None else f"{x:.2f}"


def load_cell(r):
    if not r or r.get("other_load") is None:
        return "-"
    mark = "!" if r["other_load"] > bench.CLEAN_LOAD else ""
    return f"{r['other_load']:.2f}{mark}"


def print_config(c):
    n, nint, nref = c["config"]
    s = c["summary"]
    nsci = 2
    head = (f"{n}x{n} px, {nsci} science exposures x {nint} integrations, {nref} reference "
            f"slices ({c['n_psf_exposures']} exposures); median of {s['n_coron3']} coron3 run, "
            f"{s['n_jwst']} JWST runs")
    rows = []
    names = {"stack": "stack / stack_refs", "align": f"align / align_refs (x{nsci})",
             "klip": f"klip / klip (x{nsci})", "combine": "combine / resample",
             "hlsp": "hlsp / -"}
    for cs, _ in MATCH:
        st = s["steps"][cs]
        if cs == "combine" and st["jwst_s"] is None:
            names[cs] = "combine / - (no --resample)"
        rows.append((names[cs], f(st["coron_s"]), f(st["jwst_s"]), f(st["jwst_save_s"]),
                     fratio(st["ratio"]), fmb(st["coron_peak"]), fmb(st["jwst_peak"])))
    o = s["other"]
    rows.append(("other: start-up, imports, ASN", f(o["coron_s"]), f(o["jwst_s"]), "",
                 "", "", ""))
    rows.append(("stack+align+klip", f(s["steps_1_3"]["coron_s"]), f(s["steps_1_3"]["jwst_s"]),
                 "", fratio(s["steps_1_3"]["ratio"]), "", ""))
    t = s["total"]
    rows.append(("whole process (wall)", f(t["coron_s"]), f(t["jwst_s"]), "",
                 fratio(t["ratio"]), fmb(t["coron_peak"]), fmb(t["jwst_peak"])))
    bench.table(head, ["step (coron / JWST)", "coron s", "JWST s", "of which save",
                       "coron/JWST", "coron MB", "JWST MB"], rows,
                note=("coron s: coron3 run's own step timings (read + compute + write, align "
                      "and klip summed over\nthe exposures); JWST s: the step and its "
                      "save_model; the JWST run reads the association\n"
                      f"(import {f(o['jwst_import_s'])} s, open {f(o['jwst_open_s'])} s) "
                      "before its steps (counted in 'other'). MB: peak RSS during the step\n"
                      "(coron: sampled every 20 ms; JWST: VmHWM reset per step). With --resample the "
                      "JWST whole\nprocess leaves out resample's seconds (and its set-up), "
                      "not its memory."))

    if "chain" in s:
        ch = s["chain"]
        rows = [(k, f(v["wall"]), fmb(v["peak"])) for k, v in ch["tools"].items()]
        rows.append(("chain total", f(ch["total"]), fmb(ch["peak"])))
        rows.append(("coron3 run", f(t["coron_s"]), fmb(t["coron_peak"])))
        rows.append(("chain / coron3 run", fratio(ch["ratio_to_coron3"]), "target <= 1.5"))
        bench.table(f"single tools chained through files ({n}px, {nref} refs; median of "
                    f"{s['n_chain']})", ["tool", "wall s", "peak MB"], rows)

    rows = []
    if "coron_largest" in s:
        big = s["coron_largest"]
        rows.append(("coron3 run", fmb(t["coron_peak"]), big["name"],
                     fmb(big["bytes"]), fratio(s["coron_peak_over_largest"]), "<= 1.5"))
        if "chain" in s:
            rows.append(("chained tools (max)", fmb(s["chain"]["peak"]), big["name"],
                         fmb(big["bytes"]), fratio(s.get("chain_peak_over_largest")),
                         "<= 1.5"))
    if "jwst_largest" in s:
        big = s["jwst_largest"]
        rows.append(("JWST steps", fmb(t["jwst_peak"]), big["name"], fmb(big["bytes"]),
                     fratio(s["jwst_peak_over_largest"]), ""))
    if rows:
        bench.table(f"peak RSS against the largest product ({n}px, {nref} refs)",
                    ["run", "peak MB", "largest product", "MB", "peak/largest", "target"], rows)

    rows = []
    for k, r in enumerate(c["runs"], 1):
        jw, co, chn = r.get("jwst"), r["coron3"], r.get("chain")
        rows.append((str(k), f(jw["wall"]) if jw else "-", load_cell(jw),
                     f(co["wall"]), load_cell(co),
                     f(chn.get("total")) if chn else "-", load_cell(chn),
                     f"{r['loadavg'][0]:.2f} / {r['loadavg'][1]:.2f}"))
    bench.table(f"every round ({n}px, {nref} refs)",
                ["round", "JWST s", "other CPUs", "coron3 s", "other CPUs", "chain s",
                 "other CPUs", "load avg 1 min start / end"], rows,
                note=("other CPUs: CPUs kept busy by other processes during that run "
                      "(/proc/stat minus this\nbenchmark and its children); '!' above "
                      f"{bench.CLEAN_LOAD}. Medians use every round."))
    if s.get("jwst_status"):
        bad = [k for k, v in s["jwst_status"].items()
               if any(x != "COMPLETE" for x in (v if isinstance(v, list) else [v]))]
        if bad:
            print(f"  JWST steps not COMPLETE: {', '.join(bad)} ({s['jwst_status']})")
    if c.get("chain_vs_coron3_diffs") is not None:
        d = c["chain_vs_coron3_diffs"]
        if not d:
            print("  chained tools vs coron3 run: identical products (SCI, ERR, DQ of the "
                  "psfstack, psfsubs, i2d, snr)")
        else:
            print("  chained tools vs coron3 run: products DIFFER:")
            for item in d:
                print(f"    {diff_text(item)}")
    sys.stdout.flush()


def machine(args, jwst_info):
    rows = bench.machine_rows()
    rows.append(("JWST environment", jwst_info))
    la = os.getloadavg()
    rows.append(("load average (1, 5, 15 min)",
                 f"{la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} at the start; {os.cpu_count()} CPUs"))
    return rows


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="coron3 run (and coron's chained tools) against the JWST pipeline's "
                    "coron3 steps on the same simulated files: seconds per step, peak RSS.",
        epilog="See benchmarks/README.md.")
    ap.add_argument("--config", action="append", type=parse_config, metavar="NPIXxNINTxNREF",
                    help="a configuration: pixels per side x integrations per science exposure "
                         "x reference slices; repeatable (default: "
                         + " and ".join(DEFAULT_CONFIGS) + ")")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ", ".join(QUICK_CONFIGS) + ", one round")
    ap.add_argument("--repeat", type=int, help="rounds per configuration; medians are "
                                               "printed (default 3, quick 1)")
    ap.add_argument("--resample", action="store_true",
                    help="also run the JWST resample step (reported on the combine row, "
                         "left out of the JWST total)")
    ap.add_argument("--no-chain", action="store_true", help="do not time the chained tools")
    ap.add_argument("--no-jwst", action="store_true", help="coron only (no JWST environment)")
    ap.add_argument("--json", metavar="FILE", help="write every number to FILE")
    ap.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    ap.add_argument("--threads", type=int,
                    help="set OPENBLAS/OMP/MKL_NUM_THREADS for every measured process")
    ap.add_argument("--workdir", help="folder for inputs and products (default: a temporary "
                                      "folder, removed at the end)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the inputs and the last round's products (in --workdir, "
                         "default benchmarks/vs_jwst_out)")
    ap.add_argument("--jwst-venv", default=DEFAULT_VENV,
                    help="the JWST virtual environment, made on first use (default "
                         "benchmarks/.venv-jwst)")
    ap.add_argument("--jwst-pin", default=JWST_PIN, help=f"what to install there ({JWST_PIN})")
    ap.add_argument("--jwst-base-python", default=getattr(sys, "_base_executable", None)
                    or sys.executable, help="interpreter that makes the JWST venv "
                                            "(Python >= 3.11)")
    ap.add_argument("--coron-bin", default=None,
                    help="folder of coron's console scripts (default: the project .venv/bin)")
    ap.add_argument("--write-dataset", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.config = args.config or [parse_config(c) for c in QUICK_CONFIGS]
        args.repeat = args.repeat or 1
    args.config = args.config or [parse_config(c) for c in DEFAULT_CONFIGS]
    args.repeat = max(1, args.repeat or 3)
    args.coron_bin = args.coron_bin or default_coron_bin()
    if args.keep and not args.workdir:
        args.workdir = os.path.join(HERE, "vs_jwst_out")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.write_dataset:
        _write_dataset_child(args.write_dataset)
        return
    if args.threads:  # here too, so that the machine table shows them
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[k] = str(args.threads)
    env = dict(os.environ)
    env.pop("CRDS_SERVER_URL", None)  # the runner sets up its own offline CRDS
    env.setdefault("NO_COLOR", "1")

    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "argv": sys.argv[1:], "repeat": args.repeat, "resample": args.resample,
              "configs": []}
    jwst_info = "not used (--no-jwst)"
    args.jwst_python = None
    if not args.no_jwst:
        try:
            args.jwst_python, version, spent = ensure_jwst_venv(
                os.path.abspath(args.jwst_venv), args.jwst_pin, args.jwst_base_python)
            jwst_info = f"jwst {version} in {os.path.relpath(args.jwst_venv)}"
            result["jwst"] = {"venv": os.path.abspath(args.jwst_venv), "version": version,
                              "install_s": spent}
        except RuntimeError as exc:
            jwst_info = f"unavailable: {exc}"
            progress(f"JWST environment unavailable, measuring coron only: {exc}")
            result["jwst"] = {"error": str(exc)}
    if args.jwst_python:
        code = ("import numpy as np; b = np.show_config(mode='dicts')['Build Dependencies']"
                "['blas']; print(np.__version__, b.get('name'), b.get('version'))")
        r = subprocess.run([args.jwst_python, "-c", code],
                           capture_output=True, text=True, check=False)
        jwst_info += f"; numpy {r.stdout.strip()}" if r.returncode == 0 else ""
    rows = machine(args, jwst_info)
    result["machine"] = dict(rows)
    bench.print_machine(rows)

    top = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="vs_jwst_"))
    os.makedirs(top, exist_ok=True)
    try:
        for n, nint, nref in args.config:
            folder = os.path.join(top, f"{n}x{nint}x{nref}")
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            progress(f"{n}x{nint}x{nref}: writing the inputs (bench.write_dataset)")
            asn, table = write_inputs(folder, n, nint, nref, args.seed)
            nexp = sum(m["exptype"] == "psf" for m in table["products"][0]["members"])
            c = {"config": [n, nint, nref], "n_psf_exposures": nexp, "folder": folder,
                 "input_bytes": sum(product_sizes(folder).values()), "runs": []}
            for k in range(args.repeat):
                last = k == args.repeat - 1
                rnd = {"loadavg": [os.getloadavg()[0], None]}
                if args.jwst_python:
                    progress(f"{n}x{nint}x{nref} round {k + 1}/{args.repeat}: JWST steps")
                    rnd["jwst"] = run_jwst(asn, os.path.join(folder, "jwst"), args, env)
                progress(f"{n}x{nint}x{nref} round {k + 1}/{args.repeat}: coron3 run")
                rnd["coron3"] = run_coron3(args.coron_bin, asn, os.path.join(folder, "coron3"),
                                           env)
                if not args.no_chain:
                    progress(f"{n}x{nint}x{nref} round {k + 1}/{args.repeat}: chained tools")
                    rnd["chain"] = run_chain(args.coron_bin, asn, table,
                                             os.path.join(folder, "chain"), env)
                    if k == 0 and rnd["chain"]["rc"] == 0 and rnd["coron3"]["rc"] == 0:
                        name = table["products"][0]["name"]
                        subs = [p for p in rnd["coron3"]["products"] if "_psfsub" in p]
                        c["chain_vs_coron3_diffs"] = same_products(
                            os.path.join(folder, "coron3"), os.path.join(folder, "chain"),
                            [f"{name}_psfstack.fits", *subs, f"{name}_i2d.fits",
                             f"{name}_snr.fits"])
                rnd["loadavg"][1] = os.getloadavg()[0]
                c["runs"].append(rnd)
                if not (args.keep and last):
                    for sub in ("jwst", "coron3", "chain"):
                        shutil.rmtree(os.path.join(folder, sub), ignore_errors=True)
            c["summary"] = summarize(c["runs"])
            result["configs"].append(c)
            print_config(c)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(top, ignore_errors=True)
    bench.finish_report(result, args.json)


if __name__ == "__main__":
    main()
