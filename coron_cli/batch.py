"""coron3 batch: many associations, each run by :func:`run_association` as a dask task.

The library side of ``coron3 batch``: the associations named on the command line
(:func:`find_asns`), the folder of each (:func:`batch_outdirs`), the task a worker runs
(:func:`run_one`), the batch on a local cluster or a dask.distributed scheduler
(:func:`run_batch`), and the summary (:func:`summary_table`).

dask is imported only when a batch runs (:func:`require_dask`); this module imports
without it. A task never raises: it returns a result (:func:`run_one`) saying how its
association went, so one association failing does not stop the others.
"""

import contextlib
import glob
import logging
import os
import signal
import threading
import time
import traceback

from .errors import ConfigError, CoronError, InputError
from .paths import find_files

__all__ = ["DASK_HINT", "require_dask", "find_asns", "batch_outdirs", "run_one", "run_batch",
           "summary_table", "planned_temporaries"]

log = logging.getLogger("coron")

#: the one-line reason given when dask is not installed
DASK_HINT = "needs dask, the optional 'dask' extra: pip install 'coron[dask]'"

#: the names an association file has in a folder given to coron3 batch
ASN_PATTERN = "*_asn.json"


def require_dask(source="coron3 batch"):
    """dask.distributed (dask.array loaded too), or a one-line InputError (exit 2) naming
    the extra, about `source` (the command)."""
    try:
        import dask
        import dask.array  # noqa: F401
        import distributed
    except ImportError:
        raise InputError(source, DASK_HINT) from None
    return distributed


# --------------------------------------------------------------------------- which ASNs

def find_asns(items):
    """The association files that command-line arguments name, in order, each once:
    paths, globs, folders (their ``*_asn.json``) and list files, as
    :func:`coron_cli.paths.find_files` reads them. InputError for an item naming
    no association, or no item."""
    return find_files(items, ASN_PATTERN, noun="association", plural="associations",
                      none_given="no association given (ASN files, globs, folders or "
                                 "@list.txt)")


def batch_outdirs(asns, outdir):
    """{ASN path: its folder under `outdir`}, named after the ASN file's stem.

    Raises
    ------
    InputError
        Two associations of the same file name (their products would go to
        one folder).
    """
    out, owner = {}, {}
    for asn in asns:
        stem = os.path.splitext(os.path.basename(asn))[0] or os.path.basename(asn)
        folder = os.path.join(outdir, stem)
        if stem in owner:
            raise InputError(asn, f"has the name of {owner[stem]}: both would write into "
                                  f"{folder}; rename one")
        owner[stem] = asn
        out[asn] = folder
    return out


def planned_temporaries(asn, outdir):
    """The temporary files (``.<product>.*.part``) a run of `asn` into `outdir` can leave
    when its process is killed while writing; [] when the ASN cannot be read."""
    from .asn import read_asn
    from .pipeline import plan

    try:
        planned = plan(read_asn(asn, check_files=False), outdir, detect=True,
                       table_format="ecsv", plot=True)
    except (CoronError, OSError):
        return []
    out = []
    for _, path, _ in planned:
        pattern = os.path.join(glob.escape(os.path.dirname(path)),
                               "." + glob.escape(os.path.basename(path)) + ".*.part")
        out += glob.glob(pattern)
    return out


# --------------------------------------------------------------------------- the task

class _Stop(BaseException):
    """The task was cancelled (its client went away or pressed Ctrl-C): stop between steps."""


def _cancelled():
    """Whether the dask task running in this thread was cancelled by its client."""
    try:
        from distributed import get_worker
        from distributed.worker import thread_state

        ts = get_worker().state.tasks.get(thread_state.key)
    except Exception:  # not in a worker, or another version of distributed's internals
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


class _Collect(logging.Handler):
    """Keeps the records of one thread (a task) as (level name, message)."""

    def __init__(self, level):
        super().__init__(level)
        self.thread = threading.get_ident()
        self.records = []

    def emit(self, record):
        if record.thread == self.thread:
            with contextlib.suppress(Exception):
                self.records.append((record.levelname.lower(), record.getMessage()))


