"""Exceptions that the command layer turns into one-line messages."""

__all__ = ["CoronError", "InputError", "OutputClosed", "OutputError"]


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


class OutputError(CoronError):
    """An output cannot be written (missing or read-only folder, disk full...)."""


class OutputClosed(Exception):
    """Standard output was closed by its reader (``| head``): end quietly.

    Not an OSError on purpose: click turns EPIPE into exit status 1 itself.
    """
