"""What every command shares: logging, error handling and exit codes, output checks."""

import contextlib
import logging
import os
import signal
import sys
import time
import warnings

import click

from ..errors import (
    ConfigError,
    CoronError,
    InputError,
    Interrupted,
    OutputClosed,
    OutputError,
    Terminated,
    check_signals,
    clear_lost_signals,
    note_lost_signal,
)

__all__ = ["run", "setup_logging", "check_output", "timed", "parse_exclude", "step_progress",
           "resolve_star_flux", "read_mask", "json_plain", "Terminated"]

log = logging.getLogger("coron")


_Interrupted = Interrupted


class _StderrHandler(logging.Handler):
    #: a rich console drawing a progress bar, when one is shown: messages go above the bar
    console = None

    def __init__(self, prog):
        super().__init__()
        self.prog = prog
        self.color = sys.stderr.isatty() and not os.environ.get("NO_COLOR")

    def emit(self, record):
        try:
            level = record.levelname.lower()
            msg = record.getMessage()
            if level == "info":
                text = f"{self.prog}: {msg}"
            else:
                text = f"{self.prog}: {level}: {msg}"
            style = {"warning": "yellow", "error": "red"}.get(level) if self.color else None
            if self.console is not None:
                self.console.print(text, style=style, markup=False, highlight=False,
                                   emoji=False, soft_wrap=True)
                return
            if style:
                text = click.style(text, fg=style)
            click.echo(text, err=True)
        except Exception:  # pragma: no cover - never let logging crash a run
            pass


def setup_logging(prog, verbose=0, quiet=False):
    """Route the 'coron' logger to stderr at the level the flags ask for."""
    log.handlers[:] = [_StderrHandler(prog)]
    log.propagate = False
    if quiet:
        log.setLevel(logging.ERROR)
    elif verbose >= 2:
        log.setLevel(logging.DEBUG)
    elif verbose == 1:
        log.setLevel(logging.INFO)
    else:
        log.setLevel(logging.WARNING)


@contextlib.contextmanager
def timed(what):
    """Log how long a step took (shown with -v)."""
    t0 = time.perf_counter()
    yield
    log.info("%s done in %.2f s", what, time.perf_counter() - t0)


@contextlib.contextmanager
def step_progress(total, *, enabled=True):
    """A progress bar on stderr for a run of `total` steps, shown only on a terminal.

    Yields an ``on_step(description)`` callback for
    :func:`coron_cli.pipeline.run_association` (each call closes the previous
    step and names the next), or None when no bar is shown: `enabled` false
    (-q), or stderr not a terminal (a pipe, a file, ``TERM=dumb``). The bar is
    drawn with rich on a stderr console, never on stdout (which may carry
    data), and honours NO_COLOR; log messages are printed above it while it
    runs, and it is cleared when the run ends or is interrupted.
    """
    if not enabled or total <= 0 or not _isatty(sys.stderr):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal or console.is_dumb_terminal:
        yield None
        return
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        transient=True, redirect_stdout=False, redirect_stderr=False)
    task = progress.add_task("starting", total=total)
    started = []

    def on_step(description):
        if started:
            progress.advance(task)
        started.append(description)
        progress.update(task, description=description, refresh=True)

    handlers = [h for h in log.handlers if isinstance(h, _StderrHandler)]
    with progress:
        for h in handlers:
            h.console = console
        try:
            yield on_step
            progress.update(task, completed=total)
        finally:
            for h in handlers:
                h.console = None


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


#: the signal exceptions raised during the current run: C code (numpy's dtype parsing,
#: for one) can turn the exception a handler raises inside it into another error, which
#: must still end the run as the signal does
_RAISED = []


def _on_sigterm(signum, frame):
    _RAISED.append(Terminated)
    raise Terminated()


def _on_sigint(signum, frame):
    _RAISED.append(_Interrupted)
    raise _Interrupted()


