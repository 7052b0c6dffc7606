"""The target's other rolls as references (angular differential imaging with RDI).

JWST observes a coronagraphic target at two (or more) roll angles. The other
roll's image of the same star, taken minutes apart, is the best-matched PSF
there is: same star, same colour, nearly the same wavefront. Its companions
and disk have turned with the sky, so where a source has moved far enough
between the rolls, the other roll can serve as one more reference without
subtracting the source with the star.

:func:`roll_references` registers the other exposures onto a science
exposure (the same registration as the references, once per exposure on the
mean of its repaired integrations); :func:`roll_subtract` runs KLIP with them
added to the references only at the pixels where every source has moved by
at least ``min_move`` pixels between the rolls (:func:`coron_cli.core.roll_groups`),
and with the references alone elsewhere.
"""

import logging
from dataclasses import dataclass, replace

import numpy as np

from .. import core
from ..products import roll_angle

log = logging.getLogger("coron")

#: roll differences below this (degrees) are the same roll: never a reference
SAME_ROLL_DEG = 0.5


@dataclass
class RollReferences:
    """Other-roll exposures registered onto one science exposure.

    Attributes
    ----------
    sci : ndarray of float32 (nroll, ny, nx)
        Each one's integrations averaged (repaired), shifted onto the science star.
    err : ndarray of float32 (nroll, ny, nx) or None
        Their noise (0 where not finite).
    rotation : ndarray of float (nroll,)
        The science exposure's roll minus each one's (degrees): a source at
        detector offset d from the star in the science sits at
        ``Rot(rotation) d`` in the other (the rotation of
        :func:`coron_cli.core.north_up`).
    names : list of str
    shifts : ndarray (nroll, 2)
        The registration's (dx, dy), pixels.
    """

    sci: np.ndarray
    err: np.ndarray
    rotation: np.ndarray
    names: list
    shifts: np.ndarray


def exposure_roll(product):
    """The roll (position angle of the detector +y axis, degrees) of an exposure, or None."""
    angle, _ = roll_angle(product.sci_header, product.primary)
    return angle


def other_rolls(science, others):
    """The exposures of `others` at another roll than `science` (the same file and the
    same roll skipped), with their roll differences (science minus other, degrees)."""
    phi = exposure_roll(science)
    if phi is None:
        log.warning("%s: no roll angle in its headers; its other rolls are not used as "
                    "references", science.path)
        return [], np.zeros(0)
    keep, rot = [], []
    for o in others:
        if o is science or (o.path and o.path == science.path):
            continue
        p = exposure_roll(o)
        if p is None:
            log.warning("%s: no roll angle in its headers; not used as a reference", o.path)
            continue
        d = (phi - p + 180.0) % 360.0 - 180.0
        if abs(d) < SAME_ROLL_DEG:
            continue
        keep.append(o)
        rot.append(d)
    return keep, np.asarray(rot, dtype=np.float64)


def _exposure_mean(product, bad_bits):
    """One exposure as a single repaired, averaged integration (a 1-integration Product)."""
    from .stack import prepare_science

    sci, err, dq, _ = prepare_science(product, bad_bits=bad_bits)
    n = sci.shape[0]
    mean = sci.astype(np.float64).mean(axis=0)
    var = np.square(np.where(np.isfinite(err), err, 0.0).astype(np.float64)).sum(axis=0) / n ** 2
    # a pixel is bad in the mean only where every integration was
    bad = np.all((dq & np.uint32(bad_bits)) != 0, axis=0)
    return replace(product, sci=mean[None].astype(np.float32),
                   err=np.sqrt(var)[None].astype(np.float32),
                   dq=np.where(bad, np.uint32(core.DO_NOT_USE), np.uint32(0))[None],
                   tables={}, images={})


def roll_references(science, others, stack_config, align_config, *, mask=None,
                    transmission=None):
    """The other rolls of `science` among `others`, registered onto its star.

    Parameters
    ----------
    science : Product
        The science exposure.
    others : list of Product
        The target's science exposures (`science` itself and those at its
        roll are skipped).
    stack_config, align_config : StackConfig, AlignConfig
        As for the references; the registration is made once per exposure.
    mask, transmission : ndarray, optional
        Registration weights and transmission map, as for the references.

    Returns
    -------
    RollReferences or None
        None when no exposure is at another roll.
    """
    from ._common import _frame_check
    from .align import align_step
    from .stack import stack_step

    keep, rot = other_rolls(science, others)
    if not keep:
        return None
    for o in keep:
        _frame_check(science, o, o.path)
    means = [_exposure_mean(o, stack_config.bad_bits) for o in keep]
    stack = stack_step(means, stack_config)
    aligned = align_step(science, stack, replace(align_config, per="exposure"), mask=mask,
                         transmission=transmission)
    sci = np.asarray(aligned.sci, dtype=np.float32)
    if sci.ndim == 4:
        sci = sci[0]
    if not np.isfinite(sci).all():
        sci = core.repair_bad_pixels(sci, ~np.isfinite(sci)).astype(np.float32)
    err = None
    if aligned.err is not None:
        e = np.asarray(aligned.err, dtype=np.float32)
        err = np.where(np.isfinite(e), e, np.float32(0.0))
        err = err[0] if err.ndim == 4 else err
    shifts = np.zeros((len(keep), 2))
    tab = (aligned.tables or {}).get("SHIFTS")
    if tab is not None and len(tab) >= len(keep):
        shifts = np.column_stack([np.asarray(tab["dx"][:len(keep)], float),
                                  np.asarray(tab["dy"][:len(keep)], float)])
    names = [o.path for o in keep]
    for name, d, s in zip(names, rot, shifts):
        log.info("%s: other roll %s (%+.2f deg) registered with shift (%.3f, %.3f) px",
                 science.path, name, d, s[0], s[1])
    return RollReferences(sci=sci, err=err, rotation=rot, names=names, shifts=shifts)