def _local(path, cwd):
    """`path` as the worker should open it: as given when the worker runs in the client's
    folder (the products then record the same paths as ``coron3 run``), else absolute."""
    if os.path.isabs(path):
        return path
    with contextlib.suppress(OSError):
        if os.path.samefile(os.getcwd(), cwd):
            return path
    return os.path.join(cwd, path)


def run_one(asn, outdir, config, *, mask=None, offaxis_psf=None, cwd=None,
            log_level=logging.WARNING, stop=None):
    """Run one association into `outdir` (the body of a batch's dask task).

    Calls :func:`coron_cli.pipeline.run_association`, so the products are
    those of ``coron3 run ASN --outdir OUTDIR``. Never raises for a failed
    run: the result says what went wrong in one line.

    Parameters
    ----------
    asn, outdir : str
        The association and its folder; relative ones are relative to `cwd`
        (the client's folder; default the worker's).
    config : PipelineConfig
    mask, offaxis_psf : ndarray, optional
        As :func:`run_association` takes them.
    log_level : int
        The messages of the run at this level and above are returned (not
        printed in the worker).
    stop : callable() -> bool, optional
        Asked before every step; true stops the run there (products written
        so far stay, complete). Default: whether the dask task was cancelled.

    Returns
    -------
    dict
        ``asn``, ``outdir`` (as given), ``status`` (``ok``, ``failed`` or
        ``cancelled``), ``seconds``, ``products`` (list of {kind, path}),
        ``timings``, ``asn_id``, ``error`` (one line, or None), ``field``
        (the configuration field of a ConfigError), ``traceback`` (of an
        internal error), ``log`` (list of [level, message]), ``worker`` (host
        and process).
    """
    import socket

    from .pipeline import run_association

    t0 = time.perf_counter()
    stop = _cancelled if stop is None else stop
    result = {"asn": asn, "outdir": outdir, "status": "failed", "seconds": 0.0, "products": [],
              "timings": {}, "asn_id": None, "error": None, "field": None, "traceback": None,
              "log": [], "worker": f"{socket.gethostname()}:{os.getpid()}"}
    cwd = cwd or os.getcwd()
    where = _local(asn, cwd)

    def on_step(description):
        if stop():
            raise _Stop()

    coron_log = logging.getLogger("coron")
    handler = _Collect(log_level)
    saved = coron_log.level, coron_log.propagate
    coron_log.addHandler(handler)
    if coron_log.level == logging.NOTSET or coron_log.level > log_level:
        coron_log.setLevel(log_level)
    coron_log.propagate = False  # nothing printed by the worker: the client prints
    try:
        import warnings

        with warnings.catch_warnings():
            if log_level > logging.DEBUG:
                warnings.simplefilter("ignore")
            summary = run_association(where, _local(outdir, cwd), config, mask=mask,
                                      offaxis_psf=offaxis_psf, on_step=on_step)
        result.update(status="ok", products=summary["products"],
                      timings=summary["timings"], asn_id=summary["asn_id"])
    except _Stop:
        result.update(status="cancelled", error="cancelled")
    except ConfigError as exc:
        result.update(error=exc.message, field=exc.field)
    except CoronError as exc:
        result["error"] = exc.format()
        if where != asn and result["error"].startswith(where + ": "):
            result["error"] = asn + result["error"][len(where):]  # the ASN as the client named it
    except MemoryError:
        result["error"] = "out of memory; try fewer workers, references or integrations"
    except Exception as exc:
        result["error"] = (f"internal error: {type(exc).__name__}: {exc} (rerun with --debug "
                           "for the traceback)")
        result["traceback"] = traceback.format_exc()
    finally:
        coron_log.removeHandler(handler)
        coron_log.setLevel(saved[0])
        coron_log.propagate = saved[1]
        result["seconds"] = time.perf_counter() - t0
        result["log"] = [list(r) for r in handler.records]
    if result["status"] == "ok":
        # paths as the client knows them
        for p in result["products"]:
            p["path"] = os.path.join(outdir, os.path.basename(p["path"]))
    return result