def _redeliver(unraisable, _hook=sys.unraisablehook):
    """A signal's exception raised inside a finalizer is swallowed: send the signal again.

    Python runs signal handlers between bytecodes, which may be inside a
    garbage-collection callback or ``__del__``; the exception raised there
    is reported as "Exception ignored" and lost, and the run would go on.
    The signal is sent again a moment later from another thread (so that it
    is not handled inside this hook, itself Python code), and the handler
    raises again where it counts.
    """
    import threading

    exc_type = unraisable.exc_type
    if exc_type is not None and issubclass(exc_type, (Terminated, _Interrupted,
                                                      KeyboardInterrupt)):
        signum = signal.SIGTERM if issubclass(exc_type, Terminated) else signal.SIGINT
        note_lost_signal(Terminated if signum == signal.SIGTERM else Interrupted)
        timer = threading.Timer(0.005, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    _hook(unraisable)


def run(command, prog=None, args=None):
    """Run a click command with coron's error policy and exit.

    0 success; 1 internal failure; 2 usage or bad input (one line on stderr);
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM); a closed stdout ends
    quietly. Tracebacks only with --debug.
    """
    prog = prog or os.path.basename(sys.argv[0]) or command.name
    argv = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in argv
    if not debug:
        warnings.simplefilter("ignore")
    previous = {}
    code = 0
    old_hook = sys.unraisablehook
    clear_lost_signals()
    _RAISED.clear()
    try:
        # inside the try: a signal that comes as soon as a handler is set is handled too
        sys.unraisablehook = _redeliver
        _set_signal_handlers(previous)
        rv = command.main(args=argv, prog_name=prog, standalone_mode=False)
        check_signals()  # a signal whose exception a finalizer swallowed still counts
        code = rv if isinstance(rv, int) else 0
    except ConfigError as exc:
        from .options import flag_for

        _error(prog, f"{flag_for(exc.field)}: {exc.message}")
        code = exc.exit_code
    except CoronError as exc:
        _error(prog, exc.format())
        code = exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        code = 2
    except click.UsageError as exc:
        hint = f" (see '{prog} --help')"
        _error(prog, exc.format_message().replace("\n", " ") + hint)
        code = 2
    except click.ClickException as exc:
        _error(prog, exc.format_message().replace("\n", " "))
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt, _Interrupted):
        code = _signalled(prog, _Interrupted)
    except Terminated:
        code = _signalled(prog, Terminated)
    except (BrokenPipeError, OutputClosed):
        _quiet_stdout()
        code = 141
    except MemoryError:
        _error(prog, "out of memory; try fewer references or integrations per run")
        code = 1
    except Exception as exc:
        if _RAISED:
            # a signal's exception that C code turned into another error
            code = _signalled(prog, _RAISED[-1])
        else:
            if debug:
                raise
            _error(prog, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug "
                         "for the traceback)")
            code = 1
    _flush_stdout()
    for signum, handler in previous.items():  # as they were, for callers in the same process
        signal.signal(signum, handler)
    sys.unraisablehook = old_hook
    sys.exit(code)


def _signalled(prog, kind):
    """Report an interruption (Ctrl-C) or a termination; its exit code, 130 or 143."""
    if kind is Terminated:
        _error(prog, "terminated")
        return 143
    if _isatty(sys.stderr):
        click.echo(err=True)  # end the line the terminal's ^C echo began
    _error(prog, "interrupted")
    return 130


def _set_signal_handlers(previous):
    """SIGTERM -> Terminated, SIGINT -> _Interrupted (unless ignored), SIGXFSZ ignored.

    The handlers replaced are recorded in `previous` as they are set.
    """
    with contextlib.suppress(ValueError, AttributeError):  # not the main thread; no SIGXFSZ
        wanted = [(signal.SIGTERM, _on_sigterm),
                  # a file-size limit must fail the write (EFBIG), not kill the process
                  (signal.SIGXFSZ, signal.SIG_IGN)]
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            wanted.append((signal.SIGINT, _on_sigint))
        for signum, handler in wanted:
            previous[signum] = signal.signal(signum, handler)


def _flush_stdout():
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()


def _quiet_stdout():
    # stdout's reader went away: point it at /dev/null so interpreter exit stays quiet
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _error(prog, message):
    text = f"{prog}: error: {message}"
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        text = click.style(text, fg="red")
    click.echo(text, err=True)


