"""The panel: coron's defaults against plain KLIP and classical RDI on many data sets.

``python -m coron_cli.panel`` (``make panel``) runs, on every data set of the
panel — simulated observing set-ups x seeds, and the real JWST sets of
``--data`` with fake companions injected —

- coron's defaults: ``run_association(asn, outdir)`` with no options;
- plain KLIP (:data:`PLAIN`): what the JWST stage does, full frame, unweighted,
  all modes, no source protection, rigid Fourier registration;
- classical RDI: the scaled mean of the default run's aligned references
  subtracted, the exposures combined north-up;
- every ``--variant``: keyword overrides of ``run_association`` on top of the
  defaults, e.g. ``--variant weights=none --variant "zones=3,zone_sectors=4"``,

and prints per companion its separation and its SNR in the combined north-up
image by the aperture t-test of Mawet et al. 2014 at the known position (the
same measure for every method, :func:`coron_cli._harness.companion_snr`), the
ratios to plain KLIP, the registration error against the simulated truth, and
a summary. SPEC section 6: a default changes only when it wins on the panel as
a whole and loses more than 10 % nowhere.

Companions: a simulation's planets (truth ``xy_north_up`` from the i2d's
star); in a real set, fakes injected into copies of the science exposures
(:func:`coron_cli._harness.prepare_real_set`) and the known companions.
Progress goes to stderr, the tables to stdout; ``--json FILE`` keeps every
number. Products go to a temporary folder, removed as soon as a data set is
measured, unless ``--keep DIR``.
"""

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

from . import _harness as H

__all__ = ["PLAIN", "ROTATIONS", "MEASURABLE_SNR", "plain_options", "parse_value",
           "parse_variant", "sim_setups", "dataset_specs", "run_dataset", "summarize",
           "format_dataset", "format_summary", "run_panel", "main"]

#: Plain KLIP, what the JWST stage does: run_association keyword arguments.
#: ``truncate=None`` means all modes: set to (number of reference slices,) at
#: run time (:func:`plain_options`). Add a key here when a new option's default
#: departs from the stage (the panel and realcheck build plain KLIP from this
#: dict only).
PLAIN = dict(align_method="fourier", weights="none", protect=0, truncate=None, zones=1,
             zone_sectors=1, zone_width=None, zone_fit="self", sky_order=0,
             min_transmission=0.0, psfmask_weights=False, roll_refs=False)

#: seeds per simulated set-up in the default panel
_SEEDS = 5
#: injections of the fakes per real set (turned by 360 / ROTATIONS degrees each)
ROTATIONS = 3

_START = time.perf_counter()


