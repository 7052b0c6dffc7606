"""Product-level steps: stack, align, klip, combine, hlsp.

Each step takes :class:`~coron_cli.products.Product` objects and returns new
ones; it calls :mod:`coron_cli.core` for the numerics and never touches a
file, so ``coron3 run`` and the single commands share every line of it.
Messages go through the ``coron`` logger.
"""

import logging
import os
from dataclasses import dataclass, replace

import numpy as np

from . import core, defaults
from .errors import InputError
from .products import (Product, add_provenance, lambda_over_d_pix, pixel_scale_arcsec,
                       psf_fwhm_pix, roll_angle, star_center)

__all__ = [
    "prepare_science",
    "background_step",
    "transmission_image",
    "product_transmission",
    "resolve_sky_order",
    "match_backgrounds",
    "stack_step",
    "align_step",
    "klip_step",
    "combine_step",
    "hlsp_step",
    "detect_step",
    "Injection",
    "klip_inject_step",
    "injection_separations",
    "combine_injections",
    "throughput_table",
    "add_throughput",
    "offaxis_image",
    "offaxis_flux",
    "parse_truncate",
    "estimate_err",
    "offaxis_peak",
]

log = logging.getLogger("coron")


def parse_truncate(value):
    """'5,10,30' or 50 -> [5, 10, 30] / [50]; ValueError if not positive integers."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v for v in str(value).replace(" ", "").split(",")]
    out = []
    for item in items:
        try:
            k = int(str(item))
        except ValueError:
            raise ValueError(f"--truncate must be positive integers, got {value!r}") from None
        if k < 1:
            raise ValueError(f"--truncate must be positive integers, got {value!r}")
        out.append(k)
    if not out:
        raise ValueError("--truncate is empty")
    return out


def estimate_err(sci):
    """Robust per-frame noise for data without ERR: 1.4826 MAD of pixel differences / sqrt 2.

    Returns an array of the shape of `sci` (float32), constant per frame.
    """
    s = np.asarray(sci, dtype=np.float64)
    flat = s.reshape(-1, *s.shape[-2:])
    d = np.diff(flat, axis=-1)
    d = np.where(np.isfinite(d), d, np.nan)
    med = np.nanmedian(d, axis=(1, 2), keepdims=True)
    sig = 1.4826 * np.nanmedian(np.abs(d - med), axis=(1, 2)) / np.sqrt(2.0)
    sig = np.where(np.isfinite(sig) & (sig > 0), sig, 1.0)
    return np.broadcast_to(sig[:, None, None], flat.shape).reshape(s.shape).astype(np.float32)


def _err_or_estimate(product):
    if product.err is not None:
        return product.err
    log.warning("%s: no ERR extension; estimating the noise from the data (robust per-frame)",
                product.path)
    return estimate_err(product.sci)


def _check_not_all_bad(product, bad):
    if bad.all():
        raise InputError(product.path, "all pixels are flagged DO_NOT_USE or not finite")


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
    """
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
    out = sci.astype(np.float32), np.asarray(err, dtype=np.float32), dq, nout
    return out + (hit,) if return_outliers else out


def _find_outliers(product, bad, err):
    """core.find_outliers with the diffraction limit of the exposure's filter."""
    fwhm = psf_fwhm_pix(product.primary, product.sci_header)
    return core.find_outliers(product.sci, bad, err=err, psf_fwhm=fwhm)


def _mjd(product):
    try:
        return float(product.primary.get("EXPSTART", np.nan))
    except (TypeError, ValueError):
        return np.nan


def match_backgrounds(backgrounds, science, references):
    """Split background exposures between the science and the references.

    A background goes with the science when its PROGRAM is that of the
    science exposures but not of the references (or the reverse); when the
    program does not decide (both sides share it, or it is missing), it
    goes with the side whose exposure is nearest to it in time (EXPSTART).
    Backgrounds of another FILTER than the exposures are left out.

    Parameters
    ----------
    backgrounds, science, references : list of Product

    Returns
    -------
    for_science, for_references, left_out : list of Product
    """
    def key(p, k):
        return str(p.primary.get(k, "")).strip().upper()

    filters = {key(p, "FILTER") for p in science + references} - {""}
    sci_prog = {key(p, "PROGRAM") for p in science} - {""}
    ref_prog = {key(p, "PROGRAM") for p in references} - {""}
    for_sci, for_ref, out = [], [], []
    for b in backgrounds:
        f = key(b, "FILTER")
        if f and filters and f not in filters:
            out.append(b)
            continue
        prog = key(b, "PROGRAM")
        if prog and (prog in sci_prog) != (prog in ref_prog):
            (for_sci if prog in sci_prog else for_ref).append(b)
            continue
        t = _mjd(b)
        ds = min((abs(_mjd(p) - t) for p in science), default=np.inf)
        dr = min((abs(_mjd(p) - t) for p in references), default=np.inf)
        if not np.isfinite(min(ds, dr)):
            (for_sci if science else for_ref).append(b)   # no times: the science's
        else:
            (for_sci if ds <= dr else for_ref).append(b)
    return for_sci, for_ref, out


def background_step(exposure, backgrounds, *, mode=defaults.BACKGROUND,
                    bad_bits=core.DO_NOT_USE):
    """Subtract the combined sky of background exposures from an exposure, if it is needed.

    Parameters
    ----------
    exposure : Product
        A science or reference exposure (nint, ny, nx).
    backgrounds : list of Product
        Its background exposures (empty sky, same set-up), combined robustly
        (:func:`coron_cli.core.combine_backgrounds`).
    mode : {"auto", "subtract", "off"}
        ``auto`` subtracts unless the exposure says the JWST stage 2 did it
        (S_BKDSUB = COMPLETE) or its sky is already far below the
        background's (the sky was removed without the keyword), see
        :func:`coron_cli.core.background_decision`.

    Returns
    -------
    product : Product
        A new product: SCI minus the sky, ERR with the sky's noise added in
        quadrature, DQ with DO_NOT_USE where no background frame was usable,
        BKGMODE/BKGSUB/BKGLEVEL/BKGNEXP cards and a HISTORY line; or the
        exposure itself, with those cards, when nothing is subtracted.
    reason : str
        What was done and why (one line, for the log).
    """
    primary = exposure.primary.copy()
    if not backgrounds:
        return exposure, ""
    for b in backgrounds:
        _frame_check(exposure, b, b.path)
    frames, errs, bads = [], [], []
    for b in backgrounds:
        bad = core.bad_pixel_mask(b.sci, b.dq, bad_bits=bad_bits)
        frames.append(b.sci)
        errs.append(b.err if b.err is not None else estimate_err(b.sci))
        bads.append(bad)
    sky, sky_err, nused = core.combine_backgrounds(np.concatenate(frames),
                                                   np.concatenate(errs), np.concatenate(bads))
    center, _ = star_center(exposure.sci_header, exposure.sci.shape)
    ebad = core.bad_pixel_mask(exposure.sci, exposure.dq, bad_bits=bad_bits)
    exp_sky = core.sky_level(exposure.sci, ebad, center=center)
    bkg_sky = core.sky_level(sky, ~np.isfinite(sky), center=center)
    subtract, reason = core.background_decision(
        mode, keyword=exposure.primary.get("S_BKDSUB"), science_sky=exp_sky,
        background_sky=bkg_sky, background_noise=float(np.nanmedian(sky_err)))
    primary["BKGMODE"] = (mode, "background handling asked for (auto/subtract/off)")
    primary["BKGSUB"] = (bool(subtract), "background exposures subtracted by coron")
    primary["BKGLEVEL"] = (float(bkg_sky) if np.isfinite(bkg_sky) else 0.0,
                           "sky level of the combined background exposures")
    primary["BKGSKY"] = (float(exp_sky) if np.isfinite(exp_sky) else 0.0,
                         "sky level of the exposure before subtraction")
    primary["BKGNEXP"] = (len(backgrounds), "background exposures combined")
    names = ", ".join(os.path.basename(b.path) for b in backgrounds)
    primary.add_history(f"background: {reason} [{names}]"[:2000])
    if not subtract:
        return replace(exposure, primary=primary), reason
    usable = np.isfinite(sky)
    sci = (np.asarray(exposure.sci, dtype=np.float64) - np.where(usable, sky, 0.0)[None])
    err = exposure.err if exposure.err is not None else estimate_err(exposure.sci)
    err = np.sqrt(np.asarray(err, dtype=np.float64) ** 2
                  + np.where(usable, sky_err, 0.0)[None] ** 2)
    dq = np.array(exposure.dq if exposure.dq is not None else np.zeros(sci.shape), np.uint32)
    dq[:, ~usable] |= np.uint32(core.DO_NOT_USE)
    return replace(exposure, sci=sci.astype(np.float32), err=err.astype(np.float32), dq=dq,
                   primary=primary), reason


def _frame_check(a, b, name_b):
    if a.sci.shape[-2:] != b.sci.shape[-2:]:
        (ny, nx), (my, mx) = a.sci.shape[-2:], b.sci.shape[-2:]
        raise InputError(name_b, f"frames are {mx}x{my} pixels but {a.path} has {nx}x{ny}")


