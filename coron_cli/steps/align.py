"""The align step: the stacked references registered onto every science integration."""

import logging
import os

import numpy as np

from .. import core
from ..errors import InputError
from ..products import Product, add_provenance, star_cards, star_center
from ._common import _check_transmission, _frame_check, coronagraph, estimate_err
from .config import AlignConfig, ConfigError
from .stack import _repair_stack, _stack_dithers, prepare_science

log = logging.getLogger("coron")


def align_step(science, psfstack, config=None, *, mask=None, transmission=None, asn_id=None,
               params=None):
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

    The fit weights are `mask` when given, else, with the configuration's
    `psfmask_weights`, the coronagraph's `transmission` map (as the JWST
    stage weighs its fit).

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

    Parameters
    ----------
    science : Product
        The science exposure (nint, ny, nx).
    psfstack : Product
        The stacked references (nref, ny, nx) with their REFS table.
    config : AlignConfig, optional
        ``method``, ``psfmask_weights``, ``max_shift``, ``bad_bits``.
    mask, transmission : ndarray (ny, nx), optional
        Fit weights; the coronagraph's transmission map.
    asn_id : str, optional
        Association id, written as ASN_ID.
    params : dict, optional
        Further provenance (the input names).

    With the configuration's `per` "exposure", the references are registered
    once, on the mean of the science integrations (repaired), instead of on
    each: within an exposure the star does not move by more than the
    pointing jitter (a few thousandths of a pixel), and the mean is the
    sharper target. The psfalign is then 3-D (nref, ny, nx), as the JWST
    stage writes it, and KLIP decomposes the references once for all the
    integrations. How far the star moves between the integrations (each
    fitted against their mean) is written as ALMOTION, with a warning naming
    the exposure beyond :data:`MOTION_WARN_PIX`.

    Returns
    -------
    Product
        SCI/ERR/DQ of shape (nint, nref, ny, nx) (per integration) or (nref,
        ny, nx) (per exposure) and a SHIFTS table (sci_int, ref, dx, dy,
        scale, method for each pair; per exposure every integration has the
        same row); the science star position in STARCENX/STARCENY; ALIGNMTH
        lists the methods used, ALIGNPER what was registered on, and
        ALGAINij the gain applied.
    """
    config = config or AlignConfig()
    _frame_check(science, psfstack, psfstack.path)
    mask, weights_from = _fit_weights(science, mask, transmission, config)
    sci, _, _, _ = prepare_science(science, bad_bits=config.bad_bits)
    nint_science = sci.shape[0]
    motion = None
    if config.per == "exposure":
        # one registration on the mean of the integrations (repaired), for all of them
        mean = sci.mean(axis=0, keepdims=True)
        motion = _motion_within(sci, mean, mask, science.path)
        sci = mean
    refs = _repair_stack(psfstack, config.bad_bits)
    dith = _stack_dithers(psfstack) if config.method in ("auto", "dither") else None
    if config.method == "dither" and (dith is None or
                                      not core.dither_groups(dith[0], dith[1])):
        raise InputError(psfstack.path, "the dither method needs references of one visit at 3 "
                                        "or more non-collinear dither positions (REFS "
                                        "xoffset/yoffset)")
    nint = sci.shape[0]
    gain = _shift_gain(refs, dith, mask, psfstack.path, gain_model(science))
    expected, allowance, labels, pointing = _expected_shifts(science, psfstack, nint, dith,
                                                             verified=gain is not None)
    aligned, dx, dy, scale, how, shifted = _fitted_shifts(
        refs, sci, mask, dith, gain, pointing, config.method, science.path, psfstack.path)
    dx, dy, scale, bad_shift, bad_scale = core.bound_shifts(
        dx, dy, scale, expected, labels, max_shift=config.max_shift + allowance[None, :])
    if bad_shift.any():
        how[bad_shift] = "header"
        log.warning("%s: %d of %d registration shifts are more than %g px from where the "
                    "pointing puts the star (a coronagraphic image that changes with the "
                    "star's offset, not a motion); those references are placed by the headers' "
                    "star positions instead", science.path, int(bad_shift.sum()), dx.size,
                    config.max_shift)
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
    ref_err = psfstack.err if psfstack.err is not None else estimate_err(psfstack.sci)
    # float32; the spectra of the variance (ERR squared) computed once, by blocks
    err = core.shift_variance(ref_err, dx, dy, errors=True)
    np.sqrt(err, out=err)
    # a stack's DQ, or only its flagged pixels (keep_repaired)
    dq = core.shift_dq(psfstack.dq if isinstance(psfstack.dq, tuple) else
                       np.asarray(psfstack.dq, dtype=np.uint32), dx, dy)
    shifts = (dx, dy, scale, how.astype(str))
    if config.per == "exposure":
        aligned, err, dq = aligned[0], err[0], dq[0]
        shifts = tuple(np.repeat(a, nint_science, axis=0) for a in shifts)
    product = _psfalign_product(science, aligned, err, dq, shifts, gain,
                                config, {**(params or {}), "mask": "none" if mask is None else
                                         "yes", "fit_weights": weights_from}, asn_id)
    if motion is not None:
        product.sci_header["ALMOTION"] = (round(motion, 4), "[pix] largest star move within "
                                                            "the exposure")
    return product


#: a star moving more than this (pixels) within an exposure is warned about when the
#: references are registered once per exposure (JWST's pointing holds to ~0.01 px)
MOTION_WARN_PIX = 0.05


def _motion_within(sci, mean, mask, path):
    """How far (pixels) the star moves within an exposure: the rigid fit of each of its
    integrations against their mean, the largest distance from the median offset; a
    warning naming the exposure above :data:`MOTION_WARN_PIX`. None for one integration."""
    if sci.shape[0] < 2:
        return None
    dx, dy, _ = core.align_references(mean, sci, weights=mask, fit_only=True)
    d = np.hypot(dx[:, 0] - np.median(dx[:, 0]), dy[:, 0] - np.median(dy[:, 0]))
    motion = float(d.max())
    if motion > MOTION_WARN_PIX:
        log.warning("%s: the star moves by up to %.2f px between integrations; the references "
                    "are registered once, on their mean (--align-per integration registers "
                    "each)", path, motion)
    else:
        log.info("%s: the star moves by at most %.3f px between integrations", path, motion)
    return motion


def _fit_weights(science, mask, transmission, config):
    """The registration's fit weights and where they come from: `mask`, else with
    ``psfmask_weights`` the transmission map, else none."""
    if mask is not None and mask.shape != science.sci.shape[-2:]:
        raise ConfigError("mask", f"mask is {mask.shape[1]}x{mask.shape[0]} pixels, frames are "
                                  f"{science.sci.shape[-1]}x{science.sci.shape[-2]}")
    _check_transmission(science, transmission)
    if mask is not None:
        return mask, "mask"
    if config.psfmask_weights and transmission is not None:
        return np.asarray(transmission, dtype=np.float64), "psfmask"
    return None, "none"


def gain_model(science):
    """How to measure the shift gain behind an exposure's coronagraph
    (:func:`core.shift_gain` keywords, from CORONMSK).

    - a round occulter (MASK...R, as MASKA335R, or a Lyot spot, LYOT_2300): ``g I``,
      its rotational symmetry making the rigid fit over-read a move in every direction
      alike (one number from every pair; four would take up the dither positions' own
      errors, a few thousandths of an arcsecond, as anisotropy);
    - a bar (...WB): measured along the bar (its dithers run along it, where the
      occulter hardly changes), and applied only where it differs from 1 by more than
      twice its standard error;
    - otherwise (four-quadrant phase masks, unknown): a general 2 x 2 map.
    """
    mask = coronagraph(science)
    if (mask.startswith("MASK") and mask.endswith("R")) or mask.startswith("LYOT"):
        return {"model": "isotropic"}
    if mask.startswith("MASK") and mask.endswith("WB"):
        return {"significance": 2.0}
    return {}


def _shift_gain(refs, dith, mask, stack_path, how=None):
    """The rigid fit's shift gain from the dithered references (:func:`core.shift_gain`
    with the keywords `how`, see :func:`gain_model`), or None."""
    if dith is None:
        return None
    how = dict(how or {})
    gain, ginfo = core.shift_gain(refs, dith[0], dith[1], weights=mask, **how)
    model = how.get("model", "full")
    if gain is None:
        log.info("%s: no shift gain from the dithered references (%s)", stack_path,
                 ginfo["reason"])
    else:
        se = np.asarray(ginfo["gain_se"], dtype=float)
        log.info("%s: shift gain of the rigid fit behind this coronagraph (%s), from %d "
                 "pairs of dithered references: [[%.3f, %.3f], [%.3f, %.3f]] (standard "
                 "errors %.3f, %.3f; r2 %.3f)", stack_path, model, ginfo["npairs"],
                 *gain.ravel(), se[0, 0], se[1, 1], ginfo["r2"])
    return gain


def _fitted_shifts(refs, sci, mask, dith, gain, pointing, method, sci_path, stack_path):
    """Every (integration, reference) pair's shift and flux, before the bounds.

    Returns
    -------
    aligned : ndarray (nint, nref, ny, nx) or None
        The references shifted by the rigid fit, when it was made.
    dx, dy, scale : ndarray (nint, nref)
    how : ndarray of object (nint, nref)
        The method that gave each pair's shift.
    shifted : (dx, dy) or None
        The shifts `aligned` was made with.
    """
    nint, nref = sci.shape[0], refs.shape[0]
    how = np.full((nint, nref), "fourier", dtype=object)
    if gain is None and method != "dither":
        aligned, dx, dy, scale = core.align_references(refs, sci, weights=mask)
        return aligned, dx, dy, scale, how, (dx.copy(), dy.copy())
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
        _report_dither_models(report, keys, sci_path, stack_path, nint)
        dx, dy = np.where(used, mdx, dx), np.where(used, mdy, dy)
        scale = np.where(used, mscale, scale)
        how[used] = "dither"
    return aligned, dx, dy, scale, how, (rigid[0], rigid[1]) if aligned is not None else None


def _psfalign_product(science, aligned, err, dq, shifts, gain, config, params, asn_id):
    """The psfalign Product: the SHIFTS table, the star and method cards, provenance."""
    from astropy.table import Table

    dx, dy, scale, how = shifts
    nint, nref = dx.shape
    used_how = ",".join(m for m in ("fourier", "fourier+gain", "dither", "header")
                        if (how == m).any())
    table = Table()
    table["sci_int"] = np.repeat(np.arange(nint, dtype=np.int32), nref)
    table["ref"] = np.tile(np.arange(nref, dtype=np.int32), nint)
    table["dx"] = dx.ravel()
    table["dy"] = dy.ravel()
    table["scale"] = scale.ravel()
    table["method"] = how.ravel()
    for col, unit in (("dx", "pix"), ("dy", "pix")):
        table[col].unit = unit
    table["method"].description = (
        "fourier: rigid Fourier fit; fourier+gain: the same corrected by the shift gain "
        "measured on dithered references; dither: dither model of the reference's visit; "
        "header: the star positions of the headers (the fit was beyond the bound)")
    (cx, cy), src = star_center(science.sci_header, science.sci.shape)
    header = science.sci_header.copy()
    star_cards(header, (cx, cy), src)
    header["ALIGNMTH"] = (used_how, "registration methods used (SHIFTS method column)")
    header["ALIGNPER"] = (config.per.upper(), "references registered on each science "
                                              "INTEGRATION, or once per EXPOSURE")
    if gain is not None:
        for (a, b), v in np.ndenumerate(gain):
            header[f"ALGAIN{a + 1}{b + 1}"] = (float(v), "rigid-fit shift gain behind the mask")
    params = {**params, **config.params(), "registration": used_how}
    primary = science.primary.copy()
    if asn_id:
        primary["ASN_ID"] = (asn_id, "association id")
    if config.per == "exposure":
        # a 3-D psfalign: what coron-klip (and the JWST stage's klip) take as aligned
        primary["S_PSFALI"] = ("COMPLETE", "PSF references aligned")
    onto = "the mean of" if config.per == "exposure" else "each of"
    primary = add_provenance(primary, "coron-align", params, history=[
        f"aligned {nref} references onto {onto} {nint} integrations ({used_how}); median |shift| "
        f"{np.median(np.hypot(dx, dy)):.3f} px, median scale {np.median(scale):.4f}"])
    log.info("aligned %d references onto %s %d integrations (median shift %.3f px; %s)",
             nref, onto, nint, float(np.median(np.hypot(dx, dy))), used_how)
    return Product(sci=aligned, err=err, dq=dq, primary=primary, sci_header=header,
                   tables={"SHIFTS": table}, path="psfalign")


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