def check_output(path, inputs):
    """Refuse to write over an input, or binary FITS to a terminal."""
    if path == "-":
        if sys.stdout.isatty():
            raise OutputError("-", "refusing to write binary FITS to a terminal; use -o FILE "
                                   "or pipe the output")
        return
    for src in inputs:
        if src in (None, "-"):
            continue
        if os.path.exists(path) and os.path.exists(src) and os.path.samefile(path, src):
            raise OutputError(path, "is also an input; refusing to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(path, f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(path, f"output folder {folder} is not writable")
    if os.path.isdir(path):
        raise OutputError(path, "is a directory")


def check_stdin_once(paths):
    """At most one input may come from standard input."""
    if sum(1 for p in paths if p == "-") > 1:
        raise InputError("-", "standard input can feed only one input")


def parse_exclude(values):
    """['x,y,r', ...] -> [(x, y, r), ...] as floats."""
    out = []
    for value in values:
        parts = value.split(",")
        try:
            x, y, r = (float(p) for p in parts)
        except ValueError:
            raise InputError("--exclude", f"expected X,Y,R (three numbers), got {value!r}") \
                from None
        if r <= 0:
            raise InputError("--exclude", f"radius must be positive in {value!r}")
        out.append((x, y, r))
    return out


def resolve_star_flux(star_flux, psf_offaxis, method="peak", fwhm=None, *, need_psf=False):
    """The star flux from --star-flux or --psf-offaxis, and the off-axis PSF image.

    Returns
    -------
    star_flux : float or None
        --star-flux as given (taken to be measured as `method` says), or the
        peak / aperture flux of the --psf-offaxis image.
    psf : ndarray of shape (py, px) or None
        The off-axis PSF image when --psf-offaxis was given.
    """
    from ..products import read_product
    from ..steps import offaxis_flux, offaxis_image

    if star_flux is not None and psf_offaxis is not None:
        raise InputError("--star-flux", "give either --star-flux or --psf-offaxis, not both")
    if star_flux is not None and not star_flux > 0:
        raise InputError("--star-flux", "must be a positive number")
    if need_psf and psf_offaxis is None:
        raise InputError("--contrast", "needs --psf-offaxis FILE (the unocculted PSF to inject)")
    psf = None
    if psf_offaxis is not None:
        product = read_product(psf_offaxis, what="off-axis PSF image")
        psf = offaxis_image(product)
        star_flux = offaxis_flux(product, method=method, fwhm=fwhm)
    return star_flux, psf


def json_plain(obj):
    """``json.dumps(default=...)`` for what a summary holds besides plain types: numpy
    scalars and arrays, sets."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_mask(path):
    """--mask FILE: registration weights (2-D float64, finite, not negative, not all 0),
    or None without a file."""
    import numpy as np

    from ..products import read_product

    if path is None:
        return None
    weights = np.asarray(read_product(path, ndims=(2,), what="mask image").sci,
                         dtype=np.float64)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise InputError(path, "mask weights must be finite and non-negative")
    if not (weights > 0).any():
        raise InputError(path, "mask excludes every pixel")
    return weights


def split_background(values):
    """--background values -> (mode, files): auto/subtract/off set the mode, the rest are files."""
    from . import options

    modes = [v for v in values if v in options.BACKGROUND_MODES]
    if len(set(modes)) > 1:
        raise InputError("--background", f"give one of auto, subtract, off, not {modes}")
    files = [v for v in values if v not in options.BACKGROUND_MODES]
    return (modes[0] if modes else "auto"), files


def subtract_backgrounds(exposures, values, bad_bits):
    """Exposures with the --background files subtracted (as the mode decides); logs why."""
    import logging

    from ..products import read_product
    from ..steps import BackgroundConfig, background_step

    mode, files = split_background(values)
    if not files:
        return exposures
    bkgs = [read_product(f, what="background exposure") for f in files]
    for b in bkgs:
        b.images = {}
    out = []
    for e in exposures:
        new, why = background_step(e, bkgs, BackgroundConfig(mode=mode, bad_bits=bad_bits))
        logging.getLogger("coron").info("%s: %s", e.path, why)
        out.append(new)
    return out