def stack_step(exposures, *, bad_bits=core.DO_NOT_USE, asn_id=None, params=None):
    """Concatenate reference exposures into a psfstack product.

    Outliers are searched for within each exposure (its integrations see the
    same scene) and flagged in DQ; SCI values are kept as read.

    Parameters
    ----------
    exposures : list of Product
        Reference exposures, cubes (nint_i, ny, nx).

    Returns
    -------
    Product
        SCI/ERR/DQ of shape (nref, ny, nx) and a REFS table (slice, file,
        integration, starcenx, starceny).
    """
    from astropy.table import Table

    if not exposures:
        raise InputError(None, "no reference exposures to stack")
    first = exposures[0]
    for e in exposures[1:]:
        _frame_check(first, e, e.path)
    scis, errs, dqs, rows = [], [], [], []
    nout = 0
    for e in exposures:
        bad = core.bad_pixel_mask(e.sci, e.dq, bad_bits=bad_bits)
        _check_not_all_bad(e, bad)
        err = _err_or_estimate(e)
        dq = np.array(e.dq, dtype=np.uint32)
        dq[~np.isfinite(e.sci)] |= np.uint32(core.DO_NOT_USE)
        hit = _find_outliers(e, bad, err)
        dq[hit] |= np.uint32(core.DO_NOT_USE | core.OUTLIER)
        nout += int(hit.sum())
        scis.append(e.sci.astype(np.float32))
        errs.append(np.asarray(err, dtype=np.float32))
        dqs.append(dq)
        (cx, cy), _ = star_center(e.sci_header, e.sci.shape)
        ox, oy = _dither_offset(e)
        rows.append((os.path.basename(e.path), e.sci.shape[0], cx, cy, ox, oy, _visit_key(e),
                     str(e.primary.get("PATTTYPE", ""))))
    sci, index = core.stack_cubes(scis)
    err, _ = core.stack_cubes(errs)
    dq, _ = core.stack_cubes(dqs)
    refs = Table()
    refs["slice"] = np.arange(sci.shape[0], dtype=np.int32)
    refs["file"] = [rows[i][0] for i in index[:, 0]]
    refs["integration"] = index[:, 1].astype(np.int32)
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
    params = dict(params or {})
    params.setdefault("bad_bits", bad_bits)
    primary = first.primary.copy()
    primary["NINTS"] = (sci.shape[0], "reference slices in the stack")
    if asn_id:
        primary["ASN_ID"] = (asn_id, "association id")
    primary = add_provenance(primary, "coron-stack", params, history=[
        f"stacked {len(exposures)} exposures, {sci.shape[0]} slices; "
        f"{nout} outlier pixels flagged"] + [f"ref: {r[0]}" for r in rows])
    log.info("stacked %d exposures into %d slices (%d outliers flagged)",
             len(exposures), sci.shape[0], nout)
    return Product(sci=sci, err=err, dq=dq, primary=primary,
                   sci_header=first.sci_header.copy(), tables={"REFS": refs}, path="psfstack")


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
    bad = core.bad_pixel_mask(psfstack.sci, psfstack.dq, bad_bits=bad_bits)
    _check_not_all_bad(psfstack, bad)
    return core.repair_bad_pixels(psfstack.sci, bad, groups=_stack_groups(psfstack))


def _stack_groups(psfstack):
    """Slice labels of a psfstack, one per source exposure (REFS file), or None."""
    refs = psfstack.tables.get("REFS") if psfstack.tables else None
    if refs is None or "file" not in refs.colnames or len(refs) != psfstack.sci.shape[0]:
        return None
    _, labels = np.unique(np.asarray(refs["file"]).astype(str), return_inverse=True)
    return labels


def _shift_dq(dq, dx, dy):
    """DQ of shifted references: OR of the pixels the shift interpolates between.

    dq is (nref, ny, nx), dx/dy (nint, nref); returns (nint, nref, ny, nx).
    Only flagged pixels are visited, all at once. For one of the four
    neighbour offsets the map from source to destination pixel is a
    translation of each image, so no destination repeats and a plain indexed
    OR (no ufunc.at) is exact.
    """
    nint = dx.shape[0]
    nref, ny, nx = dq.shape
    out = np.zeros((nint, nref, ny, nx), dtype=np.uint32)
    j, y, x = np.nonzero(dq)
    if j.size == 0:
        return out
    val = np.broadcast_to(dq[j, y, x], (nint, j.size))
    fx = np.floor(dx).astype(np.int64)[:, j] + x
    fy = np.floor(dy).astype(np.int64)[:, j] + y
    base = (np.arange(nint, dtype=np.int64)[:, None] * nref + j) * ny          # (nint, n)
    flat = out.reshape(-1)
    for oy in (0, 1):
        row = (base + (fy + oy) % ny) * nx
        for ox in (0, 1):
            idx = row + (fx + ox) % nx
            flat[idx] |= val
    return out


def align_step(science, psfstack, *, mask=None, transmission=None,
               psfmask_weights=defaults.PSFMASK_WEIGHTS, max_shift=defaults.MAX_SHIFT,
               bad_bits=core.DO_NOT_USE, asn_id=None, method="auto", params=None):
    """Register the stacked references onto every science integration.

    Every (integration, reference) pair gets the rigid shift and flux scale
    that best match the reference to the science image
    (:func:`coron_cli.core.align_references`, a Fourier fit, weighted by
    `mask` when given). Behind a coronagraph that fit misreads the star's
    offset: the image does not move rigidly (the mask dims or lets through
    more of the halo as the star moves), and the fitted shift is about a
    linear map G of the true one (1.2x for a round Lyot mask, 2-3x along
    the axes of a four-quadrant mask, on coron's simulator). With `method`
    ``auto`` (or ``dither``), when references of one star and visit were
    dithered (REFS xoffset/yoffset, from XOFFSET/YOFFSET), G is measured by
    rigid fits between those references against their commanded offsets
    (:func:`coron_cli.core.shift_gain`: a linear map that must explain 90 %
    of their shifts, with a gain between 0.5 and 5; a one-dimensional bar
    dither measures it along the bar only), and every shift is corrected by
    it (SHIFTS method "fourier+gain"). A fit to a rigid shift cannot be
    validated by its residual here (the rigid shift is the one that
    minimises it), so the correction is validated by the commanded offsets
    it reproduces.

    ``dither`` also fits the empirical dither model of each dithered visit
    (:func:`coron_cli.core.dither_positions`) and uses it for the pairs
    where it fits the science integration better than the best rigidly
    shifted reference of the visit and agrees with the rigid fit to 1 pixel
    and 1.5x in flux (:func:`coron_cli.core.dither_model_shifts`; a model an
    exposure rejects gives one warning naming it). ``fourier`` uses the raw
    rigid fit.

    The fit weights are `mask` when given, else, with `psfmask_weights`, the
    coronagraph's `transmission` map (as the JWST stage weighs its fit).

    Bounds (:func:`coron_cli.core.bound_shifts`): a shift more than
    `max_shift` pixels from what the headers' star positions predict (0 for
    JWST data, whose target acquisition puts every star on the mask centre
    to a fraction of a pixel) is taken for the fit's confusion, not a
    motion, and replaced by the prediction (method "header", one warning
    naming the exposure); a flux factor more than 3x from the median of
    its reference star's is replaced by that median.

    The references are Fourier-shifted by the chosen offsets, and their ERR
    is the noise carried through that shift
    (:func:`coron_cli.core.shift_variance`).

    Returns
    -------
    Product
        SCI/ERR/DQ of shape (nint, nref, ny, nx) and a SHIFTS table (sci_int,
        ref, dx, dy, scale, method for each pair); the science star position
        in STARCENX/STARCENY; ALIGNMTH lists the methods used and ALGAINij
        the gain applied.
    """
    from astropy.table import Table

    _frame_check(science, psfstack, psfstack.path)
    if mask is not None and mask.shape != science.sci.shape[-2:]:
        raise InputError("--mask", f"mask is {mask.shape[1]}x{mask.shape[0]} pixels, frames are "
                                   f"{science.sci.shape[-1]}x{science.sci.shape[-2]}")
    _check_transmission(science, transmission)
    weights_from = "mask" if mask is not None else "none"
    if mask is None and psfmask_weights and transmission is not None:
        mask, weights_from = np.asarray(transmission, dtype=np.float64), "psfmask"
    sci, _, _, _ = prepare_science(science, bad_bits=bad_bits)
    refs = _repair_stack(psfstack, bad_bits)
    dith = _stack_dithers(psfstack) if method in ("auto", "dither") else None
    if method == "dither" and (dith is None or not core.dither_groups(dith[0], dith[1])):
        raise InputError(psfstack.path, "the dither method needs references of one visit at 3 "
                                        "or more non-collinear dither positions (REFS "
                                        "xoffset/yoffset)")
    nint, nref = sci.shape[0], refs.shape[0]
    how = np.full((nint, nref), "fourier", dtype=object)
    gain = None
    if dith is not None:
        gain, ginfo = core.shift_gain(refs, dith[0], dith[1], weights=mask)
        if gain is None:
            log.info("%s: no shift gain from the dithered references (%s)", psfstack.path,
                     ginfo["reason"])
        else:
            log.info("%s: shift gain of the rigid fit behind this coronagraph, from %d pairs "
                     "of dithered references: [[%.3f, %.3f], [%.3f, %.3f]] (r2 %.3f)",
                     psfstack.path, ginfo["npairs"], *gain.ravel(), ginfo["r2"])
    expected, allowance, labels, pointing = _expected_shifts(science, psfstack, nint, dith,
                                                             verified=gain is not None)
    if gain is None and method != "dither":
        aligned, dx, dy, scale = core.align_references(refs, sci, weights=mask)
        shifted = (dx.copy(), dy.copy())
    else:
        aligned = None
        if method == "dither":
            aligned, dx, dy, scale, resid = core.align_references(refs, sci, weights=mask,
                                                                  return_residual=True)
            rigid = (dx.copy(), dy.copy(), scale.copy(), resid)
        else:
            dx, dy, scale = core.align_references(refs, sci, weights=mask, fit_only=True)
        if gain is not None:
            # the gain maps a star's whole offset (dither included) to the fitted shift;
            # only the headers' common pointing offset is outside it
            dx, dy = core.apply_gain(dx, dy, gain, pointing)
            how[:] = "fourier+gain"
        if method == "dither":
            pos, groups, keys = dith
            mdx, mdy, mscale, used, report = core.dither_model_shifts(
                refs, pos, groups, sci, rigid, weights=mask)
            _report_dither_models(report, keys, science.path, psfstack.path, nint)
            dx, dy = np.where(used, mdx, dx), np.where(used, mdy, dy)
            scale = np.where(used, mscale, scale)
            how[used] = "dither"
        shifted = (rigid[0], rigid[1]) if aligned is not None else None
    dx, dy, scale, bad_shift, bad_scale = core.bound_shifts(
        dx, dy, scale, expected, labels, max_shift=max_shift + allowance[None, :])
    if bad_shift.any():
        how[bad_shift] = "header"
        log.warning("%s: %d of %d registration shifts are more than %g px from where the "
                    "pointing puts the star (a coronagraphic image that changes with the "
                    "star's offset, not a motion); those references are placed by the headers' "
                    "star positions instead", science.path, int(bad_shift.sum()), dx.size,
                    max_shift)
    if aligned is None:
        aligned, _, _, _ = core.align_references(refs, sci, shifts=(dx, dy, scale))
    else:
        redo = (dx != shifted[0]) | (dy != shifted[1])
        for i in range(nint):
            j = np.flatnonzero(redo[i])
            if j.size:
                aligned[i, j] = core.shift_stack(refs[j], dx[i, j][None], dy[i, j][None])[0]
    if bad_scale.any():
        log.warning("%s: %d flux factors far (> 3x) from those of the same reference star "
                    "replaced by their median", science.path, int(bad_scale.sum()))
    how = how.astype(str)
    used_how = ",".join(m for m in ("fourier", "fourier+gain", "dither", "header")
                        if (how == m).any())
    ref_err = psfstack.err if psfstack.err is not None else estimate_err(psfstack.sci)
    var = np.where(np.isfinite(ref_err), ref_err.astype(np.float64) ** 2, 0.0)
    err = core.shift_variance(var, dx, dy)       # float32; spectra of var computed once
    del var
    np.sqrt(err, out=err)
    dq = _shift_dq(np.asarray(psfstack.dq, dtype=np.uint32), dx, dy)
    shifts = Table()
    shifts["sci_int"] = np.repeat(np.arange(nint, dtype=np.int32), nref)
    shifts["ref"] = np.tile(np.arange(nref, dtype=np.int32), nint)
    shifts["dx"] = dx.ravel()
    shifts["dy"] = dy.ravel()
    shifts["scale"] = scale.ravel()
    shifts["method"] = how.ravel()
    for col, unit in (("dx", "pix"), ("dy", "pix")):
        shifts[col].unit = unit
    shifts["method"].description = (
        "fourier: rigid Fourier fit; fourier+gain: the same corrected by the shift gain "
        "measured on dithered references; dither: dither model of the reference's visit; "
        "header: the star positions of the headers (the fit was beyond the bound)")
    (cx, cy), src = star_center(science.sci_header, science.sci.shape)
    header = science.sci_header.copy()
    header["STARCENX"] = (cx, f"star x, 0-based pixels (from {src})")
    header["STARCENY"] = (cy, f"star y, 0-based pixels (from {src})")
    header["ALIGNMTH"] = (used_how, "registration methods used (SHIFTS method column)")
    if gain is not None:
        for (a, b), v in np.ndenumerate(gain):
            header[f"ALGAIN{a + 1}{b + 1}"] = (float(v), "rigid-fit shift gain behind the mask")
    params = dict(params or {})
    params.setdefault("mask", "none" if mask is None else "yes")
    params["fit_weights"] = weights_from
    params.setdefault("method", method)
    params["registration"] = used_how
    params.setdefault("bad_bits", bad_bits)
    primary = science.primary.copy()
    if asn_id:
        primary["ASN_ID"] = (asn_id, "association id")
    primary = add_provenance(primary, "coron-align", params, history=[
        f"aligned {nref} references to {nint} integrations ({used_how}); median |shift| "
        f"{np.median(np.hypot(dx, dy)):.3f} px, median scale {np.median(scale):.4f}"])
    log.info("aligned %d references onto %d integrations (median shift %.3f px; %s)",
             nref, nint, float(np.median(np.hypot(dx, dy))), used_how)
    return Product(sci=aligned, err=err, dq=dq, primary=primary, sci_header=header,
                   tables={"SHIFTS": shifts}, path="psfalign")


