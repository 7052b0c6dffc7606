"""Exceptions that the command layer turns into one-line messages."""

__all__ = ["CoronError", "ConfigError", "InputError", "Interrupted", "OutputClosed",
           "OutputError", "Terminated", "check_signals", "clear_lost_signals", "note_lost_signal"]


class CoronError(Exception):
    """Base class of the errors a user can act on (exit code 2).

    Parameters
    ----------
    source : str or None
        The file (or option) the problem is about; printed first.
    message : str
        What is wrong, in one line.
    """

    exit_code = 2

    def __init__(self, source, message):
        self.source = None if source is None else str(source)
        self.message = str(message).replace("\n", " ")
        super().__init__(self.format())

    def format(self):
        if self.source:
            return f"{self.source}: {self.message}"
        return self.message


class InputError(CoronError):
    """An input file, association or option value is unusable."""


class ConfigError(InputError):
    """A step configuration field has a value that cannot be used.

    ``source`` is the field's name (e.g. ``truncate``); the command layer
    prints the option's flag instead (:func:`coron_cli.cli.options.flag_for`).
    """

    def __init__(self, field_name, message):
        self.field = field_name
        super().__init__(field_name, message)


class OutputError(CoronError):
    """An output cannot be written (missing or read-only folder, disk full...)."""


class OutputClosed(Exception):
    """Standard output was closed by its reader (``| head``): end quietly.

    Not an OSError on purpose: click turns EPIPE into exit status 1 itself.
    """


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that clean-up code runs."""


class Interrupted(BaseException):
    """Raised on SIGINT instead of KeyboardInterrupt (click would print a blank line first)."""


#: A signal whose exception was lost (raised inside a finalizer, where Python
#: only reports it): set by the command layer, honoured at the next safe point.
_pending = []


def note_lost_signal(exc_type):
    """Remember a signal exception that Python swallowed."""
    _pending.append(exc_type)


def check_signals():
    """Raise a remembered signal exception; called before committing an output."""
    if _pending:
        raise _pending.pop()()


def clear_lost_signals():
    """Forget remembered signals (at the start of a command run in-process)."""
    _pending.clear()
