"""coron3 batch: many associations, each run like 'coron3 run' as a dask task.

The command is made from ``coron3 run`` (:func:`batch_command`): it takes every option
of run, the same objects, so that the two cannot drift apart; its own are the
associations, the folder, where the tasks run and the JSON summary. dask is imported
only when it runs (:mod:`coron_cli.batch`).
"""

import copy
import logging
import os

import click

from . import options
from .common import parse_exclude, read_mask, resolve_star_flux, setup_logging, step_progress

__all__ = ["batch_command", "config_from_options"]

log = logging.getLogger("coron")

#: parameters of coron3 run that batch replaces with its own
_OWN = ("asn", "outdir", "as_json")
#: parameters of coron3 run that are not step options (-v, -q, --debug, --version)
_COMMON = ("verbose", "quiet", "debug", "version")

_HELP = """Run 'coron3 run' on many associations at once, as dask tasks.

Each ASN is a path, a glob (quoted: 'data/*_asn.json'), a folder (its
*_asn.json files) or a list of paths (@list.txt, or any .txt file: one
path, glob or folder a line, relative to the list's folder, # comments).
Every association is run into its own folder under DIR, named after its
file (jw1234_coron_asn.json -> DIR/jw1234_coron_asn/), with every option
of 'coron3 run': its products are those of 'coron3 run ASN --outdir
DIR/<name>'.

Without --scheduler, a local dask cluster of --workers processes is
started (one thread each, at most one per association; BLAS threads set to
1) and closed at the end; each worker runs one association at a time, so N
workers need about N times the memory of one run. With --scheduler, the
tasks go to that dask.distributed scheduler; its workers must have coron
installed and see the associations, their members and DIR at the same
paths (a shared file system).

An association that fails is reported with its one-line error and the
others go on. A summary (ASN, status, seconds, products) goes to standard
error at the end (none with -q), and with --json a JSON summary to standard
output. Exit status: 0 when every association succeeded, 1 when any failed,
2 for a usage error (a bad option, no association found, dask not
installed: pip install 'coron[dask]'). On a terminal one progress bar over
the associations is shown on standard error. Ctrl-C cancels the tasks not
started, stops the local workers and removes their temporary files: the
products on disk are complete, as after an interrupted 'coron3 run'
(tasks running on a --scheduler's workers stop at their next step).

\b
Examples:
  coron3 batch data/ --outdir products --truncate 30
  coron3 batch 'obs*/jw*_coron3_asn.json' --outdir products --workers 4
  coron3 batch @asns.txt --outdir /shared/products --scheduler tcp://head:8786
  coron3 batch data/ --outdir products --json -q > batch.json
"""


def batch_command(run_cmd):
    """The ``coron3 batch`` command, with every step option of `run_cmd` (``coron3 run``)."""
    params = [p for p in run_cmd.params if p.name not in _OWN]
    step = [copy.copy(p) for p in params if p.name not in _COMMON]
    common = [copy.copy(p) for p in params if p.name in _COMMON]
    own = [
        click.Argument(["asns"], nargs=-1, required=True, metavar="ASN...", type=click.Path()),
        click.Option(["-d", "--outdir"], default=".", show_default=True, metavar="DIR",
                     type=click.Path(),
                     help="Folder under which each association gets its folder (created "
                          "when missing)."),
        click.Option(["--scheduler"], default=None, metavar="ADDRESS",
                     help="Address of a dask.distributed scheduler (tcp://host:8786) to send "
                          "the tasks to, instead of starting local workers; its workers must "
                          "have coron installed and see the same files at the same paths."),
        click.Option(["--workers"], type=click.IntRange(min=1), default=None, metavar="N",
                     help="Worker processes of the local cluster (one thread each) "
                          "[default: the machine's cores, at most one per association]."),
    ]
    as_json = click.Option(
        ["--json", "as_json"], is_flag=True,
        help="Print a JSON summary on standard output: for every association its folder, "
             "status, error, seconds and products (kind, path); the parameters, the workers "
             "and the coron version.")
    return options.Command(name="batch", callback=_batch, params=own + step + [as_json] + common,
                           help=_HELP, no_args_is_help=True)


def config_from_options(step_options):
    """(PipelineConfig, registration weights, off-axis PSF) from coron3 run's step options
    (flat names, as click gives them), as ``coron3 run`` makes them."""
    from ..steps import PipelineConfig

    opts = dict(step_options)
    mask = opts.pop("mask", None)
    psf_offaxis = opts.pop("psf_offaxis", None)
    if opts.get("plot"):
        from ..plots import require_matplotlib

        require_matplotlib()
    star_flux, psf = resolve_star_flux(opts.pop("star_flux", None), psf_offaxis,
                                       opts.get("star_flux_method", "peak"), opts.get("fwhm"),
                                       need_psf=bool(opts.get("contrast")))
    opts["exclude"] = parse_exclude(opts.get("exclude", ()))
    config = PipelineConfig.from_options(star_flux=star_flux, **opts)
    return config, read_mask(mask), psf