# --------------------------------------------------------------------------- the batch

@contextlib.contextmanager
def _local_cluster(workers, debug=False):
    """A LocalCluster of `workers` processes, one thread each, and its Client.

    A Ctrl-C on a terminal reaches every process of its group; the client
    alone must handle it (cancel the tasks, close the cluster), not the
    workers, which would die printing tracebacks. The cluster is therefore
    started with SIGINT blocked in this thread: the threads that start the
    worker processes, and so the processes, inherit the mask, and a SIGINT
    that comes meanwhile waits and is handled here when it is unblocked.
    multiprocessing's resource tracker, which unblocks SIGINT in the thread
    that starts it, is started first.
    """
    distributed = require_dask()
    level = logging.WARNING if debug else logging.CRITICAL
    cluster = None
    try:
        with _sigint_deferred():
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                               processes=True, dashboard_address=None,
                                               memory_limit=0, silence_logs=level)
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            with _sigint_deferred():
                _quietly(client.close)
    finally:
        if cluster is not None:
            with _sigint_deferred():
                _quietly(cluster.close)


@contextlib.contextmanager
def _sigint_deferred():
    """A SIGINT (Ctrl-C) that comes in the block is handled when it ends.

    SIGINT is blocked in this thread, so the threads started in the block,
    and the processes they start, have it blocked too (for good: dask's
    worker processes never see a Ctrl-C meant for the client); a thread
    started before may still receive it, so the handler only notes it until
    the block ends, and the handler it replaced is then called.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    from multiprocessing import resource_tracker

    # it unblocks SIGINT in the thread that starts it: started before the block
    resource_tracker.ensure_running()
    caught = []
    # only the main thread sets handlers (elsewhere the mask alone is set)
    handler = signal.getsignal(signal.SIGINT) \
        if threading.current_thread() is threading.main_thread() else None
    if handler not in (signal.SIG_IGN, None):
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if handler not in (signal.SIG_IGN, None):
            signal.signal(signal.SIGINT, handler)
            if caught:
                if callable(handler):
                    handler(signal.SIGINT, None)
                else:  # SIG_DFL
                    raise KeyboardInterrupt()


@contextlib.contextmanager
def _remote_client(address, debug=False, timeout=10):
    """A Client of the dask.distributed scheduler at `address`."""
    distributed = require_dask()
    dask_log = logging.getLogger("distributed")
    saved = dask_log.level
    if not debug:
        dask_log.setLevel(logging.CRITICAL)
    try:
        _reach(address, timeout)
        try:
            client = distributed.Client(address, timeout=timeout, set_as_default=False)
        except (OSError, ValueError, TypeError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError("--scheduler", f"cannot connect to {address} ({why})") from None
        try:
            if not client.scheduler_info().get("workers"):
                log.warning("the scheduler at %s has no worker yet: the tasks wait for one",
                            address)
            yield client
        finally:
            _quietly(client.close)
    finally:
        dask_log.setLevel(saved)


def _reach(address, timeout):
    """Connect to the scheduler once, or raise InputError saying why not.

    Done before making a Client: a Client whose construction failed hangs in
    its finalizer at exit (20 s, with a traceback).
    """
    import asyncio

    from distributed.comm import connect

    async def probe():
        comm = await connect(address, timeout=timeout)
        await comm.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # a bad address, TLS without its settings, no answer...
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError("--scheduler", f"cannot connect to {address} ({why})") from None


def _quietly(close):
    with contextlib.suppress(Exception):
        close()


def run_batch(asns, outdirs, config, *, mask=None, offaxis_psf=None, scheduler=None,
              workers=None, log_level=logging.WARNING, debug=False, on_start=None,
              on_result=None):
    """Run every association as a dask task; return their results in the order given.

    Parameters
    ----------
    asns : list of str
    outdirs : dict
        ASN -> its folder (:func:`batch_outdirs`).
    config, mask, offaxis_psf
        As :func:`run_one` (and :func:`run_association`) take them.
    scheduler : str, optional
        Address of a dask.distributed scheduler (``tcp://host:8786``), whose
        workers see the same files at the same paths. Without it, a local
        cluster of `workers` processes (one thread each) is started and closed.
    workers : int, optional
        Size of the local cluster; default the machine's cores, at most one
        per association.
    on_start : callable(info), optional
        Called once the cluster is up with {scheduler, workers}.
    on_result : callable(result), optional
        Called in the calling thread as each association ends.

    Returns
    -------
    list of dict
        :func:`run_one`'s results; an association whose task did not come
        back (its worker died) is ``failed`` with the reason.

    Interrupted (KeyboardInterrupt, the command layer's Interrupted or
    Terminated), the tasks not started are cancelled, the local cluster is
    closed and the temporary files of the runs it killed are removed: every
    product on disk is complete. Running tasks on a remote scheduler stop at
    their next step.
    """
    if scheduler is not None:
        cm = _remote_client(scheduler, debug=debug)
    else:
        n = workers or _cores()
        cm = _local_cluster(max(1, min(n, len(asns))), debug=debug)
    cwd = os.getcwd()
    results = {}
    with cm as client:
        if on_start is not None:
            on_start({"scheduler": scheduler or client.scheduler.address,
                      "workers": len(client.scheduler_info().get("workers", {}))})
        futures = {}
        try:
            from distributed import as_completed

            shared = {}  # the arrays sent once to every worker, not with every task
            for name, value in (("mask", mask), ("offaxis_psf", offaxis_psf)):
                if value is not None:
                    shared[name] = client.scatter(value, broadcast=True, hash=False)
            for asn in asns:
                fut = client.submit(run_one, asn, outdirs[asn], config, cwd=cwd,
                                    log_level=log_level, pure=False,
                                    key=f"coron-{os.path.basename(asn)}-{os.urandom(4).hex()}",
                                    **shared)
                futures[fut] = asn
            for fut in as_completed(list(futures), loop=client.loop):
                asn = futures[fut]
                res = _result_of(fut, asn, outdirs[asn])
                results[asn] = res
                if on_result is not None:
                    on_result(res)
        except BaseException:
            with _sigint_deferred():  # a second Ctrl-C does not break the clean-up
                _quietly(lambda: client.cancel(list(futures), force=True))
                if scheduler is None:
                    # closing the local cluster ends the running tasks' processes; what
                    # they were writing is left as temporary files, removed here
                    _quietly(client.close)
                    _quietly(lambda: client.cluster.close() if client.cluster else None)
                    _remove_temporaries([a for a in asns if a not in results], outdirs)
            raise
    return [results[a] for a in asns]


def _result_of(fut, asn, outdir):
    """A finished future's result, or a ``failed`` one saying why the task did not return."""
    try:
        res = fut.result()
    except BaseException as exc:  # the worker died (KilledWorker), the task was lost...
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or \
                type(exc).__name__ in ("Interrupted", "Terminated"):
            raise
        name = type(exc).__name__
        why = {"KilledWorker": "its worker died (out of memory? killed?) each time it ran it",
               "CancelledError": "its task was cancelled by the scheduler"}.get(name, "")
        msg = why or f"{name}: {exc}"
        res = {"asn": asn, "outdir": outdir, "status": "failed", "seconds": 0.0,
               "products": [], "timings": {}, "asn_id": None, "error": msg, "field": None,
               "traceback": None, "log": [], "worker": None}
    return res


def _remove_temporaries(asns, outdirs):
    """Remove the temporary files the killed runs of `asns` left (products never are)."""
    for asn in asns:
        for tmp in planned_temporaries(asn, outdirs[asn]):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- the summary

def summary_table(results, names=None):
    """The summary as text: one line per association (ASN, status, seconds, products).

    `names` maps an ASN path to the name shown (default the path).
    """
    names = names or {}
    rows = [(names.get(r["asn"], r["asn"]), r["status"], f"{r['seconds']:.1f}",
             str(len(r["products"]))) for r in results]
    head = ("asn", "status", "seconds", "products")
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = []
    for row in [head, *rows]:
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
                     f"{row[3]:>{widths[3]}}")
    return "\n".join(lines)
