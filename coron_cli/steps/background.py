"""Background exposures: which exposure they go with, and their subtraction."""

import logging
import os
from dataclasses import replace

import numpy as np

from .. import core
from ..products import star_center
from ._common import _frame_check, estimate_err
from .config import BackgroundConfig

log = logging.getLogger("coron")


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


def background_step(exposure, backgrounds, config=None):
    """Subtract the combined sky of background exposures from an exposure, if it is needed.

    Parameters
    ----------
    exposure : Product
        A science or reference exposure (nint, ny, nx).
    backgrounds : list of Product
        Its background exposures (empty sky, same set-up), combined robustly
        (:func:`coron_cli.core.combine_backgrounds`).
    config : BackgroundConfig, optional
        ``mode``: auto, subtract or off. ``auto`` subtracts unless the
        exposure says the JWST stage 2 did it (S_BKDSUB = COMPLETE) or its
        sky is already far below the background's (the sky was removed
        without the keyword), see
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
    config = config or BackgroundConfig()
    mode, bad_bits = config.mode, config.bad_bits
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