def rotated_fakes(model, rotation, center):
    """Fake-source images as the other rolls see them: (nfake, nroll, ny, nx).

    Each image of `model` (nfake, ny, nx), in the science exposure's detector
    frame, turned about the star by each roll difference (the other
    exposure's view of the same sky after its registration onto the star).
    """
    model = np.asarray(model, dtype=np.float64)
    out = np.empty((model.shape[0], len(rotation)) + model.shape[1:], dtype=np.float32)
    for j, d in enumerate(rotation):
        for k in range(model.shape[0]):
            img = core.north_up(model[k], float(d), center, out_center=center)
            out[k, j] = np.nan_to_num(img, nan=0.0)
    return out


def source_in_rolls(sources, rotation, center):
    """Where each other roll holds the sources of `sources` (ny, nx bool, the science's
    frame): the mask turned by each roll difference, any overlap counted (nroll, ny, nx)."""
    src = np.asarray(sources, dtype=np.float64)
    out = np.empty((len(rotation),) + src.shape, bool)
    for j, d in enumerate(rotation):
        out[j] = np.nan_to_num(core.north_up(src, float(d), center, out_center=center,
                                             order=1)) > 0.01
    return out


def roll_subtract(targets, refs, rolls, *, center, min_move, zones=None, fit_mask=None,
                  fit_zones=None, roll_fakes=None, sources=None, **kw):
    """:func:`coron_cli.core.klip_subtract` with the other rolls as references where allowed.

    At every pixel, the other-roll exposures whose motion there reaches
    `min_move` pixels (:func:`coron_cli.core.roll_groups`) are added to the
    references. Each zone keeps its own fit region (its pixels, or its
    `fit_zones` entry) whatever group its pixels fall in; it is decomposed
    once with the references and all the rolls, and each pixel group is
    modelled with the references it may use (the covariance of a subset is
    a block of the whole one).

    Parameters
    ----------
    targets : ndarray (nint, ny, nx) or (nint, ntarget, ny, nx)
        As for klip_subtract; with `roll_fakes`, target 0 is the science and
        target k >= 1 the k-th fake image.
    refs : ndarray (nint or 1, nref, ny, nx)
    rolls : RollReferences or None
        None: plain klip_subtract.
    center : (x, y)
    min_move : float
        Pixels.
    roll_fakes : ndarray (ntarget - 1, nroll, ny, nx), optional
        The fakes as each other roll sees them (:func:`rotated_fakes`): a
        fake source is in the other rolls too. Where rolls are used, target
        k's result is then KLIP of the science plus fake k with the rolls
        holding the fake, minus KLIP of the science: the fake as a real
        source comes out, with what its copies in the other rolls take away.
    sources : ndarray of bool (ny, nx), optional
        Known sources (the first pass's, in the science's frame): an other
        roll is not used where it holds one of them (:func:`source_in_rolls`),
        so that it does not subtract them; an extended source such as an
        edge-on disk moves by less than its own size between the rolls.
    **kw
        klip_subtract's other arguments (truncations, fit_weights,
        reference_variance, sky_order...).

    Returns
    -------
    As klip_subtract.
    """
    if rolls is None:
        return core.klip_subtract(targets, refs, zones=zones, fit_mask=fit_mask,
                                  fit_zones=fit_zones, **kw)
    ny, nx = refs.shape[-2:]
    blocked = None
    if sources is not None and np.any(sources):
        blocked = source_in_rolls(sources, rolls.rotation, center)
    labels, allowed = core.roll_groups((ny, nx), center, rolls.rotation, min_move, blocked)
    if blocked is not None:
        log.debug("other rolls not used at %d pixel(s) where they hold extended sources",
                  int(blocked.any(axis=0).sum()))
    # one decomposition of the references and the rolls per zone; each pixel group
    # modelled with the rows it may use (core.klip_subtract's extra)
    extra = {"references": rolls.sci, "labels": labels, "allowed": allowed,
             "error": rolls.err}
    args = dict(kw, zones=zones, fit_mask=fit_mask, fit_zones=fit_zones)
    if roll_fakes is None:
        return core.klip_subtract(targets, refs, extra=extra, **args)
    res, mv, nmodes = core.klip_subtract(targets[:, :1], refs, extra=extra, **args)
    ntg = targets.shape[1]
    res = np.repeat(res, ntg, axis=2)
    mv = None if mv is None else np.repeat(mv, ntg, axis=2)
    for k in range(1, ntg):
        # KLIP is not linear in the references: the fake's image is the science with the
        # fake, its other rolls holding it too, minus the science alone (so what the
        # rolls' copies subtract from it is in)
        held = dict(extra, references=rolls.sci + roll_fakes[k - 1])
        both = targets[:, :1] + targets[:, k:k + 1]
        rk, mk, _ = core.klip_subtract(both, refs, extra=held, **args)
        res[:, :, k] = rk[:, :, 0] - res[:, :, 0]
        if mv is not None:
            mv[:, :, k] = mk[:, :, 0]
    return res, mv, nmodes

__all__ = ["SAME_ROLL_DEG", "RollReferences", "exposure_roll", "other_rolls", "roll_references",
           "roll_subtract", "rotated_fakes", "source_in_rolls"]
