"""Association (ASN) files: parse, validate, name the bad member."""

import json
import os
from dataclasses import dataclass, field

from .errors import InputError

__all__ = ["INTEGRATIONS_KEY", "AsnProduct", "Association", "check_integrations", "parse_asn",
           "read_asn"]

#: coron's own member key: the integrations (0-based) of a psf member that are used
INTEGRATIONS_KEY = "integrations"


@dataclass
class AsnProduct:
    """One output product of an association.

    Attributes
    ----------
    name : str
        Output root, e.g. 'jw89001-c1001_t001_nircam_f160w'.
    science, psf, background : list of str
        Member paths, in order: relative names resolved against the ASN
        file's folder ('..' allowed), absolute ones as given.
    integrations : dict of str to tuple of int
        For the psf members that carry coron's ``"integrations"`` key, their
        path -> the integrations used (0-based, increasing); a psf member
        not in it uses all of its integrations.
    expnames : dict of str to str
        Every member's path -> its expname as written (for messages).
    """

    name: str
    science: list = field(default_factory=list)
    psf: list = field(default_factory=list)
    background: list = field(default_factory=list)
    integrations: dict = field(default_factory=dict)
    expnames: dict = field(default_factory=dict)

    def integrations_of(self, path):
        """The integrations of member `path` to use (a tuple), or None for all."""
        return self.integrations.get(path)


@dataclass
class Association:
    """A parsed association: its id, its file and its products."""

    path: str
    asn_id: str
    products: list
    warnings: list = field(default_factory=list)


def read_asn(path, *, check_files=True):
    """Read and validate an association file.

    Parameters
    ----------
    path : str
        The JSON file.
    check_files : bool
        Also require every member file to exist.

    Returns
    -------
    Association

    Raises
    ------
    InputError
        Not found, not JSON, or not a valid association; the message names
        the product or member at fault.
    """
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    if os.path.isdir(path):
        raise InputError(path, "is a directory, not an association file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise InputError(path, "not a JSON association file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: "
                               f"{exc.msg})") from None
    except RecursionError:
        raise InputError(path, "not a usable JSON association file (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError(path, "not a usable JSON association file "
                               f"({str(exc).split(':')[0]})") from None
    return parse_asn(data, path=path, check_files=check_files)


def _require(cond, path, message):
    if not cond:
        raise InputError(path, message)


def parse_asn(data, *, path="<asn>", check_files=True):
    """Validate a decoded association (see :func:`read_asn`)."""
    _require(isinstance(data, dict), path, "an association must be a JSON object")
    asn_id = data.get("asn_id", "")
    if asn_id is None:
        asn_id = ""
    _require(isinstance(asn_id, str), path, "asn_id must be a string")
    _require(_safe_name(asn_id) or asn_id == "", path,
             f"asn_id {asn_id!r} is not a plain name")
    products = data.get("products")
    _require(isinstance(products, list), path, "has no 'products' list")
    _require(len(products) > 0, path, "has no products")
    folder = os.path.dirname(os.path.abspath(path)) if path != "<asn>" else os.getcwd()
    warn = []
    out = []
    names = set()
    for p, prod in enumerate(products):
        where = f"product {p}"
        _require(isinstance(prod, dict), path, f"{where} is not a JSON object")
        name = prod.get("name")
        _require(isinstance(name, str) and name.strip(), path, f"{where} has no name")
        _require(_safe_name(name), path,
                 f"{where} name {name!r} must be a plain file name (no folders)")
        _require(name not in names, path, f"product name {name!r} appears twice")
        names.add(name)
        where = f"product {name!r}"
        members = prod.get("members")
        _require(isinstance(members, list), path, f"{where} has no 'members' list")
        entry = AsnProduct(name=name)
        seen = {}
        for m, member in enumerate(members):
            _require(isinstance(member, dict), path, f"{where} member {m} is not a JSON object")
            exptype = member.get("exptype")
            expname = member.get("expname")
            _require(isinstance(expname, str) and expname.strip(), path,
                     f"{where} member {m}: expname must be a non-empty string")
            _require(isinstance(exptype, str), path,
                     f"{where} member {expname!r}: exptype must be a string")
            kind = exptype.strip().lower()
            if kind not in ("science", "psf", "background"):
                warn.append(f"{path}: member {expname!r} has exptype {exptype!r}; ignored")
                continue
            # relative to the association's folder, or as given when absolute (the JWST
            # pipeline's rule); '..' is allowed, as users' associations use it
            full = os.path.normpath(os.path.join(folder, expname))
            same = os.path.realpath(full)
            _require(same not in seen, path, f"member {expname!r} is listed twice")
            seen[same] = kind
            if check_files:
                _require(os.path.exists(full), path, f"member {expname!r} not found ({full})")
                _require(os.path.isfile(full), path, f"member {expname!r} is not a file")
            if INTEGRATIONS_KEY in member:
                _require(kind == "psf", path,
                         f"{where} member {expname!r}: '{INTEGRATIONS_KEY}' is for psf members "
                         f"only (coron uses every integration of a {kind} exposure)")
                entry.integrations[full] = _parse_integrations(
                    member[INTEGRATIONS_KEY], path, f"{where} member {expname!r}")
            entry.expnames[full] = expname
            {"science": entry.science, "psf": entry.psf,
             "background": entry.background}[kind].append(full)
        _require(entry.science, path, f"{where} has no science members")
        _require(entry.psf, path, f"{where} has no psf members")
        out.append(entry)
    return Association(path=path, asn_id=asn_id, products=out, warnings=warn)


def _parse_integrations(value, path, where):
    """A member's ``"integrations"``: a non-empty list of distinct integers >= 0, returned
    as an increasing tuple (the order of the file)."""
    _require(isinstance(value, list), path,
             f"{where}: '{INTEGRATIONS_KEY}' must be a list of integration numbers "
             f"(0-based), not {_short_json(value)}")
    _require(len(value) > 0, path,
             f"{where}: '{INTEGRATIONS_KEY}' is empty (leave the member out instead)")
    seen = set()
    for v in value:
        _require(isinstance(v, int) and not isinstance(v, bool) and v >= 0, path,
                 f"{where}: '{INTEGRATIONS_KEY}' must hold integers >= 0 (0-based), "
                 f"not {_short_json(v)}")
        _require(v not in seen, path, f"{where}: integration {v} is listed twice")
        seen.add(v)
    return tuple(sorted(seen))


def _short_json(value):
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_integrations(asn, product, member, nint):
    """Require the integrations an association names for psf `member` (a path of
    `product`) to exist in a file of `nint` integrations.

    Returns
    -------
    tuple of int or None
        The integrations to use (None: all).

    Raises
    ------
    InputError
        Naming the association and the member.
    """
    ints = product.integrations_of(member)
    if ints is None:
        return None
    if ints[-1] >= nint:
        name = product.expnames.get(member, member)
        raise InputError(asn.path, f"product {product.name!r} member {name!r}: integration "
                                   f"{ints[-1]} does not exist (the file has {nint}, numbered "
                                   "from 0)")
    return ints


def _safe_name(name):
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") \
        and "\x00" not in name
