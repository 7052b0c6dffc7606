"""What every command shares: logging, error handling and exit codes, output checks."""

import contextlib
import logging
import os
import signal
import sys
import time
import warnings

import click

from ..errors import CoronError, InputError, OutputError

__all__ = ["run", "setup_logging", "check_output", "timed", "parse_exclude", "Terminated"]

log = logging.getLogger("coron")


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that clean-up code runs."""


class _StderrHandler(logging.Handler):
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
            if self.color and level in ("warning", "error"):
                text = click.style(text, fg="yellow" if level == "warning" else "red")
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


def _on_sigterm(signum, frame):
    raise Terminated()


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
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGTERM, _on_sigterm)
        # a file-size limit must fail the write (EFBIG), not kill the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    code = 0
    try:
        rv = command.main(args=argv, prog_name=prog, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
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
    except (click.Abort, KeyboardInterrupt):
        _error(prog, "interrupted")
        code = 130
    except Terminated:
        _error(prog, "terminated")
        code = 143
    except BrokenPipeError:
        _quiet_stdout()
        code = 141
    except MemoryError:
        _error(prog, "out of memory; try fewer references or integrations per run")
        code = 1
    except Exception as exc:
        if debug:
            raise
        _error(prog, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for "
                     "the traceback)")
        code = 1
    _flush_stdout()
    sys.exit(code)


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