def _expected_shifts(science, psfstack, nint, dith=None, verified=False):
    """Shifts the headers predict ((nint, nref, 2): science minus reference star, dithers
    included), the allowance added to the bound for each reference ((nref,), pixels), the
    references' star/visit labels (from REFS; zeros and one label without it), and the
    shift of the pointing alone (the star positions of the headers, no dither).

    A dithered reference sits at its commanded offset from the pattern's mean (the
    pattern's origin is a header convention: MIRI's start at 0.2"). When the gain fit
    verified that the offsets are along the detector's axes (`verified`), they enter the
    prediction; otherwise the bound is widened by the offset instead.
    """
    nref = psfstack.sci.shape[0]
    (cx, cy), _ = star_center(science.sci_header, science.sci.shape)
    refs = psfstack.tables.get("REFS") if psfstack.tables else None
    expected = np.zeros((nint, nref, 2))
    allowance = np.zeros(nref)
    labels = np.zeros(nref, int)
    if refs is not None and len(refs) == nref:
        if "starcenx" in refs.colnames:
            rx = np.asarray(refs["starcenx"], float)
            ry = np.asarray(refs["starceny"], float)
            ok = np.isfinite(rx) & np.isfinite(ry)
            expected[:, ok, 0] = cx - rx[ok]
            expected[:, ok, 1] = cy - ry[ok]
        if "visit" in refs.colnames:
            _, labels = np.unique(np.asarray(refs["visit"]).astype(str), return_inverse=True)
    pointing = expected.copy()
    if dith is not None:
        pos, groups, _ = dith
        rel = np.zeros((nref, 2))
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            if np.isfinite(pos[idx]).all():
                rel[idx] = pos[idx] - pos[idx].mean(axis=0)
        if verified:
            expected -= rel[None]
        else:
            allowance = np.hypot(rel[:, 0], rel[:, 1])
    return expected, allowance, labels, pointing


def _check_transmission(science, transmission):
    if transmission is not None and np.shape(transmission) != science.sci.shape[-2:]:
        ty, tx = np.shape(transmission)
        raise InputError("--psfmask", f"transmission map is {tx}x{ty} pixels, frames are "
                                      f"{science.sci.shape[-1]}x{science.sci.shape[-2]}")


def _report_dither_models(report, keys, science_path, stack_path, nint):
    """Log what became of each dither model: one warning per model a science exposure rejects."""
    for entry in report:
        name = str(keys[entry["refs"][0]]) or os.path.basename(stack_path)
        what = f"the dither model of the {len(entry['refs'])} references of {name!r}"
        if entry["error"]:
            log.warning("%s: %s could not be fitted (%s); using rigid Fourier fits",
                        science_path, what, entry["error"])
            continue
        ok = entry["frame_ok"]
        if not ok.any():
            i = int(np.argmin(entry["model_resid"] / entry["rigid_resid"]))
            log.warning("%s: %s fits it worse than a rigid shift (residual %.3g against %.3g); "
                        "rejected, using rigid Fourier fits", science_path, what,
                        entry["model_resid"][i], entry["rigid_resid"][i])
        elif not ok.all():
            log.warning("%s: %s rejected for %d of %d integrations (worse than a rigid shift); "
                        "those use rigid Fourier fits", science_path, what,
                        int((~ok).sum()), nint)
        bad_refs = int((~entry["ref_ok"]).sum()) if ok.any() else 0
        if bad_refs or entry["pairs_out_of_bounds"]:
            log.warning("%s: %s disagrees with the rigid fit by more than 1 pixel or 1.5x in "
                        "flux for %d pairs (%d references off their commanded dither); those "
                        "use rigid Fourier fits", science_path, what,
                        entry["pairs_out_of_bounds"], bad_refs)
        elif ok.any():
            log.info("%s: %s used for %d of %d integrations", science_path, what,
                     int(ok.sum()), nint)


def _exclusion_mask(shape, exclude):
    fit = np.ones(shape, bool)
    if exclude:
        y, x = np.indices(shape)
        for (ex, ey, er) in exclude:
            fit &= np.hypot(x - ex, y - ey) > er
    return fit


def _length(text, value):
    """'4' / '4px' -> (4.0, 'pix'); '2lod' -> (2.0, 'lod'); ValueError if neither."""
    unit = "lod" if text.endswith("lod") else "pix"
    num = text[:-3] if unit == "lod" else (text[:-2] if text.endswith("px") else text)
    try:
        out = float(num)
    except ValueError:
        raise ValueError(f"zone width must be pixels or N lod (lambda/D), optionally "
                         f"@INNER, not {value!r}") from None
    if not np.isfinite(out):
        raise ValueError(f"zone width must be finite, not {value!r}")
    return out, unit