def _batch(asns, outdir, scheduler, workers, as_json, verbose, quiet, debug, **step_options):
    setup_logging("coron3", verbose, quiet)
    import time

    from ..batch import batch_outdirs, find_asns, require_dask, run_batch, summary_table
    from ..errors import Interrupted, Terminated
    from ..pipeline import check_outdir

    t0 = time.perf_counter()
    require_dask()
    if scheduler is not None and workers is not None:
        raise click.UsageError("give --scheduler or --workers, not both")
    paths = find_asns(asns)
    outdirs = batch_outdirs(paths, outdir)
    config, mask, psf = config_from_options(step_options)
    check_outdir(outdir, create=True)

    names = {p: os.path.basename(outdirs[p]) for p in paths}
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        verbose, logging.DEBUG)
    results, cluster = {}, {}

    try:
        with step_progress(len(paths), enabled=not quiet) as on_step:
            def on_start(info):
                cluster.update(info)
                where = f"the scheduler at {scheduler}" if scheduler else "a local cluster"
                log.info("%d association(s) on %d worker(s) of %s", len(paths), info["workers"],
                         where)
                if on_step:
                    on_step(f"{len(paths)} association(s) on {info['workers']} worker(s)")

            def on_result(res):
                results[res["asn"]] = res
                name = names[res["asn"]]
                for level_name, message in res.get("log", []):
                    log.log(logging.getLevelName(level_name.upper()), "%s: %s", name, message)
                if res["status"] == "ok":
                    log.info("%s: done in %.1f s, %d product(s) in %s", name, res["seconds"],
                             len(res["products"]), res["outdir"])
                else:
                    error = _error_line(res)
                    asn = res["asn"]
                    log.error("%s", error if error.startswith(asn + ": ") else f"{asn}: {error}")
                    if debug and res.get("traceback"):
                        log.error("%s", res["traceback"].rstrip())
                if on_step:
                    on_step(f"{name}: {res['status']}")

            run_batch(paths, outdirs, config, mask=mask, offaxis_psf=psf, scheduler=scheduler,
                      workers=workers, log_level=level, debug=debug, on_start=on_start,
                      on_result=on_result)
    except (KeyboardInterrupt, Interrupted, Terminated):
        if not quiet:  # what ended before, once the bar is gone
            _echo_summary(paths, results, names, outdirs, time.perf_counter() - t0,
                          summary_table, interrupted=True)
        raise
    elapsed = time.perf_counter() - t0
    if not quiet:
        _echo_summary(paths, results, names, outdirs, elapsed, summary_table)
    if as_json:
        _echo_json(paths, results, outdirs, config, outdir, scheduler, cluster, elapsed)
    if any(r["status"] != "ok" for r in results.values()):
        click.get_current_context().exit(1)


def _error_line(res):
    """The one-line error of a failed association (a configuration field as its flag)."""
    error = res.get("error") or "failed"
    if res.get("field"):
        error = f"{options.flag_for(res['field'])}: {error}"
    return error


def _echo_summary(paths, results, names, outdirs, elapsed, summary_table, interrupted=False):
    rows = [results.get(p) or {"asn": p, "status": "interrupted" if interrupted else "not run",
                               "seconds": 0.0, "products": []} for p in paths]
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    text = summary_table(rows, names)
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    click.echo(f"{text}\n{len(rows)} association(s): {tally}; {elapsed:.1f} s", err=True)


def _echo_json(paths, results, outdirs, config, outdir, scheduler, cluster, elapsed):
    import json

    from .. import __version__
    from .common import json_plain as plain

    asns = []
    for p in paths:
        r = results[p]
        asns.append({"asn": p, "outdir": outdirs[p], "status": r["status"],
                     "error": None if r["status"] == "ok" else _error_line(r),
                     "seconds": round(r["seconds"], 3), "asn_id": r.get("asn_id"),
                     "worker": r.get("worker"),
                     "products": r["products"],
                     "timings": {k: round(v, 3) for k, v in r.get("timings", {}).items()}})
    out = {"tool": "coron3 batch", "coron_version": __version__, "outdir": outdir,
           "scheduler": scheduler, "workers": cluster.get("workers"),
           "ok": sum(a["status"] == "ok" for a in asns),
           "failed": sum(a["status"] != "ok" for a in asns),
           "asns": asns, "parameters": config.as_dict(), "elapsed": round(elapsed, 3)}
    click.echo(json.dumps(out, indent=2, default=plain))
