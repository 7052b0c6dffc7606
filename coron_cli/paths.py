"""Files named on a command line: paths, globs, folders and list files (no FITS here)."""

import glob
import os

from .errors import InputError

__all__ = ["find_files"]


def find_files(items, pattern, *, noun, plural, none_given, none_source=None):
    """The files that command-line arguments name, in order, each once.

    Each item is a path, a glob (quoted, so that the shell leaves it), a folder
    (its files matching `pattern`, sorted) or a list file (``@list.txt``, or any
    ``.txt`` file): one path, glob or folder a line, relative ones taken from the
    list's folder, blank lines and lines starting with ``#`` skipped. The same
    file named twice is kept once.

    Parameters
    ----------
    items : sequence of str
    pattern : str
        The files of a folder, e.g. ``*_asn.json``.
    noun, plural : str
        What the files are, for the messages ("association", "associations").
    none_given, none_source : str
        The message (and the name it is about) when no item names a file.

    Returns
    -------
    list of str
        The paths as given (or joined to a list file's folder).

    Raises
    ------
    InputError
        A missing file, a glob matching nothing, a folder without `pattern`, an
        empty or unreadable list; or no item.
    """
    found = []
    for item in items:
        item = str(item)
        if item.startswith("@"):
            found += _from_list(item[1:], item, pattern, noun, plural)
        elif item.endswith(".txt") and os.path.isfile(item):
            found += _from_list(item, item, pattern, noun, plural)
        else:
            found += _expand(item, pattern, noun)
    if not found:
        raise InputError(none_source, none_given)
    out, seen = [], set()
    for path in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def _expand(item, pattern, noun, source=None):
    """The files of one path, glob or folder (`source`: the list naming it)."""
    where = f"{source}: {item}" if source else item
    if os.path.isdir(item):
        paths = sorted(p for p in glob.glob(os.path.join(glob.escape(item), pattern))
                       if os.path.isfile(p))
        if not paths:
            raise InputError(where, f"folder holds no {noun} ({pattern})")
        return paths
    if os.path.exists(item):
        return [item]
    if glob.has_magic(item):
        paths = []
        for match in sorted(glob.glob(item)):
            paths += _expand(match, pattern, noun, source) if os.path.isdir(match) else [match]
        if not paths:
            raise InputError(where, "matches no file")
        return paths
    raise InputError(where, "no such file")


def _from_list(path, name, pattern, noun, plural):
    """The files a list file names (one path, glob or folder a line)."""
    if not path:
        raise InputError(name, f"expected @FILE, a file listing {plural}")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, f"is a folder, not a list of {plural}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the list ({getattr(exc, 'strerror', None) or exc})"
                         ) from None
    folder = os.path.dirname(path)
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out += _expand(os.path.join(folder, os.path.expanduser(line)), pattern, noun,
                       source=path)
    if not out:
        raise InputError(path, f"lists no {noun}")
    return out