def parse_zone_width(value):
    """A zone layout: annuli of a width, beyond an inner radius.

    '4' -> (4.0, 'pix', 0.0, 'pix'); '2lod' -> (2.0, 'lod', 0.0, 'pix');
    '2lod@6lod' -> (2.0, 'lod', 6.0, 'lod'): annuli 2 lambda/D wide beyond
    6 lambda/D, the disk inside it one zone. '1lod@auto' -> (1.0, 'lod', nan,
    'auto'): the inner radius where an annulus first holds `ZONE_PIXELS_PER_MODE`
    pixels per KL mode (:func:`zone_width_pix`). None/''/'none' -> None.
    ValueError if bad.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        width, unit, inner, iunit = float(value), "pix", 0.0, "pix"
    else:
        text = str(value).strip().lower().replace(" ", "")
        if text in ("", "none", "off"):
            return None
        wtext, _, itext = text.partition("@")
        width, unit = _length(wtext, value)
        if itext == "auto":
            inner, iunit = float("nan"), "auto"
        else:
            inner, iunit = _length(itext, value) if itext else (0.0, "pix")
    if not width > 0 or inner < 0 or (np.isnan(inner) and iunit != "auto"):
        raise ValueError(f"zone width must be positive (and an inner radius not negative), "
                         f"not {value!r}")
    return width, unit, inner, iunit


#: with an automatic inner radius, annuli begin where they hold this many pixels per mode
ZONE_PIXELS_PER_MODE = 10.0


def zone_width_pix(science, value, nmodes=None):
    """A zone layout setting in pixels for an exposure: (width, inner) or None.

    lambda/D comes from the exposure's FILTER and pixel scale. An automatic
    inner radius is where an annulus of the width first holds
    ``ZONE_PIXELS_PER_MODE`` pixels per KL mode (`nmodes`): inside it a
    narrow zone has too few pixels for its coefficients and fits noise and
    faint sources away, so the coefficients there are fitted on the whole
    frame. Many references push it out (45 modes in 1 lambda/D annuli at
    NIRCam sampling: about 15 lambda/D); a handful of them (AU Mic's 6)
    bring it to the star. (:func:`_klip_geometry` also fits on the whole
    frame any annulus that the frame's edge cuts below that count.)
    """
    parsed = parse_zone_width(value)
    if parsed is None:
        return None
    width, unit, inner, iunit = parsed
    if iunit == "auto":
        inner, iunit = 0.0, "pix"
        auto = True
    else:
        auto = False
    lod = None
    if "lod" in (unit, iunit):
        lod = lambda_over_d_pix(science.primary, science.sci_header)
        if lod is None:
            lod = 2.0
            log.warning("%s: lambda/D unknown (no JWST FILTER or pixel scale); zones in "
                        "lambda/D taken at %g pixels per lambda/D", science.path, lod)
    width = width * lod if unit == "lod" else width
    inner = inner * lod if iunit == "lod" else inner
    if auto and nmodes:
        inner = ZONE_PIXELS_PER_MODE * float(nmodes) / (2.0 * np.pi * width)
    return width, inner


def _klip_geometry(science, psfalign, *, annuli=1, subsections=1, exclude=(),
                   transmission=None, min_transmission=0.0, zone_width=None, zone_fit="self",
                   nmodes=None):
    """What KLIP needs besides the science: references, star, zones and fit mask."""
    refs = psfalign.sci
    if not np.isfinite(refs).all():
        refs = core.repair_bad_pixels(refs, ~np.isfinite(refs))
    ny, nx = science.sci.shape[-2:]
    hdr = psfalign.sci_header if "STARCENX" in psfalign.sci_header else science.sci_header
    center, src = star_center(hdr, science.sci.shape)
    zones = None
    # an explicit --annuli N (N > 1) replaces the default layout of --zone-width
    layout = zone_width_pix(science, zone_width, nmodes) if annuli <= 1 else None
    fit_zones = None
    if zone_fit not in ("self", "around"):
        raise ValueError(f"zone_fit must be 'self' or 'around', not {zone_fit!r}")
    if layout is not None:
        zones = core.annulus_zones((ny, nx), center, width=layout[0], inner=layout[1],
                                   subsections=subsections)
        if zone_fit == "around":
            fit_zones = core.annulus_fit_zones(zones, center, margin=2.0 * layout[0])
        if layout[1] > 0:
            # inside the inner radius, the coefficients are fitted on the whole frame, as
            # without zones: near the star a narrow zone over-fits
            fit_zones = dict(fit_zones or {})
            fit_zones[int(zones.min())] = np.ones((ny, nx), bool)
        if str(zone_width).strip().lower().endswith("@auto") and nmodes:
            # so does any annulus the frame's edge cuts to fewer than 10 pixels per mode
            counts = np.bincount(zones.ravel())
            small = np.flatnonzero((counts > 0) & (counts < ZONE_PIXELS_PER_MODE * nmodes))
            if small.size:
                fit_zones = dict(fit_zones or {})
                for label in small:
                    fit_zones[int(label)] = np.ones((ny, nx), bool)
    elif annuli > 1 or subsections > 1:
        zones = core.annulus_zones((ny, nx), center, annuli=annuli, subsections=subsections)
    fit = _exclusion_mask((ny, nx), exclude)
    if not fit.any():
        raise InputError("--exclude", "the exclusion circles cover the whole image")
    if transmission is not None and min_transmission > 0:
        low = np.asarray(transmission) < min_transmission
        if (fit & ~low).sum() < 0.1 * fit.sum():
            log.warning("%s: fewer than 10%% of the pixels have a transmission of %g or more; "
                        "the transmission map is not used to restrict the KL fit",
                        science.path, min_transmission)
        else:
            fit = fit & ~low
    return refs, center, src, zones, fit, fit_zones


def klip_step(science, psfalign, *, truncate=(50,), annuli=1, subsections=1, exclude=(),
              protect=5.0, weights=defaults.WEIGHTS, annuli_width=2,
              bad_bits=core.DO_NOT_USE,
              transmission=None, min_transmission=defaults.MIN_TRANSMISSION,
              sky_order=defaults.SKY_ORDER, zone_width=defaults.ZONE_WIDTH,
              zone_fit=defaults.ZONE_FIT, params=None):
    """KLIP-subtract every science integration with its aligned references.

    Returns
    -------
    Product
        SCI: residual at the first truncation, shape (nint, ny, nx). With
        several truncations a KLSUB extension (ntrunc, nint, ny, nx) holds
        them all. ERR: see Notes. DQ: the science DQ with outliers flagged.

    Notes
    -----
    ERR is formed in two parts. First the propagated noise:
    ``sqrt(err_sci**2 + sum_j b_j**2 err_ref_j**2)``, the science noise plus
    the noise the references carry into the PSF model through its
    coefficients b (see :func:`coron_cli.core.klip_subtract`). Then the
    residual speckle noise, which no propagation sees, is measured: in
    annuli `annuli_width` pixels wide about the star the smallest extra
    variance is added that makes the 3-sigma clipped standard deviation of
    SCI/ERR equal to 1, with the sources (companions above 5 sigma, with their rings and halo)
    left out of that measurement (:func:`coron_cli.core.calibrate_error`).

    Pixel weights (`weights`): with "noise" (the default) the KL basis and
    the fit weigh every pixel by the inverse of its noise variance, the
    science ERR squared averaged over integrations
    (:func:`coron_cli.core.noise_weights`; flagged values left out), a
    generalised least-squares fit (:func:`coron_cli.core.klip_subtract`).
    Unweighted, the pixels next to the star, the brightest and noisiest,
    set the coefficients for the whole zone; weighted, the fainter halo
    farther out counts as its noise warrants. On the medium simulation
    (seeds 0-8) this lowered the residual noise at most planets inside
    8 lambda/D. "none" is classic, unweighted KLIP.

    Source protection (`protect`, an SNR; None or 0 turns it off): a
    companion inside the fitted region pulls the KL coefficients, so it
    loses flux and the star's halo around it is over-subtracted. The
    integrations are therefore averaged after a first pass, the sources
    above `protect` found (:func:`coron_cli.core.source_regions`) and left
    out of the fit of a second pass, like `exclude` circles (unless they
    would cover more than half of the fitted pixels). No protected disk
    reaches more than half-way from its source to the star: the bright
    pixels near the star carry most of the fit, and leaving them out
    changes the subtraction everywhere. KLPROTEC in the SCI
    header counts the pixels left out. Fake sources of
    :func:`klip_inject_step` are not protected: they measure the throughput
    of sources too faint to be found.
    """
    return _klip(science, psfalign, truncate=truncate, annuli=annuli, subsections=subsections,
                 exclude=exclude, protect=protect, weights=weights, annuli_width=annuli_width,
                 bad_bits=bad_bits, transmission=transmission,
                 min_transmission=min_transmission, sky_order=sky_order,
                 zone_width=zone_width, zone_fit=zone_fit, params=params)[0]


def klip_inject_step(science, psfalign, psf, *, fwhm=None, truncate=(50,), annuli=1,
                     subsections=1, exclude=(), protect=5.0, weights=defaults.WEIGHTS,
                     annuli_width=2,
                     bad_bits=core.DO_NOT_USE, transmission=None,
                     min_transmission=defaults.MIN_TRANSMISSION, sky_order=defaults.SKY_ORDER,
                     zone_width=defaults.ZONE_WIDTH, zone_fit=defaults.ZONE_FIT,
                     n_pa=6, step=1.0, inner=2.0, params=None):
    """:func:`klip_step` plus the algorithmic throughput, by fake-source injection.

    Fake point sources (the off-axis PSF, shifted) are placed at
    separations from ``inner * fwhm`` to the edge of the frame every
    ``step * fwhm`` pixels, at `n_pa` position angles each (east of north,
    through the exposure's roll); the sources of one image are spread by
    the golden angle so that they do not overlap
    (:func:`coron_cli.core.injection_grid`). The images are KLIP-subtracted
    with the science, as extra targets of the same decomposition (same
    aligned references, zones, fit mask and truncation), then averaged over
    integrations and measured (:func:`throughput_table`).

    Parameters
    ----------
    science, psfalign :
        As for :func:`klip_step`.
    psf : ndarray of shape (py, px)
        Unocculted PSF (:func:`offaxis_image`).
    fwhm : float, optional
        Resolution element in pixels (default 2).
    n_pa, step, inner :
        Grid: angles per separation, spacing and first separation (in fwhm).

    Returns
    -------
    psfsub : Product
        As :func:`klip_step`'s, plus a THROUGHPUT table.
    injection : Injection or None
        The fakes in the detector frame (first truncation); None, and no
        table, when the frame is too small for a single separation.

    Notes
    -----
    With its references fixed, KLIP is linear in the target image: every
    step (zone means, projection on the KL modes of the references,
    subtraction) is a linear map of the target, and the basis does not
    depend on it. So KLIP(science + fakes) = KLIP(science) + KLIP(fakes)
    exactly, and injecting into copies of the science, re-running KLIP with
    the same aligned references and taking the difference is the same as
    KLIP-subtracting the fakes alone, which is what is done, without the
    noise and without a second decomposition. The references are not
    re-aligned (fakes far fainter than the star would not move the
    registration), and bad-pixel repair and ERR do not enter the flux
    ratio. Inputs are not modified, and the science residual is the same
    as without fakes (to rounding).
    """
    fwhm = 2.0 if fwhm is None else float(fwhm)
    params = dict(params or {})
    params.update(contrast=True, fwhm=fwhm, inject_pa=int(n_pa), inject_step=float(step),
                  inject_inner=float(inner))
    product, inj = _klip(science, psfalign, truncate=truncate, annuli=annuli,
                         subsections=subsections, exclude=exclude, protect=protect,
                         weights=weights, annuli_width=annuli_width, bad_bits=bad_bits,
                         transmission=transmission, min_transmission=min_transmission,
                         sky_order=sky_order, zone_width=zone_width,
                         zone_fit=zone_fit, params=params,
                         fakes=dict(psf=psf, fwhm=fwhm, n_pa=n_pa, step=step, inner=inner,
                                    transmission=transmission))
    if inj is not None:
        product = add_throughput(product, throughput_table(
            inj, fwhm=fwhm, scale=pixel_scale_arcsec(science.sci_header)))
    return product, inj


#: extended sources (disks) are protected by their footprint too (see _sources_in)
EXTENDED_PROTECTION = True


def _sources_in(residual, err, model_var, center, threshold, annuli_width, lod=None):
    """Pixels of sources in an exposure's first KLIP pass (2-D bool).

    The integrations are averaged, the error of the mean calibrated in
    annuli, and the sources found in the significance map: a disk around
    every point source (:func:`coron_cli.core.source_regions`), and the
    footprint of extended ones (:func:`coron_cli.core.source_footprints`:
    smoothed significance above 2 connected to a peak above `threshold`,
    beyond 3 lambda/D of the star, where residual speckles are not taken
    for a source).
    """
    var = np.where(np.isfinite(err), err.astype(np.float64) ** 2, np.nan)
    if model_var is not None:
        var = var + model_var
    img, mvar = _mean_frames(residual, np.sqrt(var))
    e = core.calibrate_error(img, np.sqrt(mvar), center, width=annuli_width)
    z = np.nan_to_num(core.snr_image(img, e))
    found = core.source_regions(z, threshold, center=center, negative=False)
    if EXTENDED_PROTECTION:
        lod = 2.0 if lod is None else lod
        found |= core.source_footprints(z, threshold, low=2.0, smooth=0.5 * lod,
                                        inner=3.0 * lod, center=center,
                                        grow=max(1, int(round(0.5 * lod))))
    return found, z


def resolve_sky_order(science, sky_order):
    """The sky order for an exposure: an int as given, or for "auto" 2 behind a
    four-quadrant phase mask (CORONMSK contains 4QPM) and 1 otherwise."""
    if sky_order is None:
        return 0
    if str(sky_order).strip().lower() == "auto":
        mask = str(science.primary.get("CORONMSK", science.sci_header.get("CORONMSK", "")))
        return 2 if "4QPM" in mask.upper() else 1
    order = int(sky_order)
    if order < 0:
        raise ValueError(f"sky order must be auto or >= 0, not {sky_order!r}")
    return order


def _protected_fakes(inj, refs, fit, zones, fwhm, kw, fit_zones):
    """The fakes KLIP-subtracted as a source found above the protection threshold is:
    each image with its fakes' disks (1.5 fwhm) left out of the fit. In zones a few
    lambda/D wide the fit takes a good part of an unprotected source away, and a source
    bright enough to be detected (or to sit at the 5-sigma limit) is protected, so its
    throughput is this one. Returns (nimg, ny, nx), the mean over integrations."""
    ny, nx = fit.shape
    yy, xx = np.indices((ny, nx))
    out = np.empty(inj.model.shape)
    nint = refs.shape[0]
    for k, img in enumerate(inj.model):
        near = np.zeros((ny, nx), bool)
        for x, y in inj.positions[k]:
            near |= np.hypot(xx - x, yy - y) <= 1.5 * fwhm
        res, _, _ = core.klip_subtract(np.broadcast_to(img, (nint, ny, nx)), refs, zones=zones,
                                       fit_mask=fit & ~near, fit_zones=fit_zones,
                                       **dict(kw, truncations=kw["truncations"][:1],
                                              reference_variance=None))
        out[k] = res[0].astype(np.float64).mean(axis=0)
    return out


def _outliers_on_sources(science, hit, zmap, err, bad_bits, lod):
    """The outliers (nint, ny, nx) that are part of a source, to be given their values back.

    An outlier is part of a source when the source is there without it (it lies in the
    footprint of a source of the first KLIP pass, made from the repaired data) and its own
    value is not sharper than a point source allows in its frame (a cosmic ray on a
    companion is, and stays repaired). With one integration the outlier search flags only
    such sharp pixels, so nothing comes back; with several, a pixel the integrations
    disagree on can be a companion's, and comes back.
    """
    lod = 2.0 if lod is None else lod
    foot = core.source_footprints(zmap, 5.0, low=2.0, smooth=0.5 * lod, grow=0)
    cand = hit & foot[None]
    if not cand.any():
        return None
    bad = core.bad_pixel_mask(science.sci, science.dq, bad_bits=bad_bits)
    fwhm = psf_fwhm_pix(science.primary, science.sci_header)
    sharp = np.zeros(hit.shape, bool)
    for i in np.unique(np.nonzero(cand)[0]):
        sharp[i] = core.find_outliers(science.sci[i:i + 1], bad[i:i + 1], err=err[i:i + 1],
                                      psf_fwhm=fwhm)[0]
    return cand & ~sharp


def _klip(science, psfalign, *, truncate, annuli, subsections, exclude, annuli_width,
          bad_bits, params, protect=None, weights=defaults.WEIGHTS, transmission=None,
          min_transmission=0.0, sky_order=0, zone_width=None, zone_fit="self",
          fakes=None):
    """klip_step; with `fakes` (the grid of :func:`klip_inject_step`), also the Injection."""
    if weights not in ("noise", "none", None):
        raise ValueError(f"unknown weights {weights!r}; expected 'noise' or 'none'")
    sky_order = resolve_sky_order(science, sky_order)
    truncate = parse_truncate(truncate)
    if psfalign.sci.ndim != 4:
        raise InputError(psfalign.path, f"aligned references must be 4-D (nint, nref, ny, nx), "
                                        f"not {psfalign.sci.ndim}-D")
    _frame_check(science, psfalign, psfalign.path)
    nint = science.sci.shape[0]
    if psfalign.sci.shape[0] != nint:
        raise InputError(psfalign.path, f"has {psfalign.sci.shape[0]} integration layers but "
                                        f"the science exposure {science.path} has {nint}")
    nref = psfalign.sci.shape[1]
    # may refuse: before warning
    sci, err, dq, nout, hit = prepare_science(science, bad_bits=bad_bits, return_outliers=True)
    if max(truncate) > nref:
        log.warning("--truncate %s exceeds the %d references; using at most %d modes",
                    ",".join(map(str, truncate)), nref, nref)
    _check_transmission(science, transmission)
    refs, center, src, zones, fit, fit_zones = _klip_geometry(
        science, psfalign, annuli=annuli, subsections=subsections, exclude=exclude,
        transmission=transmission, min_transmission=min_transmission, zone_width=zone_width,
        zone_fit=zone_fit, nmodes=min(max(truncate), nref))
    ref_var = None
    if psfalign.err is not None:
        # float32, squared in place: one array the size of the references, not three
        ref_var = np.array(psfalign.err, dtype=np.float32)
        ref_var[~np.isfinite(ref_var)] = 0.0
        np.square(ref_var, out=ref_var)
    inj = None
    targets = sci
    if fakes is not None:
        inj = _injection_grid(science, center, **fakes)
        if inj is not None:
            targets = np.concatenate(
                [sci[:, None], np.broadcast_to(inj.model[None], (nint,) + inj.model.shape)],
                axis=1)
    fw = None
    if weights == "noise":
        fw = core.noise_weights(err, center, bad=(dq & np.uint32(bad_bits)) != 0,
                                width=annuli_width)
    kw = dict(truncations=truncate, fit_weights=fw, reference_variance=ref_var,
              sky_order=sky_order)
    residual = mvar = None
    protected = 0
    found = zmap = None
    lod = lambda_over_d_pix(science.primary, science.sci_header)
    if protect or nout:
        # sources are found on a pass over the whole frame: a zone a few lambda/D wide
        # fits part of a source away, which would hide it
        if zones is None:
            residual, mvar, nmodes = core.klip_subtract(targets, refs, fit_mask=fit, **kw)
            first = residual[0] if inj is None else residual[0][:, 0]
            fvar = None if mvar is None else (mvar[0] if inj is None else mvar[0][:, 0])
        else:
            fres, fmv, _ = core.klip_subtract(sci, refs, fit_mask=fit,
                                              **dict(kw, truncations=truncate[:1]))
            first, fvar = fres[0], None if fmv is None else fmv[0]
            del fres, fmv
        found, zmap = _sources_in(first, err, fvar, center, protect or 5.0, annuli_width,
                                  lod=lod)
        del first, fvar
    back = _outliers_on_sources(science, hit, zmap, err, bad_bits, lod) if nout else None
    if protect:
        found = found & fit
        if found.any() and found.sum() <= 0.5 * fit.sum():
            protected = int(found.sum())
            log.info("protecting %d pixels of sources above %g sigma from the KL fit",
                     protected, protect)
            fit = fit & ~found
            residual = None
    if residual is None:
        residual, mvar, nmodes = core.klip_subtract(targets, refs, zones=zones, fit_mask=fit,
                                                    fit_zones=fit_zones, **kw)
    if inj is not None:
        recovered = residual[0, :, 1:].astype(np.float64).mean(axis=0)
        protected_fakes = None
        if protect and zones is not None:
            protected_fakes = _protected_fakes(inj, refs, fit, zones, fakes["fwhm"], kw,
                                               fit_zones)
        inj = replace(inj, recovered=recovered, recovered_protected=protected_fakes)
        residual = np.ascontiguousarray(residual[:, :, 0])
        mvar = None if mvar is None else mvar[:, :, 0]
    restored = 0
    if back is not None and back.any():
        # outliers that are part of a source were signal: their own values come back (KLIP
        # is linear in the target; a protected source's pixels are not in the fit)
        restored = int(back.sum())
        delta = np.where(back, np.asarray(science.sci, np.float64) - sci, 0.0)
        residual = residual + delta[None].astype(np.float32)
        dq[back] &= ~np.uint32(core.DO_NOT_USE | core.OUTLIER)
        log.info("%s: %d pixel(s) flagged as outliers are part of a source; their values are "
                 "kept", science.path, restored)
    var = np.where(np.isfinite(err), err.astype(np.float64) ** 2, np.nan)
    if mvar is not None:
        var = var + mvar[0]
    out_err = core.calibrate_error(residual[0], np.sqrt(var), center, width=annuli_width)
    header = science.sci_header.copy()
    header["STARCENX"] = (center[0], f"star x, 0-based pixels (from {src})")
    header["STARCENY"] = (center[1], f"star y, 0-based pixels (from {src})")
    header["KLMODES"] = (",".join(str(int(k)) for k in nmodes[:, 0]),
                         "KL modes used (per truncation)")
    header["KLPROTEC"] = (protected, "source pixels left out of the KL fit")
    header["OUTLRSTR"] = (restored, "outlier pixels on a source given their values back")
    images = {}
    if len(truncate) > 1:
        from astropy.io import fits

        kh = fits.Header()
        kh["KLMODES"] = (",".join(str(k) for k in truncate), "truncations along axis 1 (FITS 4)")
        kh["STARCENX"] = center[0]
        kh["STARCENY"] = center[1]
        images["KLSUB"] = (residual, kh)
    if transmission is not None:
        images["TRANSMIS"] = transmission_image(transmission, center)
    params = dict(params or {})
    params.update(truncate=truncate, annuli=annuli, subsections=subsections,
                  protect=protect or "off", weights=weights or "none",
                  exclude=";".join(f"{a:g},{b:g},{c:g}" for a, b, c in exclude) or "none",
                  annuli_width=annuli_width, sky_order=int(sky_order),
                  zone_width=str(zone_width) if zone_width else "none",
                  zone_fit=zone_fit,
                  min_transmission=float(min_transmission) if transmission is not None
                  else "no map")
    primary = add_provenance(science.primary, "coron-klip", params, history=[
        f"KLIP with {nref} references, modes used {nmodes[:, 0].tolist()}, "
        f"zones {annuli}x{subsections}"])
    log.info("KLIP-subtracted %d integrations with %d references (modes %s)",
             nint, nref, ",".join(str(int(k)) for k in nmodes[:, 0]))
    return Product(sci=residual[0], err=out_err, dq=dq, primary=primary, sci_header=header,
                   images=images, path="psfsub"), inj


def transmission_image(transmission, center):
    """(array, header) of the TRANSMIS extension: the coronagraph's transmission map."""
    from astropy.io import fits

    h = fits.Header()
    h["BUNIT"] = ("", "intensity transmission of the coronagraph, 1 = unobstructed")
    h["STARCENX"] = (float(center[0]), "star x, 0-based pixels")
    h["STARCENY"] = (float(center[1]), "star y, 0-based pixels")
    return np.asarray(transmission, dtype=np.float32), h


def product_transmission(product):
    """The TRANSMIS map a product carries (2-D float64), or None."""
    entry = product.images.get("TRANSMIS") if product.images else None
    if entry is None:
        return None
    t = np.asarray(entry[0], dtype=np.float64)
    return t if t.shape == product.sci.shape[-2:] else None


def _mean_over_integrations(product):
    sci = np.asarray(product.sci, dtype=np.float64)
    if sci.ndim == 2:
        sci = sci[None]
    err = product.err if product.err is not None else estimate_err(sci)
    return _mean_frames(sci, err)


def _mean_frames(sci, err):
    """Mean over integrations of (nint, ny, nx) images and the variance of the mean."""
    sci = np.asarray(sci, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64).reshape(sci.shape)
    good = np.isfinite(sci) & np.isfinite(err) & (err > 0)
    n = good.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(n > 0, np.where(good, sci, 0).sum(axis=0) / n, np.nan)
        var = np.where(n > 0, np.where(good, err ** 2, 0).sum(axis=0) / n ** 2, np.nan)
    return img, var


def combine_step(psfsubs, *, annuli_width=2, params=None):
    """Combine KLIP-subtracted exposures into one north-up image (i2d).

    Each exposure's integrations are averaged, rotated about the star to
    north-up (angle from its WCS, else ROLL_REF) with the star at the frame
    centre, and the exposures are averaged with inverse-variance weights.
    The error is then recalibrated on the combined residuals in annuli,
    both ways: raised where residual speckles exceed it, and scaled down
    where the rotation's interpolation, which smooths the noise, has left
    the propagated error larger than the residual spread
    (:func:`coron_cli.core.calibrate_error` with ``deflate=True``).

    Returns
    -------
    Product
        2-D SCI/ERR/DQ with a north-up celestial WCS and STARCENX/STARCENY.
    """
    from astropy.io import fits

    if not psfsubs:
        raise InputError(None, "nothing to combine")
    first = psfsubs[0]
    ny, nx = first.sci.shape[-2:]
    out_center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    imgs, vars_, hist, trans = [], [], [], []
    for p in psfsubs:
        _frame_check(first, p, p.path)
        img, var = _mean_over_integrations(p)
        angle, src = roll_angle(p.sci_header, p.primary)
        if angle is None:
            log.warning("%s: no WCS and no ROLL_REF; assuming the image is north-up", p.path)
            angle = 0.0
        center, _ = star_center(p.sci_header, p.sci.shape)
        imgs.append(core.north_up(img, angle, center, out_center=out_center, order=3))
        vars_.append(core.north_up(var, angle, center, out_center=out_center, order=1))
        t = product_transmission(p)
        trans.append(None if t is None else
                     core.north_up(t, angle, center, out_center=out_center, order=1))
        hist.append(f"{os.path.basename(p.path)}: rotated by {angle:.3f} deg ({src}) about "
                    f"({center[0]:.3f}, {center[1]:.3f})")
    img, var = core.combine_images(np.stack(imgs), np.stack(vars_))
    images = {}
    if all(t is not None for t in trans):
        # what a source at each sky position keeps, weighted as the images are
        tmap, _ = core.combine_images(np.stack(trans), np.stack(vars_))
        images["TRANSMIS"] = transmission_image(np.nan_to_num(tmap), out_center)
    err = core.calibrate_error(img, np.sqrt(var), out_center, width=annuli_width, deflate=True)
    dq = np.where(np.isfinite(img), 0, core.DO_NOT_USE).astype(np.uint32)
    header = fits.Header()
    scale = pixel_scale_arcsec(first.sci_header)
    ra, dec = _star_world(first)
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRPIX1"], header["CRPIX2"] = out_center[0] + 1.0, out_center[1] + 1.0
    header["CRVAL1"], header["CRVAL2"] = ra, dec
    s = (scale if scale else 1.0) / 3600.0
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = -s, 0.0, 0.0, s
    if not scale:
        header["COMMENT"] = "pixel scale unknown: WCS scale is a placeholder of 1 arcsec"
    header["STARCENX"] = (out_center[0], "star x, 0-based pixels")
    header["STARCENY"] = (out_center[1], "star y, 0-based pixels")
    header["NCOMBINE"] = (len(psfsubs), "exposures combined")
    for key in ("BUNIT",):
        if key in first.sci_header:
            header[key] = first.sci_header[key]
    params = dict(params or {})
    params.setdefault("annuli_width", annuli_width)
    primary = add_provenance(first.primary, "coron3 combine", params, history=hist)
    log.info("combined %d exposures north-up", len(psfsubs))
    return Product(sci=img.astype(np.float32), err=err, dq=dq, primary=primary,
                   sci_header=header, images=images, path="i2d")


def _star_world(product):
    """RA, Dec of the star from the product's WCS (0, 0 if there is none)."""
    from .products import _celestial_wcs

    w = _celestial_wcs(product.sci_header)
    if w is None:
        return 0.0, 0.0
    (cx, cy), _ = star_center(product.sci_header, product.sci.shape)
    ra, dec = w.all_pix2world([[cx, cy]], 0)[0]
    return float(ra), float(dec)


def _throughput_at(throughput, radius, method, protected=False):
    """Throughput interpolated at `radius` (NaN outside the measured separations).

    `protected`: that of a source left out of the fit, when the table has it
    (a detection: found above the protection threshold).
    """
    col = "throughput_aperture" if method == "aperture" else "throughput"
    if protected and col.replace("throughput", "throughput_protected") in throughput.colnames:
        col = col.replace("throughput", "throughput_protected")
    r = np.asarray(throughput["radius"], dtype=np.float64)
    t = np.asarray(throughput[col], dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(t)
    if ok.sum() == 0:
        return np.full(np.shape(radius), np.nan)
    return np.interp(radius, r[ok], t[ok], left=np.nan, right=np.nan)


def _star_cards(primary, star_flux, method, fwhm):
    primary["STARFLUX"] = (float(star_flux), f"star flux used for contrast ({method})")
    primary["STARFMTH"] = (method, "star flux: peak pixel or aperture sum")
    if method == "aperture":
        primary["STARFAPD"] = (float(fwhm), "aperture diameter for the star flux, pixels")


def hlsp_step(image, *, annuli_width=2, star_flux=None, star_flux_method="peak", fwhm=None,
              snr_method="ratio", throughput=None, params=None):
    """High-level products of a KLIP-subtracted image: SNR image and contrast table.

    Parameters
    ----------
    image : Product
        2-D image or 3-D cube (averaged over integrations first). A
        THROUGHPUT table in it (from :func:`throughput_table`) is used when
        `throughput` is not given.
    annuli_width : int
        Annulus width in whole pixels.
    star_flux : float, optional
        The star's unocculted flux in the image's units, measured as
        `star_flux_method` says; adds the 5-sigma contrast column.
    star_flux_method : {"peak", "aperture"}
        ``peak``: the star flux is the PSF's peak pixel and the noise is the
        per-pixel standard deviation in the annulus (column ``sigma``).
        ``aperture``: the star flux is the sum in a disk of diameter `fwhm`
        and the noise the standard deviation of such aperture sums in the
        annulus (column ``sigma_aperture``).
    fwhm : float, optional
        Resolution element in pixels for the small-sample correction and
        the apertures (default 2, about lambda/D at Nyquist sampling).
    snr_method : {"ratio", "mawet"}
        ``ratio``: SCI/ERR. ``mawet``: the per-pixel aperture t-test of
        Mawet et al. 2014 (:func:`coron_cli.core.snr_map_mawet`).
    throughput : astropy.table.Table, optional
        Algorithmic throughput against radius (columns radius, throughput,
        throughput_aperture).

    Returns
    -------
    snr : Product
        SCI = the SNR map (NaN where it is undefined).
    contrast : Product
        No image; a CONTRAST table (radius, sigma, npix, and radius_arcsec,
        sigma_aperture, contrast_5sigma, throughput, contrast_5sigma_calibrated
        when known) and the THROUGHPUT table when there is one.

    Notes
    -----
    ``contrast_5sigma = student_t_factor(2 pi r / fwhm) * noise / star_flux``
    (:func:`coron_cli.core.contrast_curve`, Mawet et al. 2014), and
    ``contrast_5sigma_calibrated = contrast_5sigma / throughput(r)``, the
    throughput interpolated linearly at each radius (NaN outside the
    separations where it was measured).
    """
    from astropy.table import Table

    if int(annuli_width) < 1:
        raise InputError("--annuli-width", "must be a positive integer")
    if star_flux_method not in ("peak", "aperture"):
        raise InputError("--star-flux-method",
                         f"must be peak or aperture, not {star_flux_method!r}")
    if snr_method not in ("ratio", "mawet"):
        raise InputError("--snr-method", f"must be ratio or mawet, not {snr_method!r}")
    img, var = _mean_over_integrations(image)
    err = np.sqrt(var)
    if not np.isfinite(image.sci).any():  # zero/NaN ERR only makes NaN SNR there
        raise InputError(image.path, "no finite pixel in SCI")
    if throughput is None:
        throughput = image.tables.get("THROUGHPUT")
    center, src = star_center(image.sci_header, img.shape)
    fwhm = 2.0 if fwhm is None else float(fwhm)
    if snr_method == "mawet":
        snr = core.snr_map_mawet(img, center, fwhm=fwhm)
    else:
        snr = core.snr_image(img, err)
    radius, sigma, npix = core.annular_profile(img, center, width=int(annuli_width))
    table = Table()
    table["radius"] = radius
    table["radius"].unit = "pix"
    scale = pixel_scale_arcsec(image.sci_header)
    if scale:
        table["radius_arcsec"] = radius * scale
        table["radius_arcsec"].unit = "arcsec"
    table["npix"] = npix
    table["sigma"] = sigma
    noise = sigma
    if star_flux_method == "aperture":
        ar, asig, _ = core.annular_profile(core.aperture_sums(img, fwhm=fwhm), center,
                                           width=int(annuli_width))
        sig_ap = np.full(radius.shape, np.nan)
        idx = np.searchsorted(radius, ar)
        hit = (idx < radius.size) & (radius[np.minimum(idx, radius.size - 1)] == ar)
        sig_ap[idx[hit]] = asig[hit]
        table["sigma_aperture"] = sig_ap
        table["sigma_aperture"].description = (f"standard deviation of the sums in disks of "
                                               f"diameter {fwhm:g} pix")
        noise = sig_ap
    if star_flux:
        table["contrast_5sigma"] = core.contrast_curve(radius, noise, star_flux=star_flux,
                                                       fwhm=fwhm)
        table["contrast_5sigma"].description = (
            "5-sigma-equivalent detection limit / star flux, Student-t corrected "
            "(Mawet et al. 2014)")
    tmap = product_transmission(image)
    factor, parts = np.ones(radius.shape), []
    if throughput is not None:
        table["throughput"] = _throughput_at(throughput, radius, star_flux_method)
        factor, parts = factor * table["throughput"], parts + ["algorithmic throughput"]
    if tmap is not None:
        tr, tm = core.annular_mean(tmap, center, width=int(annuli_width))
        table["transmission"] = np.interp(radius, tr, tm) if tr.size else np.nan
        table["transmission"].description = "coronagraph transmission, mean in the annulus"
        factor, parts = factor * table["transmission"], parts + ["coronagraph transmission"]
    if parts and star_flux:
        with np.errstate(invalid="ignore", divide="ignore"):
            table["contrast_5sigma_calibrated"] = np.where(
                factor > 0, table["contrast_5sigma"] / factor, np.nan)
        table["contrast_5sigma_calibrated"].description = \
            "contrast_5sigma / (" + " x ".join(parts) + ")"
    params = dict(params or {})
    params.update(annuli_width=int(annuli_width), star_flux=star_flux, fwhm=fwhm,
                  star_flux_method=star_flux_method, snr_method=snr_method,
                  throughput="yes" if throughput is not None else "none")
    primary = add_provenance(image.primary, "coron-hlsp", params)
    if star_flux:
        _star_cards(primary, star_flux, star_flux_method, fwhm)
    header = image.sci_header.copy()
    header["STARCENX"] = (center[0], f"star x, 0-based pixels (from {src})")
    header["STARCENY"] = (center[1], f"star y, 0-based pixels (from {src})")
    header["BUNIT"] = ("", "signal-to-noise ratio")
    header["SNRMETH"] = (snr_method, "ratio: SCI/ERR; mawet: aperture t-test map")
    if snr_method == "mawet":
        header["SNRFWHM"] = (fwhm, "aperture diameter of the t-test, pixels")
    dq = np.where(np.isfinite(snr), 0, core.DO_NOT_USE).astype(np.uint32)
    snr_product = Product(sci=snr, err=None, dq=dq, primary=primary, sci_header=header,
                          path="snr")
    tables = {"CONTRAST": table}
    if throughput is not None:
        tables["THROUGHPUT"] = throughput
    contrast_product = Product(sci=None, primary=primary.copy(), tables=tables,
                               path="contrast")
    return snr_product, contrast_product


def detect_step(image, snr, *, threshold=5.0, inner_radius=None, fwhm=None, star_flux=None,
                star_flux_method="peak", throughput=None, psf=None, params=None):
    """Point-source candidates in an SNR map: a DETECTIONS table.

    Parameters
    ----------
    image : Product
        The KLIP-subtracted image (2-D, or a cube averaged over integrations)
        the SNR map was made from: fluxes are measured in it; its WCS (or
        ROLL_REF) orients the position angles; a THROUGHPUT table in it is
        used when `throughput` is not given.
    snr : Product
        The SNR map (:func:`hlsp_step`).
    threshold : float
        Candidates are local maxima with ``snr >= threshold``.
    inner_radius : float, optional
        The star's core, not searched: pixels (default ``2 fwhm``).
    fwhm : float, optional
        Resolution element in pixels (default 2).
    star_flux, star_flux_method :
        As for :func:`hlsp_step`: with a star flux, the contrast columns.
    psf : ndarray of shape (py, px), optional
        Unocculted PSF: with it, maxima that the rings and spikes of a
        brighter candidate can explain are not candidates
        (:func:`coron_cli.core.find_candidates`); without it, only maxima
        within 2 fwhm of a brighter one are merged.

    Returns
    -------
    Product
        No image; a DETECTIONS table with one row per candidate, brightest
        first: x, y (0-based pixels: the image's peak within fwhm / 2 of the
        SNR peak, to sub-pixel), sep (pixels), sep_arcsec (when the
        scale is known), pa (degrees east of north), snr, flux (peak pixel,
        or background-subtracted aperture sum, following
        `star_flux_method`), contrast (flux / star flux) and
        contrast_calibrated (divided by the throughput at that separation
        and by the coronagraph's transmission at the position, as known)
        when known.

    Notes
    -----
    The position angle is ``roll + atan2(-dx, dy)`` with (dx, dy) the offset
    from the star and roll the position angle of the image's +y axis (0 for
    a north-up i2d; the WCS roll of a detector-frame psfsub), which assumes
    the usual sky parity (east to the left when north is up). Without WCS
    or ROLL_REF, the angle is counted from the image's +y axis and the
    table's PAFRAME says so.
    """
    from astropy.table import Table

    img, _ = _mean_over_integrations(image)
    center, _ = star_center(image.sci_header, img.shape)
    fwhm = 2.0 if fwhm is None else float(fwhm)
    inner = 2.0 * fwhm if inner_radius is None else float(inner_radius)
    if throughput is None:
        throughput = image.tables.get("THROUGHPUT")
    snr_map = np.asarray(snr.sci, dtype=np.float64).reshape(img.shape)
    flux_map = envelope = None
    if psf is not None:
        if snr.sci_header.get("SNRMETH") == "mawet":
            flux_map = core.aperture_sums(img, fwhm=fwhm)
            envelope = core.psf_envelope(psf, fwhm=fwhm)
        else:
            flux_map, envelope = img, core.psf_envelope(psf)
    cand = core.find_candidates(snr_map, center, threshold=threshold, inner_radius=inner,
                                fwhm=fwhm, flux=flux_map, envelope=envelope)
    s = cand[:, 2]
    x, y = core.refine_peaks(img, cand[:, :2], radius=0.5 * fwhm).T
    dx, dy = x - center[0], y - center[1]
    roll, roll_src = roll_angle(image.sci_header, image.primary)
    frame = f"east of north (image +y axis at {roll:.3f} deg, from {roll_src})" \
        if roll is not None else "from the image +y axis (no WCS or ROLL_REF)"
    table = Table()
    table["x"], table["y"] = x, y
    table["sep"] = np.hypot(dx, dy)
    for col in ("x", "y", "sep"):
        table[col].unit = "pix"
    scale = pixel_scale_arcsec(image.sci_header)
    if scale:
        table["sep_arcsec"] = table["sep"] * scale
        table["sep_arcsec"].unit = "arcsec"
    table["pa"] = np.mod((roll or 0.0) + np.degrees(np.arctan2(-dx, dy)), 360.0)
    table["pa"].unit = "deg"
    table["snr"] = s
    if star_flux_method == "aperture":
        pos = np.column_stack([x, y])
        flux = np.array([core.aperture_snr(img, pos[i:i + 1], center, fwhm=fwhm,
                                           avoid=np.delete(pos, i, axis=0))[1][0]
                         for i in range(len(pos))])
    else:
        iy = np.clip(np.rint(y).astype(int), 0, img.shape[0] - 1)
        ix = np.clip(np.rint(x).astype(int), 0, img.shape[1] - 1)
        flux = img[iy, ix]
    table["flux"] = np.asarray(flux, dtype=np.float64).reshape(len(table))
    tmap = product_transmission(image)
    if tmap is not None:
        table["transmission"] = core.value_at(tmap, np.column_stack([x, y])) if len(x) else \
            np.zeros(0)
    if star_flux:
        table["contrast"] = table["flux"] / float(star_flux)
        if throughput is not None or tmap is not None:
            factor = np.ones(len(table))
            if throughput is not None:
                # a candidate is above the detection threshold, so it was found and left
                # out of the fit: the protected throughput is its own
                factor = factor * _throughput_at(throughput, np.asarray(table["sep"]),
                                                 star_flux_method, protected=True)
            if tmap is not None:
                factor = factor * np.asarray(table["transmission"])
            with np.errstate(invalid="ignore", divide="ignore"):
                table["contrast_calibrated"] = table["contrast"] / factor
    table.meta["THRESH"] = float(threshold)
    table.meta["INNERRAD"] = inner
    table.meta["FWHM"] = fwhm
    table.meta["PAFRAME"] = frame
    table.meta["FLUXMETH"] = star_flux_method
    params = dict(params or {})
    params.update(threshold=float(threshold), inner_radius=inner, fwhm=fwhm,
                  star_flux=star_flux, star_flux_method=star_flux_method)
    primary = add_provenance(image.primary, "coron-hlsp detect", params, history=[
        f"{len(table)} candidates with SNR >= {threshold:g} beyond {inner:.2f} pix; "
        f"pa {frame}"])
    if star_flux:
        _star_cards(primary, star_flux, star_flux_method, fwhm)
    log.info("%d candidate(s) above SNR %g", len(table), threshold)
    return Product(sci=None, primary=primary, tables={"DETECTIONS": table}, path="detections")


@dataclass
class Injection:
    """Fake point sources and what the processing made of them.

    Attributes
    ----------
    model : ndarray of shape (nimg, ny, nx)
        The fakes as injected (each image holds one source per separation).
    recovered : ndarray of shape (nimg, ny, nx)
        The same after KLIP (and combination), averaged over integrations.
    positions : ndarray of shape (nimg, nsep, 2)
        Source positions (x, y) in those images, 0-based pixels.
    separations : ndarray of shape (nsep,)
        Separations, pixels.
    pa : ndarray of shape (nimg, nsep)
        Position angles, degrees east of north.
    recovered_protected : ndarray of shape (nimg, ny, nx) or None
        With zones and source protection: the fakes after KLIP as a source
        found above the protection threshold is processed (left out of the
        fit); a zone a few lambda/D wide fits part of an unprotected source
        away, so the two differ.
    """

    model: np.ndarray
    recovered: np.ndarray
    positions: np.ndarray
    separations: np.ndarray
    pa: np.ndarray
    recovered_protected: np.ndarray = None


def offaxis_image(product):
    """The 2-D unocculted PSF of an off-axis PSF product (first integration of a cube)."""
    data = np.asarray(product.sci, dtype=np.float64)
    data = data.reshape(-1, *data.shape[-2:])[0] if data.ndim > 2 else data
    if not np.isfinite(data).any():
        raise InputError(product.path, "off-axis PSF has no finite pixel")
    if not np.nanmax(data) > 0:
        raise InputError(product.path, "off-axis PSF peak is not positive")
    return data


def _offsets(separations, pa, roll):
    """Offsets (dx, dy) from the star of sources at (separation, PA) for an image roll."""
    a = np.radians(np.asarray(pa) - roll)
    sep = np.asarray(separations)
    return np.stack([-sep * np.sin(a), sep * np.cos(a)], axis=-1)


def _injection_grid(science, center, *, psf, fwhm, n_pa, step, inner, transmission=None):
    """The fake sources of :func:`klip_inject_step` for an exposure (recovered not yet known)."""
    ny, nx = science.sci.shape[-2:]
    roll, _ = roll_angle(science.sci_header, science.primary)
    roll = 0.0 if roll is None else roll
    seps = injection_separations((ny, nx), center, fwhm=fwhm, step=step, inner=inner)
    if seps.size == 0:
        log.warning("%s: frame too small to inject fake sources; no throughput", science.path)
        return None
    pa = core.injection_grid(seps, n_pa)
    pos = np.asarray(center) + _offsets(seps[None, :], pa, roll)
    # a source behind the coronagraph is dimmed by its transmission where it sits
    amp = None if transmission is None else core.value_at(transmission, pos)
    model = core.inject_sources((ny, nx), psf, pos, amp)
    log.info("injecting %d fake sources in %d images (%d separations x %d angles)",
             pos.shape[0] * pos.shape[1], pos.shape[0], seps.size, pa.shape[0])
    return Injection(model=model, recovered=None, positions=pos, separations=seps, pa=pa)


def injection_separations(shape, center, *, fwhm, step=1.0, inner=2.0):
    """Separations (pixels) of the fake-source grid: from ``inner * fwhm`` every
    ``step * fwhm`` to ``1.5 fwhm + 1`` pixels inside the largest circle about the
    star that fits in the frame (and about the frame centre, where the i2d puts it)."""
    ny, nx = shape
    cx, cy = center
    edge = min(cx, nx - 1 - cx, cy, ny - 1 - cy, (nx - 1) / 2.0, (ny - 1) / 2.0)
    rmax = edge - 1.5 * fwhm - 1.0
    return np.arange(inner * fwhm, rmax + 1e-9, step * fwhm)


def combine_injections(psfsubs, injections):
    """The fakes of every exposure combined like :func:`combine_step` does the images.

    Parameters
    ----------
    psfsubs : list of Product
        The exposures' psfsub products (their ERR gives the weights).
    injections : list of Injection
        Their fakes (:func:`klip_inject_step`), on the same sky grid.

    Returns
    -------
    Injection
        North-up, star at the frame centre: each exposure's model and
        recovered fakes rotated about the star (same angle, centre and
        interpolation as the image) and averaged with the image's
        inverse-variance weights.
    """
    first = psfsubs[0]
    ny, nx = first.sci.shape[-2:]
    out_center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    models, recs, prots, vars_ = [], [], [], []
    for p, inj in zip(psfsubs, injections):
        _, var = _mean_over_integrations(p)
        angle, _ = roll_angle(p.sci_header, p.primary)
        angle = 0.0 if angle is None else angle
        center, _ = star_center(p.sci_header, p.sci.shape)

        def rot(a, order):
            return core.north_up(a, angle, center, out_center=out_center, order=order)

        models.append([rot(m, 3) for m in inj.model])
        recs.append([rot(r, 3) for r in inj.recovered])
        prots.append(None if inj.recovered_protected is None else
                     [rot(r, 3) for r in inj.recovered_protected])
        vars_.append(rot(var, 1))
    v = np.stack(vars_)
    n = len(injections[0].model)

    def combined(per_exposure):
        return np.stack([core.combine_images(np.stack([r[k] for r in per_exposure]), v)[0]
                         for k in range(n)])

    inj = injections[0]
    pos = np.asarray(out_center) + _offsets(inj.separations[None, :], inj.pa, 0.0)
    return Injection(model=combined(models), recovered=combined(recs), positions=pos,
                     separations=inj.separations, pa=inj.pa,
                     recovered_protected=None if any(p is None for p in prots)
                     else combined(prots))


def throughput_table(injection, *, fwhm=None, scale=None):
    """THROUGHPUT table of an injection: recovered over injected flux per separation.

    Parameters
    ----------
    injection : Injection
    fwhm : float, optional
        Resolution element in pixels (default 2).
    scale : float, optional
        Pixel scale in arcsec, for a radius_arcsec column.

    Returns
    -------
    astropy.table.Table
        radius (pixels), radius_arcsec, throughput (median over the position
        angles of the least-squares amplitude of the injected PSF within
        `fwhm` of each source), throughput_aperture (median ratio of the sums
        in a disk of diameter `fwhm`), throughput_std (spread of the former
        over the angles), npa.
    """
    from astropy.table import Table

    fwhm = 2.0 if fwhm is None else float(fwhm)
    fit, ap = core.source_ratios(injection.recovered, injection.model, injection.positions,
                                 fwhm=fwhm)
    table = Table()
    table["radius"] = injection.separations
    table["radius"].unit = "pix"
    if scale:
        table["radius_arcsec"] = injection.separations * scale
        table["radius_arcsec"].unit = "arcsec"
    with np.errstate(invalid="ignore"):
        table["throughput"] = np.nanmedian(fit, axis=0)
        table["throughput_aperture"] = np.nanmedian(ap, axis=0)
        table["throughput_std"] = np.nanstd(fit, axis=0)
    table["npa"] = np.isfinite(fit).sum(axis=0).astype(np.int32)
    if injection.recovered_protected is not None:
        pfit, pap = core.source_ratios(injection.recovered_protected, injection.model,
                                       injection.positions, fwhm=fwhm)
        with np.errstate(invalid="ignore"):
            table["throughput_protected"] = np.nanmedian(pfit, axis=0)
            table["throughput_protected_aperture"] = np.nanmedian(pap, axis=0)
        table["throughput_protected"].description = \
            "as throughput, for a source found and left out of the KL fit (detections)"
    table["throughput"].description = "recovered/injected amplitude (PSF fit), median over PAs"
    table["throughput_aperture"].description = \
        f"recovered/injected sum in disks of diameter {fwhm:g} pix, median over PAs"
    table.meta["FWHM"] = fwhm
    table.meta["NPA"] = int(injection.pa.shape[0])
    return table


def add_throughput(product, table, *, history=None):
    """A copy of a product with a THROUGHPUT table (and a HISTORY line)."""
    out = replace(product, tables=dict(product.tables), primary=product.primary.copy())
    out.tables["THROUGHPUT"] = table
    t = np.asarray(table["throughput"])
    out.primary.add_history(history or (
        f"throughput by fake-source injection: {len(table)} separations x "
        f"{table.meta.get('NPA', '?')} angles, {np.nanmin(t):.3f}-{np.nanmax(t):.3f}"))
    return out


def offaxis_flux(product, *, method="peak", fwhm=None):
    """The star's flux from an unocculted PSF image.

    Parameters
    ----------
    product : Product
        The off-axis PSF (first integration of a cube).
    method : {"peak", "aperture"}
        Its peak pixel, or its sum in a disk of diameter `fwhm` centred on it
        (:func:`coron_cli.core.psf_flux`).
    fwhm : float, optional
        Aperture diameter in pixels (default 2).
    """
    if method not in ("peak", "aperture"):
        raise InputError("--star-flux-method", f"must be peak or aperture, not {method!r}")
    flux = core.psf_flux(offaxis_image(product), method=method,
                         fwhm=2.0 if fwhm is None else float(fwhm))
    if not flux > 0:
        raise InputError(product.path, f"off-axis PSF {method} flux is not positive")
    return flux


def offaxis_peak(product):
    """The star's flux from an unocculted PSF image: its peak value."""
    return offaxis_flux(product, method="peak")
