"""The stack step: reference exposures into one psfstack, outliers flagged."""

import logging
import os

import numpy as np

from .. import core
from ..errors import InputError
from ..products import (
    Product,
    add_provenance,
    pixel_scale_arcsec,
    psf_fwhm_pix,
    star_center,
)
from ._common import _check_not_all_bad, _err_or_estimate, _frame_check
from .config import StackConfig

log = logging.getLogger("coron")


def prepare_science(product, *, bad_bits=core.DO_NOT_USE, outliers=True,
                    return_outliers=False):
    """Flag outliers and repair bad pixels of an exposure.

    Parameters
    ----------
    product : Product
        Exposure with SCI (nint, ny, nx).
    bad_bits : int
        DQ bits meaning "do not use".
    outliers : bool
        Search for unflagged outliers (cosmic rays): across integrations,
        and, where they cannot decide (one integration), only pixels sharper
        than the diffraction limit at the exposure's FILTER allows
        (:func:`coron_cli.core.find_outliers`), so that a companion is never
        taken for one.
    return_outliers : bool
        Also return the mask of the outliers found.

    Returns
    -------
    sci : ndarray of float32 (nint, ny, nx)
        Repaired copy.
    err : ndarray of float32
        ERR, estimated when missing.
    dq : ndarray of uint32
        DQ with new outliers flagged DO_NOT_USE | OUTLIER.
    nout : int
        Outliers found.
    hit : ndarray of bool (nint, ny, nx)
        Only with `return_outliers`: where they are.

    Notes
    -----
    The result is kept on the product (for the same SCI, DQ and ERR arrays
    and options) and given again as copies of DQ and the outlier mask: the
    align and KLIP steps, and the other exposures that use it as a roll
    reference, prepare an exposure once (``coron3 run``). The repaired SCI
    and ERR are shared: read-only.
    """
    key = (id(product.sci), id(product.dq), id(product.err), int(bad_bits), bool(outliers))
    memo = getattr(product, "_prepared", None)
    if memo is not None and memo[0] == key and memo[1] is product.sci:
        sci, err, dq, nout, hit = memo[2]
        out = sci, err, dq.copy(), nout
        return out + (hit.copy(),) if return_outliers else out
    out = _prepare(product, bad_bits, outliers)
    for a in out[:2]:
        a.flags.writeable = False
    product._prepared = (key, product.sci, out)
    sci, err, dq, nout, hit = out
    res = sci, err, dq.copy(), nout
    return res + (hit.copy(),) if return_outliers else res


def _prepare(product, bad_bits, outliers):
    """prepare_science, computed: (sci, err, dq, nout, hit)."""
    bad = core.bad_pixel_mask(product.sci, product.dq, bad_bits=bad_bits)
    _check_not_all_bad(product, bad)
    err = _err_or_estimate(product)
    dq = np.array(product.dq if product.dq is not None else np.zeros(product.sci.shape),
                  dtype=np.uint32)
    dq[~np.isfinite(product.sci)] |= np.uint32(core.DO_NOT_USE)  # repaired, stays flagged
    nout = 0
    hit = np.zeros(product.sci.shape, bool)
    if outliers:
        hit = _find_outliers(product, bad, err)
        nout = int(hit.sum())
        if nout:
            dq[hit] |= np.uint32(core.DO_NOT_USE | core.OUTLIER)
            bad = bad | hit
    # the integrations of one exposure show the same scene: repair across them first
    sci = core.repair_bad_pixels(product.sci, bad, groups=np.zeros(product.sci.shape[0], int))
    return (np.array(sci, dtype=np.float32), np.array(err, dtype=np.float32), dq, nout, hit)


def _find_outliers(product, bad, err):
    """core.find_outliers with the diffraction limit of the exposure's filter."""
    fwhm = psf_fwhm_pix(product.primary, product.sci_header)
    return core.find_outliers(product.sci, bad, err=err, psf_fwhm=fwhm)