def _progress(msg):
    print(f"[panel {time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def plain_options(asn_path):
    """:data:`PLAIN` for an association: the truncation set to its reference slices."""
    opts = dict(PLAIN)
    if opts.get("truncate") is None:
        opts["truncate"] = (H.reference_count(asn_path),)
    return opts


# ---------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------
def _split_top(text, sep=","):
    """Split on `sep` outside brackets and quotes."""
    out, depth, cur, quote = [], 0, "", None
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def parse_value(text):
    """A command-line value as Python: int, float, bool, None, tuple or str.

    ``3`` -> 3, ``0.5`` -> 0.5, ``None``/``null`` -> None (but ``none`` stays
    the string, as in ``weights=none``), ``true``/``false`` -> bool,
    ``(5,10)`` / ``[5,10]`` / ``5;10`` -> (5, 10) (elements parsed the same
    way), ``'3'`` (quoted) -> '3', anything else -> the string.
    """
    s = str(text).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    if len(s) >= 2 and s[0] + s[-1] in ("()", "[]"):
        inner = s[1:-1].strip()
        if not inner:
            return ()
        return tuple(parse_value(v) for v in _split_top(inner) if v.strip())
    if ";" in s:
        return tuple(parse_value(v) for v in s.split(";") if v.strip())
    if s in ("None", "null"):
        return None
    low = s.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(s)
        except ValueError:
            pass
    return s


def _run_keywords():
    """The flat option names of ``coron3 run`` (PipelineConfig.from_options), and the
    arrays run_association takes."""
    from .steps import PipelineConfig

    names = {k for opts in PipelineConfig.OPTIONS.values() for k in opts}
    return names | PipelineConfig.OTHER_OPTIONS | {"mask", "offaxis_psf"}


def parse_variant(text, *, allowed=None):
    """A ``--variant`` as (label, run_association overrides).

    Parameters
    ----------
    text : str
        ``key=value[,key=value...]``, optionally prefixed with ``label:``;
        values as :func:`parse_value` reads them (a tuple in brackets may
        hold commas: ``truncate=(5,10)``).
    allowed : set of str, optional
        Keywords accepted (default: the options of ``coron3 run``, as
        :meth:`coron_cli.steps.PipelineConfig.from_options` takes them).

    Returns
    -------
    label : str
        The prefix, else the text itself.
    options : dict

    Raises
    ------
    ValueError
        An item without ``=``, an empty key, or a keyword not accepted.
    """
    s = str(text).strip()
    label = s
    m = re.match(r"^([A-Za-z_][\w.+-]*):(.*)$", s)
    if m and "=" not in m.group(1):
        label, s = m.group(1), m.group(2)
    if not s.strip():
        raise ValueError(f"variant {text!r} is empty")
    allowed = _run_keywords() if allowed is None else set(allowed)
    out = {}
    for item in _split_top(s):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"variant {text!r}: {item.strip()!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise ValueError(f"variant {text!r}: empty key")
        if key not in allowed:
            raise ValueError(f"variant {text!r}: coron3 run has no option {key!r} "
                             f"(known: {', '.join(sorted(allowed))})")
        out[key] = parse_value(value)
    return label, out


# ---------------------------------------------------------------------------
# the data sets
# ---------------------------------------------------------------------------
def sim_setups():
    """Names of the simulator's observing set-ups, or [None] when it has none yet."""
    from . import simulate

    setups = getattr(simulate, "SETUPS", None)
    if not setups:
        return [None]
    return [str(n) for n in setups if str(n) != "random"]


def dataset_specs(*, sim=True, real=True, setups=None, seeds=None, size="medium",
                  data_dir=None, rotations=ROTATIONS):
    """The panel's data sets, in the order they are reported.

    Simulated: every set-up (default :func:`sim_setups`) x every seed
    (default 0-4; 0-11 while the simulator has no set-ups); real: every
    folder of `data_dir` with an association, `rotations` times, the fakes
    turned by ``360 / rotations`` degrees each time (the known companions
    are measured in the first only).

    Returns
    -------
    list of dict
        {'kind': 'sim', 'setup', 'seed', 'size', 'label', 'group'} or
        {'kind': 'real', 'name', 'asn', 'base_pa', 'known', 'label', 'group'};
        'group' is what the
        summary pools (a set-up over its seeds, or a real set).
    """
    specs = []
    if sim:
        setups = sim_setups() if setups is None else list(setups)
        if seeds is None:
            seeds = range(_SEEDS) if setups != [None] else range(12)
        for setup in setups:
            for seed in seeds:
                label = f"sim {size} {setup or 'default'} seed {seed}"
                specs.append({"kind": "sim", "setup": setup, "seed": int(seed), "size": size,
                              "label": label, "group": f"sim {setup or 'default'}"})
    if real:
        for name, asn in H.find_real_sets(data_dir):
            for k in range(max(1, int(rotations))):
                base = H.FAKE_BASE_PA + 360.0 * k / max(1, int(rotations))
                label = f"real {name}" + (f" fakes+{base - H.FAKE_BASE_PA:.0f}deg" if k else "")
                specs.append({"kind": "real", "name": name, "asn": asn, "base_pa": base,
                              "known": k == 0, "label": label, "group": f"real {name}"})
    return specs


def _safe(label):
    return re.sub(r"[^\w.-]+", "_", label).strip("_")


def _short_error(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _measure_i2d(i2d, companions, fwhm):
    from .products import star_center

    center, _ = star_center(i2d.sci_header, i2d.sci.shape)
    off = np.array([c["offset"] for c in companions], dtype=np.float64).reshape(-1, 2)
    avoid = [c.get("avoid", []) for c in companions]
    return H.companion_snr(np.asarray(i2d.sci, dtype=np.float64), center, off, fwhm,
                           avoid=avoid)


def run_dataset(spec, variants=(), workroot=None, keep=False):
    """Run and measure every method on one data set (a worker of :func:`run_panel`).

    Parameters
    ----------
    spec : dict
        One of :func:`dataset_specs`.
    variants : list of (label, dict)
    workroot : str
        Folder under which this data set's folder is made.
    keep : bool
        Keep the data set's folder (else it is removed when measured).

    Returns
    -------
    dict (JSON-able)
        The spec plus 'lod', 'companions' (name, kind, sep_lod, sep_pix, pa,
        'snr' per method), 'registration' per KLIP method, 'seconds' per
        method and 'total', 'errors' per method that failed, 'folder'.
    """
    with H.quiet():
        return _run_dataset(spec, variants, workroot, keep)


def _run_dataset(spec, variants, workroot, keep):
    from .products import read_product

    t_start = time.perf_counter()
    folder = os.path.join(workroot, _safe(spec["label"]))
    os.makedirs(folder, exist_ok=True)
    res = dict(spec, companions=[], registration={}, seconds={}, errors={}, folder=folder)
    try:
        truth = None
        if spec["kind"] == "sim":
            from .demo import write_simulation
            from .simulate import simulate_dataset

            t0 = time.perf_counter()
            kw = {} if spec["setup"] is None else {"setup": spec["setup"]}
            ds = simulate_dataset(spec["size"], seed=spec["seed"], **kw)
            data_dir = os.path.join(folder, "data")
            os.makedirs(data_dir, exist_ok=True)
            paths = write_simulation(ds, data_dir)
            truth = ds.truth
            del ds
            res["seconds"]["simulate"] = time.perf_counter() - t0
            asn = paths["asn"]
            lod = float(truth["lambda_over_d_pix"])
            companions = [{"name": f"p{k + 1}", "kind": "planet",
                           "sep_lod": float(p["sep_lod"]), "sep_pix": float(p["sep_pix"]),
                           "pa": float(p["pa_deg"]), "contrast": float(p["contrast"]),
                           "offset": [float(v) for v in p["xy_north_up"]]}
                          for k, p in enumerate(truth["planets"])]
            res["npix"] = int(truth.get("npix", 0))
            with open(asn) as fh:
                asn_id = json.load(fh).get("asn_id")
        else:
            t0 = time.perf_counter()
            plain0 = plain_options(spec["asn"])
            prep = H.prepare_real_set(spec["name"], spec["asn"], folder, plain0,
                                      base_pa=spec.get("base_pa", H.FAKE_BASE_PA))
            res["seconds"]["inject"] = time.perf_counter() - t0
            asn, lod, companions = prep["asn"], prep["lod"], prep["companions"]
            if not spec.get("known", True):
                companions = [c for c in companions if c["kind"] != "known"]
            res.update(wave_um=prep["wave_um"], scale=prep["scale"])
            asn_id = None
        res["lod"] = lod
        methods = [("coron", {}), ("plain", plain_options(asn))] + list(variants)
        snrs = {}
        for name, opts in methods:
            out = os.path.join(folder, _safe(name))
            try:
                run = H.run_pipeline(asn, out, opts)
                res["seconds"][name] = run["seconds"]
                snrs[name] = _measure_i2d(read_product(run["i2d"], ndims=(2,)), companions, lod)
                if truth is not None:
                    res["registration"][name] = H.registration_error(
                        out, truth, asn_id=asn_id)
                else:
                    res["registration"][name] = H.shift_stats(out)
            except Exception as exc:          # a failing method is reported, not fatal
                res["errors"][name] = _short_error(exc)
                snrs[name] = np.full(len(companions), np.nan)
            if name == "coron" and "coron" not in res["errors"]:
                t0 = time.perf_counter()
                try:
                    crdi = H.classical_rdi_i2d(asn, out)
                    snrs["crdi"] = _measure_i2d(crdi, companions, lod)
                except Exception as exc:
                    res["errors"]["crdi"] = _short_error(exc)
                    snrs["crdi"] = np.full(len(companions), np.nan)
                res["seconds"]["crdi"] = time.perf_counter() - t0
            elif name == "coron":
                res["errors"]["crdi"] = "needs the default run"
                snrs["crdi"] = np.full(len(companions), np.nan)
        for k, c in enumerate(companions):
            row = {key: c[key] for key in ("name", "kind", "sep_lod", "sep_pix", "pa",
                                            "contrast", "amplitude", "noise") if key in c}
            row["snr"] = {m: float(v[k]) for m, v in snrs.items()}
            res["companions"].append(row)
    except Exception as exc:
        res["errors"]["dataset"] = _short_error(exc)
    finally:
        res["seconds"]["total"] = time.perf_counter() - t_start
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
            res["folder"] = None
    return res


# ---------------------------------------------------------------------------
# summary and tables
# ---------------------------------------------------------------------------
def _ratio(m, p):
    if m is None or p is None or not (np.isfinite(m) and np.isfinite(p)) or p <= 0:
        return float("nan")
    return float(m / p)


def _groups(results):
    """Data-set groups (a set-up over its seeds, a real set) in order of first appearance."""
    out = []
    for res in results:
        g = res.get("group", res["label"])
        if g not in out:
            out.append(g)
    return out


#: a companion counts in the worst ratio, the counts and the sign test when either method
#: measures it at this SNR or more (below, the ratio of two noise draws says nothing)
MEASURABLE_SNR = 3.0


def _stats(results, method, ref):
    """Ratios of `method`'s SNR to `ref`'s over the companions, pooled and per group."""
    ratios, meas, groups = [], [], {}
    n_total = 0
    for res in results:
        rs = groups.setdefault(res.get("group", res["label"]), [])
        for c in res["companions"]:
            n_total += 1
            m, p = c["snr"].get(method), c["snr"].get(ref)
            r = _ratio(m, p)
            if np.isfinite(r):
                rs.append(r)
                ratios.append(r)
                if max(m, p) >= MEASURABLE_SNR:
                    meas.append(r)
    r, q = np.array(ratios), np.array(meas)
    up, down = int((q > 1).sum()), int((q < 1).sum())
    sign_p = float("nan")
    if up + down:
        from scipy.stats import binomtest

        sign_p = float(binomtest(up, up + down).pvalue)
    per_group = {g: float(np.median(v)) if v else float("nan") for g, v in groups.items()}
    done = {g: v for g, v in per_group.items() if np.isfinite(v)}
    worst = min(done.items(), key=lambda kv: kv[1]) if done else ("", float("nan"))
    return {"median": float(np.median(r)) if r.size else float("nan"),
            "n_ratio": int(r.size), "n_total": n_total,
            "n_measurable": int(q.size),
            "median_snr3": float(np.median(q)) if q.size else float("nan"),
            "worst": float(q.min()) if q.size else float("nan"),
            "n_below_0.9": int((q < 0.9).sum()),
            "n_up": up, "n_down": down, "sign_test_p": sign_p, "per_group": per_group,
            "worst_group": worst[0], "worst_group_median": worst[1]}


def summarize(results, methods):
    """Per method: ratios to plain KLIP, registration extremes; variants vs the defaults.

    Returns
    -------
    dict
        'vs_plain' {method: stats}, 'vs_coron' {variant: stats}, 'registration'
        {method: worst RMS, worst |err|, largest |shift| over the simulated sets}.
        Stats: the median ratio over all companions; over the measurable ones
        (SNR >= :data:`MEASURABLE_SNR` in either method) their number, median,
        worst ratio, count below 0.9, counts above and below 1 with the
        two-sided sign test's p-value; the median per group (a set-up over its
        seeds, a real set, all companions) and the worst group. A ratio needs
        a positive SNR of the reference method.
    """
    out = {"vs_plain": {}, "vs_coron": {}, "registration": {}}
    for m in methods:
        if m != "plain":
            out["vs_plain"][m] = _stats(results, m, "plain")
        if m not in ("coron", "plain", "crdi"):
            out["vs_coron"][m] = _stats(results, m, "coron")
        regs = [r["registration"][m] for r in results if m in r.get("registration", {})
                and r["kind"] == "sim"]
        if regs:
            def worst(key):
                v = [g[key] for g in regs if np.isfinite(g.get(key, np.nan))]
                return float(max(v)) if v else float("nan")

            out["registration"][m] = {"worst_rms_px": worst("rms_px"),
                                      "worst_err_px": worst("max_err_px"),
                                      "max_shift_px": worst("max_shift_px")}
    return out


def _f(v, fmt="6.2f"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        width = int(fmt.split(".")[0]) if fmt[0].isdigit() else 6
        return "n/a".rjust(width)
    return format(v, fmt)


def format_dataset(res, methods, short):
    """One data set's table (plain text)."""
    head = f"== {res['label']}"
    if "lod" in res:
        head += f"  (lambda/D = {res['lod']:.2f} px"
        if res["kind"] == "real":
            head += f", {res.get('wave_um', 0):.2f} um, {res.get('scale', 0):.4f}\"/px"
        head += ")"
    head += f"  {res['seconds'].get('total', 0):.1f} s"
    lines = [head]
    if "dataset" in res["errors"]:
        lines.append(f"   FAILED: {res['errors']['dataset']}")
        return "\n".join(lines)
    others = [m for m in methods if m != "plain"]
    cols = " ".join(f"{short[m]:>7}" for m in methods)
    rats = " ".join(f"{short[m] + '/pl':>8}" for m in others)
    lines.append(f"{'companion':<14} {'sep/lD':>6} {'sep/px':>6} {'PA':>6} | {cols} | {rats}")
    for c in res["companions"]:
        snr = c["snr"]
        vals = " ".join(_f(snr.get(m), "7.2f") for m in methods)
        rs = " ".join(_f(_ratio(snr.get(m), snr.get("plain")), "8.2f") for m in others)
        name = c["name"] + ("*" if c["kind"] == "known" else "")
        lines.append(f"{name:<14} {c['sep_lod']:6.2f} {c['sep_pix']:6.1f} {c['pa']:6.1f} | "
                     f"{vals} | {rs}")
    regs = res.get("registration", {})
    if regs:
        if res["kind"] == "sim":
            parts = [f"{short[m]} {_f(g.get('rms_px'), '.4f')}/{_f(g.get('max_err_px'), '.3f')}"
                     f"/{_f(g.get('max_shift_px'), '.3f')}" for m, g in regs.items()]
            lines.append("registration vs truth, RMS/max|err|/max|shift| px: " + ", ".join(parts))
        else:
            parts = [f"{short[m]} {_f(g.get('max_shift_px'), '.3f')}" for m, g in regs.items()]
            lines.append("largest |shift| px (no truth): " + ", ".join(parts))
        hows = {m: ", ".join(f"{k} {v}" for k, v in g.get("methods", {}).items())
                for m, g in regs.items()}
        if any(hows.values()):
            lines.append("registration pairs by method: " + "; ".join(
                f"{short[m]}: {h}" for m, h in hows.items() if h))
    secs = ", ".join(f"{short.get(k, k)} {v:.1f}" for k, v in res["seconds"].items()
                     if k != "total")
    lines.append(f"seconds: {secs}")
    for m, e in res["errors"].items():
        lines.append(f"   {m} FAILED: {e}")
    return "\n".join(lines)


def format_summary(summary, methods, short, legend, results, wall, jobs):
    """The summary tables (plain text)."""
    ncomp = sum(len(r["companions"]) for r in results)
    others = [m for m in methods if m != "plain"]
    lines = [f"== summary: {len(results)} data sets, {ncomp} companions; SNR ratio to plain "
             f"KLIP per companion (where plain's SNR > 0); 'measurable': SNR >= "
             f"{MEASURABLE_SNR:g} in either method",
             f"{'':<8} {'all':>6} | {'measurable companions':^41} | {'':>36} | "
             f"{'registration vs truth (px)':^34}",
             f"{'method':<8} {'median':>6} | {'n':>4} {'median':>6} {'worst':>6} {'n<0.9':>5} "
             f"{'>1/<1':>7} {'sign p':>8} | {'worst set-up (median, all)':>36} | "
             f"{'worst RMS':>9} {'max|err|':>8} {'max|shift|':>10}"]
    for m in methods:
        reg = summary["registration"].get(m, {})
        regtxt = (f"{_f(reg.get('worst_rms_px'), '9.4f')} {_f(reg.get('worst_err_px'), '8.3f')} "
                  f"{_f(reg.get('max_shift_px'), '10.3f')}") if reg else \
            f"{'-':>9} {'-':>8} {'-':>10}"
        if m == "plain":
            lines.append(f"{short[m]:<8} {'':>6} | {'(reference)':^41} | {'':>36} | {regtxt}")
            continue
        s = summary["vs_plain"][m]
        ws = f"{_f(s['worst_group_median'], '.2f')} {s['worst_group']}"[:36]
        lines.append(f"{short[m]:<8} {_f(s['median'])} | {s['n_measurable']:>4} "
                     f"{_f(s['median_snr3'])} {_f(s['worst'])} {s['n_below_0.9']:>5} "
                     f"{str(s['n_up']) + '/' + str(s['n_down']):>7} "
                     f"{_f(s['sign_test_p'], '8.2g')} | {ws:>36} | {regtxt}")
    lines.append("median SNR ratio to plain KLIP per set-up (seeds pooled) and real set:")
    lines.append(f"{'':<36} " + " ".join(f"{short[m] + '/pl':>8}" for m in others))
    for g in _groups(results):
        lines.append(f"{g[:36]:<36} " + " ".join(
            _f(summary["vs_plain"][m]["per_group"].get(g), "8.3f") for m in others))
    if summary["vs_coron"]:
        lines.append("variants against coron's defaults (SPEC 6: a default changes only when "
                     "it wins on the panel and loses > 10 % nowhere; here: median ratio > 1 "
                     "and no set-up's median below 0.9):")
        for m, s in summary["vs_coron"].items():
            wins = s["median"] > 1.0 and s["worst_group_median"] >= 0.9
            lines.append(f"  {short[m]} ({legend[m]}): median {_f(s['median'], '.3f')}; "
                         f"{s['n_measurable']} measurable companions: median "
                         f"{_f(s['median_snr3'], '.3f')}, worst {_f(s['worst'], '.2f')}, "
                         f"{s['n_below_0.9']} below 0.9x, better at {s['n_up']} and worse at "
                         f"{s['n_down']} (sign test p = {_f(s['sign_test_p'], '.2g')}), worst "
                         f"set-up {_f(s['worst_group_median'], '.3f')} ({s['worst_group']}) -> "
                         f"{'wins' if wins else 'does not win'} by that rule")
    if legend:
        lines.append("legend: " + "; ".join(f"{short[m]} = {v}" for m, v in legend.items()))
    lines.append(f"wall time: {wall:.1f} s with {jobs} job(s); per data set (s): " + ", ".join(
        f"{r['label']} {r['seconds'].get('total', 0):.0f}" for r in results))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------
def run_panel(specs, variants=(), *, workroot, keep=False, jobs=1, emit=None):
    """Run every data set (in `jobs` processes); results in the order of `specs`.

    `emit(index, result)` is called in order as soon as a data set and all
    before it are done.
    """
    results = [None] * len(specs)
    done = 0

    def flush():
        nonlocal done
        while done < len(results) and results[done] is not None:
            if emit:
                emit(done, results[done])
            done += 1

    def report(i, res):
        err = res["errors"].get("dataset")
        _progress(f"[{sum(r is not None for r in results)}/{len(specs)}] {res['label']}: "
                  + (f"FAILED {err}" if err else f"{res['seconds'].get('total', 0):.1f} s"))

    if jobs <= 1 or len(specs) <= 1:
        for i, spec in enumerate(specs):
            _progress(f"start {spec['label']}")
            results[i] = run_dataset(spec, variants, workroot, keep)
            report(i, results[i])
            flush()
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))   # the workers are spawned with it
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
        futs = {ex.submit(run_dataset, spec, list(variants), workroot, keep): i
                for i, spec in enumerate(specs)}
        _progress(f"{len(specs)} data sets on {jobs} processes")
        for fut in as_completed(futs):
            i = futs[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:        # a worker died
                results[i] = dict(specs[i], companions=[], registration={},
                                  seconds={}, errors={"dataset": _short_error(exc)})
            report(i, results[i])
            flush()
    return results


def _parse_list(text, kind=str):
    return [kind(v) for v in str(text).replace(";", ",").split(",") if v.strip()]


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m coron_cli.panel",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/realdata",
                    help="folder of real data sets (one sub-folder with an ASN each); "
                         "default %(default)s")
    ap.add_argument("--variant", action="append", default=[], metavar="[LABEL:]K=V[,K=V]",
                    help="run_association overrides on top of the defaults; repeatable")
    ap.add_argument("--setups", default=None,
                    help="comma-separated simulator set-ups (default: all of "
                         "coron_cli.simulate.SETUPS, or the simulator's default)")
    ap.add_argument("--seeds", default=None,
                    help=f"comma-separated seeds (default 0-{_SEEDS - 1} per set-up)")
    ap.add_argument("--size", default=None, choices=["small", "medium", "large"],
                    help="simulated size (default medium; small with --quick)")
    ap.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                    help="include the real sets of --data (default yes)")
    ap.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True,
                    help="include the simulated sets (default yes)")
    ap.add_argument("--rotations", type=int, default=None,
                    help=f"injections of the fakes per real set, turned by 360/N degrees "
                         f"(default {ROTATIONS}; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="for iterating: small size, one seed per set-up, one injection "
                         "per real set")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="data sets run in parallel processes (default: the CPU count)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write every number here")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep inputs and products here (default: a temporary folder, "
                         "removed as it goes)")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    try:
        variants = [parse_variant(v) for v in a.variant]
    except ValueError as exc:
        print(f"panel: {exc}", file=sys.stderr)
        return 2
    labels = [lab for lab, _ in variants]
    if len(set(labels)) != len(labels) or set(labels) & {"coron", "plain", "crdi"}:
        print("panel: variant labels must be distinct and not coron/plain/crdi",
              file=sys.stderr)
        return 2
    size = a.size or ("small" if a.quick else "medium")
    setups = None
    if a.setups is not None:
        setups = [None if s.lower() in ("default", "none") else s for s in _parse_list(a.setups)]
        if any(s is not None for s in setups) and sim_setups() == [None]:
            print("panel: this simulator has no named set-ups (coron_cli.simulate.SETUPS); "
                  "use --setups default", file=sys.stderr)
            return 2
    seeds = _parse_list(a.seeds, int) if a.seeds is not None else None
    if seeds is None and a.quick:
        seeds = [0] if sim_setups() != [None] else [0, 1]
    real = a.real
    if real and not os.path.isdir(a.data):
        print(f"panel: no real data at {a.data} (--data DIR); real sets skipped",
              file=sys.stderr)
        real = False
    rotations = a.rotations if a.rotations is not None else (1 if a.quick else ROTATIONS)
    specs = dataset_specs(sim=a.sim, real=real, setups=setups, seeds=seeds, size=size,
                          rotations=rotations,
                          data_dir=a.data)
    if not specs:
        print("panel: no data sets to run", file=sys.stderr)
        return 2
    methods = ["coron", "plain", "crdi"] + labels
    short = {"coron": "coron", "plain": "plain", "crdi": "cRDI"}
    legend = {}
    for k, (lab, opts) in enumerate(variants):
        short[lab] = lab if len(lab) <= 7 and "=" not in lab else f"v{k + 1}"
        legend[lab] = ",".join(f"{key}={val}" for key, val in opts.items())
    print(f"# coron panel: {len(specs)} data sets; methods: coron defaults, plain KLIP "
          f"({', '.join(f'{k}={v}' for k, v in PLAIN.items())}; truncate=None: all "
          f"reference slices), cRDI (classical RDI on the defaults' aligned references)"
          + "".join(f", {short[lab]} ({legend[lab]})" for lab in labels))
    print("# SNR: aperture t-test of Mawet et al. 2014 at the known position in the i2d "
          "(other companions, a disk's wedge +-15 deg and known sources avoided); "
          "* = known real companion, f = injected fake, p = simulated planet")
    if real:
        print(f"# real sets: {H.FAKE_PEAK_SIGMA:g}-sigma fakes (Airy x transmission) injected "
              f"{rotations} time(s), turned by {360 / max(1, rotations):.0f} deg each time")
    sys.stdout.flush()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(H.quiet())
        if a.keep:
            workroot = os.path.abspath(a.keep)
            os.makedirs(workroot, exist_ok=True)
        else:
            workroot = stack.enter_context(tempfile.TemporaryDirectory(prefix="coron_panel_"))

        def emit(i, res):
            print(format_dataset(res, methods, short), flush=True)

        results = run_panel(specs, variants, workroot=workroot, keep=bool(a.keep),
                            jobs=max(1, a.jobs), emit=emit)
    wall = time.perf_counter() - t0
    summary = summarize(results, methods)
    print(format_summary(summary, methods, short, legend, results, wall, max(1, a.jobs)),
          flush=True)
    if a.json:
        out = {"methods": methods, "plain": PLAIN, "variants": dict(variants),
               "size": size, "data": a.data, "wall_s": wall, "jobs": a.jobs,
               "datasets": results, "summary": summary}
        with open(a.json, "w") as fh:
            json.dump(H.to_json(out), fh, indent=1)
        _progress(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