def take_integrations(product, integrations):
    """The exposure `product` cut to some of its integrations (a new Product; the
    input is not changed).

    SCI, ERR and DQ keep the integrations listed (0-based, in their order);
    so do the extra images (VAR_*) and the INT_TIMES table when they have one
    layer or row per integration; NINTS is updated. `integrations` None
    returns `product` itself.

    Raises
    ------
    InputError
        An integration the exposure does not have (naming its file).
    """
    if integrations is None:
        return product
    nint = product.sci.shape[0]
    idx = np.asarray(integrations, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= nint:
        bad = idx[(idx < 0) | (idx >= nint)]
        raise InputError(product.path, f"has no integration {int(bad[0]) if bad.size else ''} "
                                       f"({nint} integration(s), numbered from 0)")
    images = {name: (data[idx] if np.ndim(data) >= 3 and np.shape(data)[0] == nint
                     else np.array(data), header.copy())
              for name, (data, header) in (product.images or {}).items()}
    tables = {name: (t[idx] if name == "INT_TIMES" and len(t) == nint else t.copy())
              for name, t in (product.tables or {}).items()}
    primary = product.primary.copy()
    if "NINTS" in primary:
        primary["NINTS"] = int(idx.size)
    return Product(sci=product.sci[idx], err=None if product.err is None else product.err[idx],
                   dq=None if product.dq is None else product.dq[idx], primary=primary,
                   sci_header=product.sci_header.copy(), tables=tables, images=images,
                   path=product.path)


def stack_step(exposures, config=None, *, asn_id=None, params=None, integrations=None,
               consume=False):
    """Concatenate reference exposures into a psfstack product.

    Outliers are searched for within each exposure (its integrations see the
    same scene) and flagged in DQ; SCI values are kept as read.

    Parameters
    ----------
    exposures : list of Product
        Reference exposures, cubes (nint_i, ny, nx).
    config : StackConfig, optional
        The DQ bits that mean "do not use" (default: the defaults).
    asn_id : str, optional
        Association id, written as ASN_ID.
    params : dict, optional
        Further provenance (the input names).
    integrations : list, optional
        For each exposure, None, or the numbers (0-based) in its file of the
        integrations it holds, when it was cut to some of them
        (:func:`take_integrations`, an association's ``"integrations"``):
        the REFS table's ``integration`` column and the HISTORY say them.
    consume : bool
        The caller hands `exposures` (a list) over: each entry is set to
        None once the exposure is in the stack, so that the references and
        the stack are not all held at once (the Products themselves are not
        changed).

    Returns
    -------
    Product
        SCI/ERR/DQ of shape (nref, ny, nx) and a REFS table (slice, file,
        integration, starcenx, starceny).
    """
    from astropy.table import Table

    config = config or StackConfig()
    bad_bits = config.bad_bits
    if not exposures:
        raise InputError(None, "no reference exposures to stack")
    if integrations is None:
        integrations = [None] * len(exposures)
    if len(integrations) != len(exposures):
        raise ValueError("integrations: one entry per exposure")
    labels = []
    for e, ints in zip(exposures, integrations):
        if ints is not None and len(ints) != e.sci.shape[0]:
            raise ValueError(f"{e.path}: {len(ints)} integration numbers for "
                             f"{e.sci.shape[0]} integration(s)")
        labels.append(np.arange(e.sci.shape[0]) if ints is None else np.asarray(ints, int))
    for i, e in enumerate(exposures):
        if np.ndim(e.sci) != 3:
            raise ValueError(f"cube {i} is not 3-D")
    first = exposures[0]
    for e in exposures[1:]:
        _frame_check(first, e, e.path)
    counts = [e.sci.shape[0] for e in exposures]
    shape = (sum(counts),) + tuple(first.sci.shape[-2:])
    primary, sci_header = first.primary, first.sci_header
    del first
    # the stack is filled an exposure at a time (no list of copies to concatenate); with
    # `consume` each exposure is dropped from the list once it is in
    sci = np.empty(shape, np.float32)
    err = np.empty(shape, np.float32)
    dq = np.empty(shape, np.uint32)
    rows = []
    nout = 0
    start = 0
    for k in range(len(exposures)):
        e = exposures[k]
        part = slice(start, start + counts[k])
        start = part.stop
        bad = core.bad_pixel_mask(e.sci, e.dq, bad_bits=bad_bits)
        _check_not_all_bad(e, bad)
        e_err = _err_or_estimate(e)
        e_dq = dq[part]
        e_dq[...] = e.dq
        e_dq[~np.isfinite(e.sci)] |= np.uint32(core.DO_NOT_USE)
        hit = _find_outliers(e, bad, e_err)
        e_dq[hit] |= np.uint32(core.DO_NOT_USE | core.OUTLIER)
        nout += int(hit.sum())
        sci[part] = e.sci
        err[part] = e_err
        (cx, cy), _ = star_center(e.sci_header, e.sci.shape)
        ox, oy = _dither_offset(e)
        rows.append((os.path.basename(e.path), e.sci.shape[0], cx, cy, ox, oy, _visit_key(e),
                     str(e.primary.get("PATTTYPE", ""))))
        del e, e_err, bad, hit, e_dq
        if consume:
            exposures[k] = None
    index = np.column_stack([np.repeat(np.arange(len(counts)), counts),
                             np.concatenate([np.arange(n) for n in counts])])
    refs = Table()
    refs["slice"] = np.arange(sci.shape[0], dtype=np.int32)
    refs["file"] = [rows[i][0] for i in index[:, 0]]
    refs["integration"] = np.array([labels[i][k] for i, k in index], dtype=np.int32)
    refs["integration"].description = "integration (0-based) in its file"
    refs["starcenx"] = np.array([rows[i][2] for i in index[:, 0]])
    refs["starceny"] = np.array([rows[i][3] for i in index[:, 0]])
    refs["xoffset"] = np.array([rows[i][4] for i in index[:, 0]])
    refs["yoffset"] = np.array([rows[i][5] for i in index[:, 0]])
    refs["xoffset"].unit = refs["yoffset"].unit = "pix"
    refs["xoffset"].description = "commanded dither offset (XOFFSET), pixels"
    refs["yoffset"].description = "commanded dither offset (YOFFSET), pixels"
    refs["visit"] = [rows[i][6] for i in index[:, 0]]
    refs["visit"].description = "star and visit (TARGNAME PROGRAM:OBSERVTN:VISIT)"
    refs["patttype"] = [rows[i][7] for i in index[:, 0]]
    params = {**(params or {}), **config.params()}
    primary = primary.copy()
    primary["NINTS"] = (sci.shape[0], "reference slices in the stack")
    if asn_id:
        primary["ASN_ID"] = (asn_id, "association id")
    summary = f"stacked {len(exposures)} exposures, {sci.shape[0]} slices; "
    history = [summary + f"{nout} outlier pixels flagged"]
    history += [f"ref: {r[0]}" + ("" if ints is None else f" (integrations {_int_list(ints)} only)")
                for r, ints in zip(rows, integrations)]
    primary = add_provenance(primary, "coron-stack", params, history=history)
    log.info("stacked %d exposures into %d slices (%d outliers flagged)",
             len(exposures), sci.shape[0], nout)
    return Product(sci=sci, err=err, dq=dq, primary=primary,
                   sci_header=sci_header.copy(), tables={"REFS": refs}, path="psfstack")


def _int_list(ints):
    """'0,2,5' (at most 20 numbers, then '...')."""
    ints = [int(i) for i in ints]
    text = ",".join(str(i) for i in ints[:20])
    return text + (",..." if len(ints) > 20 else "")


def _dither_offset(exposure):
    """Commanded dither offset (XOFFSET, YOFFSET; arcsec) of an exposure, in pixels.

    NaN when the header lacks them or the pixel scale is unknown.
    """
    h = exposure.primary
    if "XOFFSET" not in h or "YOFFSET" not in h:
        return np.nan, np.nan
    scale = pixel_scale_arcsec(exposure.sci_header) or h.get("PIXSCALE")
    try:
        return float(h["XOFFSET"]) / float(scale), float(h["YOFFSET"]) / float(scale)
    except (TypeError, ValueError, ZeroDivisionError):
        return np.nan, np.nan


def _visit_key(exposure):
    """Which star and visit an exposure belongs to: 'TARGNAME PROGRAM:OBSERVTN:VISIT'.

    References of one star in one visit share a target acquisition and a
    wavefront, so a dither model may be learned from them together. Missing
    keywords are left out; with none at all every exposure gets '' (one
    group, as before these keywords were read).
    """
    h = exposure.primary
    visit = ":".join(str(h[k]).strip() for k in ("PROGRAM", "OBSERVTN", "VISIT") if k in h)
    return " ".join(v for v in (str(h.get("TARGNAME", "")).strip(), visit) if v)


def _stack_dithers(psfstack):
    """Dither offsets (nref, 2; NaN where unknown) and visit labels (nref,) of a psfstack.

    None when the REFS table does not give offsets.
    """
    refs = psfstack.tables.get("REFS") if psfstack.tables else None
    if refs is None or "xoffset" not in refs.colnames or len(refs) != psfstack.sci.shape[0]:
        return None
    pos = np.column_stack([np.asarray(refs["xoffset"], float),
                           np.asarray(refs["yoffset"], float)])
    keys = np.asarray(refs["visit"]).astype(str) if "visit" in refs.colnames else \
        np.zeros(len(refs), dtype=str)
    _, groups = np.unique(keys, return_inverse=True)
    return pos, groups, keys


def _repair_stack(psfstack, bad_bits):
    """The stack's SCI with its bad pixels repaired (read-only).

    Made once per stack Product: the pipeline aligns one stack onto every science
    exposure. The result is kept on the Product with the SCI and DQ arrays it was made
    from, and made again if either was replaced or other bits are asked for.
    """
    memo = getattr(psfstack, "_repaired", None)
    if memo is not None and memo[0] is psfstack.sci and memo[1] is psfstack.dq \
            and memo[2] == int(bad_bits):
        return memo[3]
    if memo is not None and memo[0] is psfstack.sci and memo[3] is psfstack.sci:
        raise ValueError(f"{psfstack.path}: its SCI was replaced by the repair for bad bits "
                         f"{memo[2]} (keep_repaired); it cannot be repaired for {bad_bits}")
    bad = core.bad_pixel_mask(psfstack.sci, psfstack.dq, bad_bits=bad_bits)
    _check_not_all_bad(psfstack, bad)
    out = core.repair_bad_pixels(psfstack.sci, bad, groups=_stack_groups(psfstack))
    out.setflags(write=False)
    psfstack._repaired = (psfstack.sci, psfstack.dq, int(bad_bits), out)
    return out


def keep_repaired(psfstack, bad_bits):
    """Keep of a psfstack only what the align step uses, for ``coron3 run`` once the
    psfstack is written: its SCI is replaced by the repaired copy (:func:`_repair_stack`)
    and its DQ by its flagged pixels, ``(shape, (j, y, x), values)``, what
    :func:`coron_cli.core.shift_dq` takes (a few percent of the cube), so that the raw
    SCI and the DQ cube are freed. Aligning with other `bad_bits` then raises ValueError.
    """
    repaired = _repair_stack(psfstack, bad_bits)
    dq = np.asarray(psfstack.dq)
    where = np.nonzero(dq)
    psfstack.dq = (dq.shape, where, dq[where])
    del dq
    psfstack.sci = repaired
    psfstack._repaired = (repaired, psfstack.dq, int(bad_bits), repaired)
    return psfstack


def _stack_groups(psfstack):
    """Slice labels of a psfstack, one per source exposure (REFS file), or None."""
    refs = psfstack.tables.get("REFS") if psfstack.tables else None
    if refs is None or "file" not in refs.colnames or len(refs) != psfstack.sci.shape[0]:
        return None
    _, labels = np.unique(np.asarray(refs["file"]).astype(str), return_inverse=True)
    return labels
