"""Signal-to-noise, annular noise, contrast and aperture photometry."""

import math

import numpy as np
from scipy import ndimage

# scipy.signal and scipy.stats (~0.4 s each to import) are imported by the
# functions that use them. _radius and _disk live in the numpy-only _geometry,
# so that klip and inject need not import this module; they stay importable
# from here.
from ._geometry import _disk, _radius, parabola_vertex

__all__ = [
    "snr_image",
    "extended_parts",
    "annular_mean",
    "annular_profile",
    "calibrate_error",
    "student_t_factor",
    "contrast_curve",
    "aperture_snr",
    "aperture_sums",
    "snr_map_mawet",
    "find_candidates",
    "refine_peaks",
    "source_regions",
    "source_footprints",
    "value_at",
]


def snr_image(sci, err):
    """Signal-to-noise image ``sci / err``.

    Parameters
    ----------
    sci, err : ndarray of the same shape

    Returns
    -------
    ndarray of float32
        NaN where `err` is zero, negative or not finite, or `sci` is not finite.
    """
    sci = np.asarray(sci, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    ok = np.isfinite(sci) & np.isfinite(err) & (err > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(ok, sci / np.where(ok, err, 1.0), np.nan)
    return out.astype(np.float32)


def annular_profile(image, center, *, width=2):
    """Standard deviation of an image in concentric annuli about the star.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
        NaN pixels are ignored.
    center : (x, y)
        Star position, 0-based pixels.
    width : int
        Annulus width in whole pixels: annulus i holds the pixels whose
        distance r to the star satisfies ``i*width <= r < (i+1)*width``.

    Returns
    -------
    radius : ndarray of float64
        Mid radius of every annulus that holds at least two valid pixels.
    sigma : ndarray of float64
        Sample standard deviation (ddof=1) of its pixels.
    npix : ndarray of int64
        Valid pixels in it.
    """
    width, idx, v, n, s1 = _annulus_sums(image, center, width)
    s2 = np.bincount(idx, weights=v * v, minlength=n.size)
    keep = n >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / np.maximum(n, 1)
        var = (s2 - n * mean ** 2) / np.maximum(n - 1, 1)
    bins = np.flatnonzero(keep)
    return (bins + 0.5) * width, np.sqrt(np.maximum(var[keep], 0.0)), n[keep].astype(np.int64)


def annular_mean(image, center, *, width=2):
    """Mean of an image in the annuli of :func:`annular_profile`.

    Returns
    -------
    radius, mean : ndarray of float64
        Mid radius and mean of every annulus holding a finite pixel.
    """
    width, idx, v, n, s1 = _annulus_sums(image, center, width)
    bins = np.flatnonzero(n > 0)
    return (bins + 0.5) * width, s1[bins] / n[bins]


def _annulus_sums(image, center, width):
    """Annulus index, values, counts and sums of the finite pixels of an image."""
    width = int(width)
    if width < 1:
        raise ValueError("annulus width must be a positive integer")
    img = np.asarray(image, dtype=np.float64)
    r = _radius(img.shape, center)
    ok = np.isfinite(img)
    idx = (r[ok] // width).astype(np.int64)
    v = img[ok]
    n = np.bincount(idx)
    return width, idx, v, n, np.bincount(idx, weights=v, minlength=n.size)


def value_at(image, positions):
    """Bilinear interpolation of an image at (x, y) positions (edge values outside).

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
    positions : ndarray of shape (..., 2)
        (x, y), 0-based pixels.

    Returns
    -------
    ndarray of float64 of shape positions.shape[:-1]
    """
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    pos = np.asarray(positions, dtype=np.float64)
    x = np.clip(pos[..., 0], 0, nx - 1)
    y = np.clip(pos[..., 1], 0, ny - 1)
    x0 = np.minimum(np.floor(x).astype(int), nx - 2) if nx > 1 else np.zeros(x.shape, int)
    y0 = np.minimum(np.floor(y).astype(int), ny - 2) if ny > 1 else np.zeros(y.shape, int)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, nx - 1), np.minimum(y0 + 1, ny - 1)
    return ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
            + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))


class _Runs:
    """Per-group reductions of values laid out group after group.

    `groups` must be sorted (0..ngroups-1, ascending): each group is then one
    contiguous run, and a per-group sum is one ``np.add.reduceat`` over the
    runs, several times faster than ``np.bincount`` with weights, and it adds
    in the same order (bit-identical sums for values in their original order
    within a group). Medians are taken run by run with ``np.median`` (a loop
    over the groups, a few hundred annuli, not over values).
    """

    def __init__(self, groups, ngroups):
        self.groups = groups
        self.ngroups = int(ngroups)
        self.counts = np.bincount(groups, minlength=self.ngroups)
        ends = np.cumsum(self.counts)
        self.starts = ends - self.counts
        self.nonempty = np.flatnonzero(self.counts)

    def sum(self, values):
        out = np.zeros(self.ngroups)
        if self.nonempty.size:
            out[self.nonempty] = np.add.reduceat(values, self.starts[self.nonempty])
        return out

    def count(self, mask):
        return self.sum(mask.astype(np.float64)).astype(np.int64)

    def median(self, values):
        out = np.full(self.ngroups, np.nan)
        for k in self.nonempty:
            a = self.starts[k]
            out[k] = np.median(values[a:a + self.counts[k]])
        return out


def _runs(values, groups, ngroups, *more):
    """`values` (and any `more` arrays laid out alike) in group order and their
    :class:`_Runs`; a stable sort only when `groups` is not sorted already (the order
    within a group is kept)."""
    groups = np.asarray(groups)
    arrays = (values,) + more
    if groups.size > 1 and not (groups[1:] >= groups[:-1]).all():
        order = np.argsort(groups, kind="stable")
        arrays, groups = tuple(a[order] for a in arrays), groups[order]
    return (*arrays, _Runs(groups, ngroups))


def _grouped_median(values, groups, ngroups):
    """Median of `values` within each group (groups are 0..ngroups-1); NaN for an empty one."""
    v, runs = _runs(np.asarray(values), groups, ngroups)
    return runs.median(v)


def _grouped_robust_std(values, groups, ngroups):
    """:func:`~coron_cli.core.robust.robust_sigma` within each group (finite `values`)."""
    v, runs = _runs(np.asarray(values), groups, ngroups)
    med = runs.median(v)
    return 1.4826 * runs.median(np.abs(v - med[runs.groups]))


_CLIP = 3.0
# variance of a unit normal truncated to +-_CLIP, which a clipped std is divided by
_CLIP_VAR = 1.0 - 2.0 * _CLIP * np.exp(-_CLIP ** 2 / 2) / np.sqrt(2 * np.pi) \
    / math.erf(_CLIP / np.sqrt(2.0))


def _grouped_clipped_std(values, groups, ngroups, iterations=3, start=None):
    """Standard deviation within each group after clipping at 3 sigma.

    Starts from the median and 1.4826 MAD (or from `start`, a (centre,
    spread) pair per group, e.g. a previous result), then `iterations` times
    keeps the values within 3 sigma of the centre and takes their mean and
    standard deviation (corrected for the clipping of a normal
    distribution). Unlike the MAD, which measures only the core, this sees
    the shoulders of a heavy-tailed distribution (residual speckles), while
    a few outliers still cannot move it.

    Returns
    -------
    s, center : ndarray of shape (ngroups,)
    """
    v, runs = _runs(np.asarray(values), groups, ngroups)
    return _clipped_std_runs(v, runs, iterations, start)


def _clipped_std_runs(v, runs, iterations=3, start=None):
    """:func:`_grouped_clipped_std` of values in group order (`runs`)."""
    g = runs.groups
    if start is None:
        center = runs.median(v)
        s = 1.4826 * runs.median(np.abs(v - center[g]))
    else:
        center, s = start
    for _ in range(iterations):
        keep = np.abs(v - center[g]) <= _CLIP * s[g]
        n = runs.count(keep)
        kv = np.where(keep, v, 0.0)
        mean = runs.sum(kv) / np.maximum(n, 1)
        var = runs.sum(np.where(keep, (v - mean[g]) ** 2, 0.0)) / np.maximum(n - 1, 1)
        enough = n >= 3
        s = np.where(enough, np.sqrt(var / _CLIP_VAR), s)
        center = np.where(enough, mean, center)
    return s, center


_NEG_CLIP = 5.0
_NEG_RATIO = 1.15
# E[x**2 | -_NEG_CLIP < x < 0] for a unit normal
_NEG_VAR = 1.0 - 2.0 * _NEG_CLIP * np.exp(-_NEG_CLIP ** 2 / 2) / np.sqrt(2 * np.pi) \
    / math.erf(_NEG_CLIP / np.sqrt(2.0))


def _grouped_spread(values, groups, ngroups, start=None):
    """The noise spread of each group: its clipped std, unless the negative side says more.

    The 3-sigma clipped standard deviation (:func:`_grouped_clipped_std`)
    keeps source light out, but also the tails of residual speckles. A
    source is never negative, so the values below the centre are measured
    too, clipped only at 5 sigma; where their spread exceeds the clipped
    std by more than 15 % (well beyond its sampling noise), the noise has a
    heavy tail that the clip would hide, and that spread is used instead.

    Returns
    -------
    s, center : ndarray of shape (ngroups,)
    """
    v, runs = _runs(np.asarray(values), groups, ngroups)
    return _spread_runs(v, runs, start)


def _spread_runs(v, runs, start=None):
    """:func:`_grouped_spread` of values in group order (`runs`)."""
    g = runs.groups
    s, center = _clipped_std_runs(v, runs, start=start)
    d = v - center[g]
    sn = s
    for _ in range(2):
        keep = (d < 0) & (d >= -_NEG_CLIP * np.maximum(s, sn)[g])
        n = runs.count(keep)
        m2 = runs.sum(np.where(keep, d * d, 0.0)) / np.maximum(n, 1)
        sn = np.where(n >= 8, np.sqrt(m2 / _NEG_VAR), s)
    return np.where(sn > _NEG_RATIO * s, sn, s), center


def calibrate_error(residual, err, center, *, width=2, iterations=6, sources=5.0,
                    deflate=False):
    """Match an error map to the residual noise measured in annuli.

    Parameters
    ----------
    residual : ndarray of shape (..., ny, nx)
        PSF-subtracted image(s); the leading axes are pooled.
    err : ndarray of the same shape
        Propagated 1-sigma noise (photon, read, PSF model).
    center : (x, y)
        Star position.
    width : int
        Annulus width in pixels.
    iterations : int
        Fixed-point iterations of the excess.
    sources : float or None
        Significance (residual / err) from which a pixel is taken to belong
        to a source (a companion, a disk) rather than to the noise; None
        keeps every pixel in the statistics.
    deflate : bool
        Also scale the error down in annuli where it is larger than the
        residual spread (no excess needed, spread of residual / err
        below 1), e.g. after an interpolation, which smooths the noise but
        not the propagated error. Without it the error is only increased.

    Returns
    -------
    ndarray of float32, same shape
        ``sqrt(f(r)**2 err**2 + e(r)**2)``, with ``e(r)`` the smallest excess
        variance (zero or more) per annulus for which the 3-sigma clipped
        standard deviation of ``residual / err_new`` is 1, and ``f(r)``
        1, or with `deflate` that spread where it is below 1 (and ``e(r)``
        is 0).

    Notes
    -----
    Residual speckles are an additive noise that the propagated error does
    not see. The robust statistics resist a few bright pixels, but a bright
    companion is not a few pixels: its core, rings and halo reach over
    several annuli and would inflate ``e(r)`` several times. So once the
    excess has converged, the sources are found, left out, and the excess
    is fitted again, once: the sources are disks around every region of
    ``z > sources`` of the first fit (a lone negative region is a residual
    speckle, which belongs in the statistics), sized by the
    source's core and brightness (:func:`source_regions`). With several
    images (leading axes) the sources are found in their mean, with the
    error of one image, so that a static speckle does not pass for a
    source. Finding the sources once, against the first (higher) noise,
    keeps a bright source's ring fragments from passing for sources of
    their own. An annulus that the disks cover by more than 70 % takes its
    excess partly from the neighbouring annuli, in proportion, and wholly
    beyond 80 % (:func:`_blend_covered`): the result changes smoothly as a
    disk grows by a pixel. On pure noise the threshold is rarely reached
    and the result is unchanged.
    The spread is a 3-sigma clipped standard deviation, not 1.4826 MAD:
    residual speckles are heavy-tailed, and the MAD would set the core of
    their distribution to 1 rather than its standard deviation. Where the
    negative side (which no source light reaches) shows a heavier tail than
    the clip lets through, its spread is used (:func:`_grouped_spread`).
    Pixels where `err` is not finite or not positive are left unchanged.
    """
    res = np.asarray(residual, dtype=np.float64)
    e = np.asarray(err, dtype=np.float64)
    ny, nx = res.shape[-2:]
    r = np.broadcast_to(_radius((ny, nx), center), res.shape)
    ring = (r // int(width)).astype(np.int64)
    ok = np.isfinite(res) & np.isfinite(e) & (e > 0)
    nring = int(ring.max()) + 1
    e2 = np.where(ok, e, 1.0) ** 2
    # the statistics are per annulus: lay the pixels out annulus after annulus once
    # (a stable sort keeps their order within an annulus), so that every grouped
    # reduction below is over contiguous runs (:class:`_Runs`)
    order = np.argsort(ring.ravel().astype(np.uint16 if nring < 2 ** 16 else np.int64),
                       kind="stable")
    g_all = ring.ravel()[order]
    ok_s = ok.ravel()[order]
    res_s = res.ravel()[order]
    e2_s = e2.ravel()[order]
    counts = np.bincount(g_all[ok_s], minlength=nring)
    excess = _fit_excess(res_s[ok_s], e2_s[ok_s], g_all[ok_s], nring, counts, iterations)
    src = np.zeros(res.shape[-2:], dtype=bool)
    use_s = ok_s
    if sources is not None:
        src = source_regions(_mean_significance(res, e2, excess[ring], ok), sources,
                             negative=False)
        if (ok & ~src).sum() < 8:
            src[:] = False            # sources everywhere: nothing to tell them from
        if src.any():
            use_s = ok_s & ~np.broadcast_to(src, res.shape).ravel()[order]
            g = g_all[use_s]
            kept = np.bincount(g, minlength=nring)
            masked = _fit_excess(res_s[use_s], e2_s[use_s], g, nring, kept, iterations)
            excess = _blend_covered(excess, masked, kept, counts)
    factor = np.ones(nring)
    if deflate:
        g = g_all[use_s]
        kept = np.bincount(g, minlength=nring)
        spread = _grouped_spread(res_s[use_s] / np.sqrt(e2_s[use_s]), g, nring)[0]
        low = (kept >= 8) & (excess == 0) & np.isfinite(spread) & (spread < 1.0)
        factor[low] = spread[low]
    out = np.where(ok, np.sqrt((factor[ring] * e) ** 2 + excess[ring]), e)
    return out.astype(np.float32)


_TRUST_LOW, _TRUST_HIGH = 0.2, 0.3   # share of an annulus the sources leave: none / full trust
_NEAR = 4                            # annuli either side that stand in for a covered one


def _blend_covered(excess, masked, kept, counts):
    """The excess per annulus once the sources are left out (`masked`, fitted on `kept`
    of `counts` pixels), where the sources cover much of an annulus taken partly or wholly
    from its neighbours.

    An annulus's own value is trusted fully where the sources leave 30 % of it or more,
    not at all below 20 % (or 8 pixels), in proportion in between; the rest comes from
    the annuli up to 4 either side, weighted by their trust over their distance squared
    (the nearest trusted annuli either side when none of those is). Every weight
    changes smoothly with `kept`: a pixel more or less under a source's disk never
    switches an annulus from its own value to its neighbours'. Annuli of fewer than 8
    pixels keep `excess`.
    """
    nring = masked.size
    frac = kept / np.maximum(counts, 1)
    trust = np.clip((frac - _TRUST_LOW) / (_TRUST_HIGH - _TRUST_LOW), 0.0, 1.0)
    trust[kept < 8] = 0.0
    if not (trust > 0).any():
        return excess
    idx = np.arange(nring)
    d = idx[:, None] - idx[None, :]
    kern = np.where((d != 0) & (np.abs(d) <= _NEAR), 1.0 / np.maximum(d * d, 1), 0.0)
    kern = kern * trust[None, :]
    den = kern.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        near = (kern @ masked) / den
    far = den == 0
    if far.any():
        ok = trust > 0
        near[far] = np.interp(idx[far], idx[ok], masked[ok])
    blended = trust * masked + (1.0 - trust) * near
    return np.where((trust > 0) | (counts >= 8), blended, excess)


def _mean_significance(res, e2, excess, ok):
    """Significance of the mean over the leading axes (2-D), for finding sources.

    A source sits still through the integrations while most of the noise
    does not; but residual speckles do, so the error of the mean is taken as
    the mean error, not the mean error / sqrt(n): a static speckle keeps the
    significance it has in one integration.
    """
    if res.ndim == 2:
        return np.where(ok, res / np.sqrt(e2 + excess), 0.0)
    flat = res.reshape(-1, *res.shape[-2:])
    okf = ok.reshape(flat.shape)
    n = okf.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(okf, flat, 0.0).sum(axis=0) / n
        sd = np.sqrt(np.where(okf, (e2 + excess).reshape(flat.shape), 0.0).sum(axis=0) / n)
        z = mean / sd
    return np.where(n > 0, z, 0.0)


def _fit_excess(rv, ev2, g, nring, counts, iterations):
    """Per-ring excess variance making the clipped std of rv / sqrt(ev2 + excess) 1."""
    rv, ev2, runs = _runs(rv, g, nring, ev2)
    g = runs.groups
    excess = np.zeros(nring)
    med_ev2 = runs.median(ev2)   # excess is constant in a ring
    start = None
    for _ in range(iterations):
        z = rv / np.sqrt(ev2 + excess[g])
        if start is None:
            med = runs.median(z)
            start = (med, 1.4826 * runs.median(np.abs(z - med[g])))
        s, _ = _spread_runs(z, runs, start=start)
        tot = med_ev2 + excess
        upd = excess + tot * (np.nan_to_num(s, nan=1.0) ** 2 - 1.0)
        excess = np.where(counts >= 8, np.maximum(upd, 0.0), 0.0)
        # the next clip starts from the first median and MAD, rescaled by how much
        # the excess has changed the typical error (exact where the propagated error
        # is the same across the annulus): no further sorting
        with np.errstate(invalid="ignore", divide="ignore"):
            k = np.sqrt(tot / (med_ev2 + excess))
        k = np.where(np.isfinite(k), k, 1.0)
        start = (start[0] * k, start[1] * k)
    return excess


_CORE_WINDOW = 6   # pixels either side of a peak searched for its half-maximum core


def source_regions(z, threshold=5.0, *, envelope=0.15, floor=0.5, center=None,
                   negative=True):
    """Disks around the sources of a significance map.

    Parameters
    ----------
    z : ndarray of shape (..., ny, nx)
        Significance (residual / error); each image plane (last two axes)
        is searched on its own. Non-finite values count as 0.
    threshold : float
        A source is a connected region of ``|z| > threshold`` (positive or
        negative).
    envelope, floor : float
        How far a source reaches, see Notes.
    center : (x, y), optional
        The star. When given, the disks are kept tight, as the KL fit needs
        (see Notes); without it they are generous, as noise statistics need.
    negative : bool
        Also take regions of ``z < -threshold`` as sources. Astrophysical
        sources are positive: a lone negative region is a residual speckle,
        part of the noise (the negative lobes a subtraction leaves beside a
        real source lie within that source's disk).

    Returns
    -------
    ndarray of bool, shape of z

    Notes
    -----
    Each source is covered by a disk centred on its peak. The radius
    scales with the source's core and its brightness: the half-maximum
    region around the peak (|z| above half the peak) gives the core
    radius ``h`` (about FWHM / 2, i.e. lambda/D / 2), and a point source's
    rings and halo fall roughly as ``envelope * (r / (lambda/D))**-3`` of
    the peak, so they stay above ``floor`` sigma out to
    ``(envelope * peak / floor)**(1/3)`` lambda/D. The disk radius is that,
    at least 1.5 lambda/D (the core and first dark ring), with lambda/D
    taken as ``2 h``. The disk is placed by where the source is, not by the
    noise around it, so the pixels left are a fair sample of the noise.

    Tight disks (`center` given), for leaving sources out of a fit whose
    information is mostly near the star: sources are taken brightest
    first, and a peak inside the disk of a brighter one is part of it (a
    ring fragment, a lobe of its halo) and adds nothing; the brightest
    source's core is the best measured, so no fainter source's core is
    taken as wider than it (a faint peak's half-maximum region is broadened
    by the noise and by what it sits on); and no disk reaches more than
    half-way from its source towards the star (but every disk keeps a
    radius of one lambda/D). Generous disks (no `center`), for noise
    statistics, give every peak its own disk from its own core, so a bright
    source's fragments and lobes mask more of its light.
    """
    z = np.nan_to_num(np.asarray(z, dtype=np.float64))
    planes = z.reshape(-1, *z.shape[-2:])
    out = np.zeros(planes.shape, dtype=bool)
    ny, nx = planes.shape[-2:]
    yy, xx = np.indices((ny, nx))
    for k, plane in enumerate(planes):
        a = np.abs(plane) if negative else np.maximum(plane, 0.0)
        labels, n = ndimage.label(a > threshold)
        if not n:
            continue
        peaks = ndimage.maximum_position(a, labels, index=np.arange(1, n + 1))
        tight = center is not None
        if tight:
            peaks = sorted(peaks, key=lambda p: -a[p])
        core_lod = None
        for (py, px) in peaks:
            if tight and out[k, py, px]:
                continue              # within a brighter source's disk: part of it
            zpk = a[py, px]
            wy0, wx0 = max(0, py - _CORE_WINDOW), max(0, px - _CORE_WINDOW)
            win = a[wy0:py + _CORE_WINDOW + 1, wx0:px + _CORE_WINDOW + 1]
            half, _ = ndimage.label(win > 0.5 * zpk)
            h = np.sqrt(np.count_nonzero(half == half[py - wy0, px - wx0]) / np.pi)
            lod = min(max(2.0 * h, 1.0), _CORE_WINDOW)
            if tight:
                core_lod = lod if core_lod is None else min(lod, core_lod)
                lod = core_lod
            radius = lod * max(1.5, (envelope * zpk / floor) ** (1.0 / 3.0))
            if tight:
                sep = np.hypot(px - center[0], py - center[1])
                radius = min(radius, max(0.5 * sep, lod))
            y0, y1 = max(0, int(py - radius) - 1), min(ny, int(py + radius) + 2)
            x0, x1 = max(0, int(px - radius) - 1), min(nx, int(px + radius) + 2)
            out[k, y0:y1, x0:x1] |= ((yy[y0:y1, x0:x1] - py) ** 2
                                     + (xx[y0:y1, x0:x1] - px) ** 2) <= radius ** 2
    return out.reshape(z.shape)


def source_footprints(z, threshold=5.0, *, low=2.0, smooth=1.0, inner=0.0, center=None,
                      grow=1):
    """The whole extent of sources of a significance map, extended ones included.

    A disk (:func:`source_regions`) fits a point source; a debris disk seen
    edge-on or a spiral arm is a long, faint structure whose peak may be
    nowhere near most of its light. Its footprint is the connected region
    where the smoothed significance exceeds `low` and that holds a pixel
    above `threshold`.

    Parameters
    ----------
    z : ndarray of shape (ny, nx)
        Significance map; non-finite values count as 0.
    threshold : float
        A footprint must reach this significance somewhere.
    low : float
        Its edge, in the map smoothed by a Gaussian of `smooth` pixels.
    smooth : float
        Smoothing (pixels), which tells a faint extended structure from
        pixel noise.
    inner : float
        Pixels closer than this to `center` are never in a footprint: there
        the residual speckles, not sources, make the significant pixels.
    center : (x, y), optional
        The star (required with `inner`).
    grow : int
        Footprints are widened by this many pixels.

    Returns
    -------
    ndarray of bool of shape (ny, nx)
    """
    z = np.nan_to_num(np.asarray(z, dtype=np.float64))
    zs = ndimage.gaussian_filter(z, smooth) if smooth else z
    keep = zs > low
    if inner and center is not None:
        keep &= _radius(z.shape, center) >= inner
    labels, n = ndimage.label(keep)
    if not n:
        return np.zeros(z.shape, bool)
    peak = ndimage.maximum(np.where(keep, z, -np.inf), labels, index=np.arange(1, n + 1))
    out = np.isin(labels, np.flatnonzero(np.asarray(peak) > threshold) + 1)
    if grow:
        out = ndimage.binary_dilation(out, iterations=int(grow))
        if inner and center is not None:
            out &= _radius(z.shape, center) >= inner
    return out


def extended_parts(footprints, points, z, *, ring_fraction=0.2):
    """The footprints that are more than point sources: extended structure (a disk).

    A point source's footprint holds its core, inside the disk that
    :func:`source_regions` draws about its peak, and its rings and halo
    outside: an Airy pattern has 16 % of its light beyond the first dark
    ring. A footprint whose significance lies for more than `ring_fraction`
    outside every point-source disk is extended (an edge-on disk's spine is
    far longer than the disks about its brightest clumps).

    Parameters
    ----------
    footprints : ndarray of bool of shape (ny, nx)
        Source footprints (:func:`source_footprints`).
    points : ndarray of bool of shape (ny, nx)
        The disks covering point sources (:func:`source_regions`).
    z : ndarray of shape (ny, nx)
        The significance map they were found in (negative and non-finite
        values count as 0).
    ring_fraction : float
        Largest share of a point source's significance outside its disk.

    Returns
    -------
    ndarray of bool of shape (ny, nx)
        The extended footprints, whole.
    """
    foot = np.asarray(footprints, bool)
    labels, n = ndimage.label(foot)
    if not n:
        return np.zeros(foot.shape, bool)
    zp = np.clip(np.nan_to_num(np.asarray(z, dtype=np.float64)), 0.0, None)
    total = np.bincount(labels[foot], weights=zp[foot], minlength=n + 1)
    out = foot & ~np.asarray(points, bool)
    outside = np.bincount(labels[out], weights=zp[out], minlength=n + 1)
    keep = np.flatnonzero(outside[1:] > ring_fraction * np.maximum(total[1:], 1e-300)) + 1
    return np.isin(labels, keep)


def student_t_factor(n, *, sigma=5.0):
    """Small-sample factor turning a noise estimate into a detection threshold.

    Parameters
    ----------
    n : float or ndarray
        Number of resolution elements in the annulus, ``2 pi r / fwhm``;
        rounded down to whole elements.
    sigma : float
        Gaussian-equivalent significance wanted (5 for "5 sigma").

    Returns
    -------
    ndarray of float64
        ``tau * sqrt(1 + 1/n)`` (see Notes); NaN where fewer than 2
        elements fit (no degree of freedom).

    Notes
    -----
    With ``n = floor(2 pi r / fwhm)`` resolution elements at radius r,

        tau = t^-1_{n-1}(1 - FPF),   FPF = 1 - Phi(sigma),

    the Student-t quantile with ``n - 1`` degrees of freedom at the
    false-positive fraction of a Gaussian `sigma` (2.87e-7 for 5 sigma),
    and the factor is ``tau * sqrt(1 + 1/n)``: the threshold ``factor *
    sigma_noise`` above the local mean has the false-positive fraction of a
    Gaussian `sigma` when the noise is estimated from n independent
    elements. This is the usual reading of Mawet et al. (2014) for contrast
    curves (and that of VIP's ``contrast_curve``); their eq. 9, for testing
    one candidate against the ``n2 = n - 1`` other elements, has ``n2 - 1``
    degrees of freedom and ``sqrt(1 + 1/n2)``, which is 1-15 % larger for
    10 or more elements (:func:`aperture_snr` uses that form). For n = 10:
    ``t^-1_9(1 - 2.867e-7) = 12.422``, factor 13.028.

    References
    ----------
    Mawet et al. 2014, ApJ 792, 97, section 3 and eq. 9.
    """
    from scipy import stats

    n = np.floor(np.asarray(n, dtype=np.float64))
    fpf = stats.norm.sf(sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = n >= 2
        tau = stats.t.isf(fpf, np.where(ok, n - 1.0, np.nan))
        return np.where(ok, tau * np.sqrt(1.0 + 1.0 / np.where(ok, n, 1.0)), np.nan)


def contrast_curve(radius, sigma, *, star_flux, fwhm, nsigma=5.0):
    """Detection limit as a contrast, with the small-sample correction.

    Parameters
    ----------
    radius, sigma : ndarray of shape (nr,)
        Annulus mid radii (pixels) and 1-sigma noise.
    star_flux : float
        The star's flux in the same units as the noise (peak of the
        unocculted PSF for a per-pixel noise).
    fwhm : float
        Resolution element (pixels), about lambda/D.
    nsigma : float

    Returns
    -------
    ndarray of float64 of shape (nr,)
        ``student_t_factor(2 pi r / fwhm) * sigma / star_flux``.
    """
    n = 2 * np.pi * np.asarray(radius, dtype=np.float64) / float(fwhm)
    return student_t_factor(n, sigma=nsigma) * np.asarray(sigma) / float(star_flux)


def _aperture_sums(image, fwhm):
    from scipy import signal

    img = np.where(np.isfinite(image), image, 0.0)
    return signal.fftconvolve(img, _disk(fwhm / 2.0), mode="same")


def aperture_sums(image, *, fwhm):
    """Sum of the image in a disk of diameter `fwhm` centred on every pixel.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
        NaN pixels are missing.
    fwhm : float
        Aperture diameter in pixels (the disk holds the pixels whose centre
        is within ``fwhm / 2``).

    Returns
    -------
    ndarray of float64 of shape (ny, nx)
        NaN where the aperture touches a missing pixel or leaves the image.
    """
    from scipy import signal

    img = np.asarray(image, dtype=np.float64)
    kernel = _disk(float(fwhm) / 2.0)
    sums = signal.fftconvolve(np.where(np.isfinite(img), img, 0.0), kernel, mode="same")
    inside = signal.fftconvolve(np.isfinite(img).astype(np.float64), kernel, mode="same")
    return np.where(inside > kernel.sum() - 0.5, sums, np.nan)


def aperture_snr(image, positions, center, *, fwhm, avoid=None):
    """Signal-to-noise of point sources by the aperture t-test of Mawet et al. 2014.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
        PSF-subtracted image.
    positions : ndarray of shape (npos, 2)
        Candidate (x, y) positions, 0-based pixels.
    center : (x, y)
        Star position.
    fwhm : float
        Aperture diameter in pixels.
    avoid : ndarray of shape (nav, 2), optional
        Other sources (x, y): reference apertures within 1.5 fwhm of one are
        not used for the noise.

    Returns
    -------
    snr : ndarray of shape (npos,)
        ``(f - mean(f_ref)) / (std(f_ref) sqrt(1 + 1/n2))`` where f is the
        flux in the aperture at the position and f_ref the fluxes of the
        n2 other non-overlapping apertures at the same separation.
    flux : ndarray of shape (npos,)
        Background-subtracted aperture flux ``f - mean(f_ref)``.
    """
    img = np.asarray(image, dtype=np.float64)
    sums = _aperture_sums(img, fwhm)
    pos = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    snr = np.full(len(pos), np.nan)
    flux = np.full(len(pos), np.nan)
    for i, (x, y) in enumerate(pos):
        dx, dy = x - center[0], y - center[1]
        r = np.hypot(dx, dy)
        n = int(np.floor(2 * np.pi * r / fwhm))
        if n < 3:
            continue
        ang = np.arctan2(dy, dx) + 2 * np.pi * np.arange(n) / n
        xs = center[0] + r * np.cos(ang)
        ys = center[1] + r * np.sin(ang)
        f = ndimage.map_coordinates(sums, [ys, xs], order=1, mode="nearest")
        ref = f[1:]
        if avoid is not None and len(avoid):
            av = np.asarray(avoid, dtype=np.float64)
            d = np.hypot(xs[1:, None] - av[None, :, 0], ys[1:, None] - av[None, :, 1])
            ref = ref[(d > 1.5 * fwhm).all(axis=1)]
            if ref.size < 2:
                continue
        s = ref.std(ddof=1)
        flux[i] = f[0] - ref.mean()
        if s > 0:
            snr[i] = flux[i] / (s * np.sqrt(1 + 1 / ref.size))
    return snr, flux


def snr_map_mawet(image, center, *, fwhm, exclusion=None, clip=5.0):
    """Per-pixel signal-to-noise map by the aperture t-test of Mawet et al. 2014.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
        PSF-subtracted image; NaN pixels are missing.
    center : (x, y)
        Star position, 0-based pixels.
    fwhm : float
        Aperture diameter in pixels (about lambda/D).
    exclusion : float, optional
        Apertures centred closer than this (pixels) to the tested pixel are
        left out of its noise estimate (default `fwhm`: every aperture that
        overlaps the tested one).
    clip : float
        Apertures whose sum is more than `clip` robust standard deviations
        (1.4826 MAD) from the median of their ring are not used as
        references (other bright sources, like the `avoid` of
        :func:`aperture_snr`); they are still tested themselves.

    Returns
    -------
    ndarray of float32 of shape (ny, nx)
        ``(f - mean(f_ref)) / (std(f_ref) sqrt(1 + 1/n2))``; NaN where the
        aperture touches a missing pixel, where fewer than 3 resolution
        elements fit at that radius, or where the noise cannot be measured.

    Notes
    -----
    f is the aperture sum at the pixel (:func:`aperture_sums`, one FFT
    convolution for the whole image). :func:`aperture_snr` compares it with
    the ``n2 = floor(2 pi r / fwhm) - 1`` other non-overlapping apertures at
    the same radius r. Here, so that no Python loop runs over pixels, the
    reference apertures are all the pixels of the same integer-radius ring,
    ``round(r)`` (a ring 1 pixel wide), except those within `exclusion` of
    the tested pixel: mean and standard deviation (ddof=1) of their
    aperture sums, after the clipping of outliers. Per-ring sums of f, f**2
    and counts come from ``np.bincount``; the excluded neighbourhood's sums
    are subtracted exactly. For that, rings are split by their index modulo
    ``M >= exclusion + 2``: one convolution of each class's f, f**2 and
    count with a disk of radius `exclusion` gives, at any pixel, the sums
    over its neighbours in its own ring (neighbours in other rings of the
    same class are M or more rings away, out of reach). The approximations
    against the aperture-by-aperture test are the use of every pixel of a
    1-pixel ring (neighbouring apertures overlap, so the spread is estimated
    with less scatter but the same expectation) and the ring's width;
    the small-sample factor keeps n2 independent elements. The result
    agrees with :func:`aperture_snr` to about 10 %.

    References
    ----------
    Mawet et al. 2014, ApJ 792, 97, eq. 9.
    """
    from scipy import signal

    img = np.asarray(image, dtype=np.float64)
    fwhm = float(fwhm)
    rex = fwhm if exclusion is None else float(exclusion)
    f = aperture_sums(img, fwhm=fwhm)
    r = _radius(img.shape, center)
    ring = np.floor(r + 0.5).astype(np.int64)
    ok = np.isfinite(f)
    nring = int(ring.max()) + 1
    use = ok.copy()
    if clip:
        g = ring[ok]
        med = _grouped_median(f[ok], g, nring)
        mad = _grouped_median(np.abs(f[ok] - med[g]), g, nring)
        use[ok] = np.abs(f[ok] - med[g]) <= clip * 1.4826 * mad[g]
    fv = np.where(use, f, 0.0)
    w = use.astype(np.float64)
    cnt = np.bincount(ring.ravel(), weights=w.ravel(), minlength=nring)
    s1 = np.bincount(ring.ravel(), weights=fv.ravel(), minlength=nring)
    s2 = np.bincount(ring.ravel(), weights=(fv * fv).ravel(), minlength=nring)
    # sums over each pixel's own-ring neighbours within rex (the excluded apertures)
    m = int(np.ceil(rex)) + 2
    kernel = _disk(rex)
    cls = ring % m
    stack = np.concatenate([np.stack([w * (cls == c), fv * (cls == c), fv * fv * (cls == c)])
                            for c in range(m)])
    conv = signal.fftconvolve(stack, kernel[None], mode="same", axes=(1, 2))
    conv = conv.reshape(m, 3, *img.shape)
    yy, xx = np.indices(img.shape)
    own = conv[cls, :, yy, xx]                                   # (ny, nx, 3)
    n_ex = np.rint(own[..., 0])
    n_ref = cnt[ring] - n_ex
    t1 = s1[ring] - own[..., 1]
    t2 = s2[ring] - own[..., 2]
    n2 = np.floor(2 * np.pi * r / fwhm) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = t1 / n_ref
        var = (t2 - n_ref * mean ** 2) / (n_ref - 1)
        snr = (f - mean) / (np.sqrt(var) * np.sqrt(1 + 1 / n2))
    good = ok & (n2 >= 2) & (n_ref >= 2) & (var > 0)
    return np.where(good, snr, np.nan).astype(np.float32)


def find_candidates(snr, center, *, threshold=5.0, inner_radius=0.0, fwhm=2.0, flux=None,
                    envelope=None, margin=1.2):
    """Point-source candidates: local maxima of an SNR map above a threshold.

    Parameters
    ----------
    snr : ndarray of shape (ny, nx)
        Signal-to-noise map; NaN pixels are ignored.
    center : (x, y)
        Star position, 0-based pixels.
    threshold : float
        Candidates have ``snr >= threshold``.
    inner_radius : float
        Pixels closer than this to the star (its core) are not searched.
    fwhm : float
        Resolution element in pixels: a candidate is the highest pixel within
        `fwhm` of itself.
    flux : ndarray of shape (ny, nx), optional
        The flux map the SNR was made from (the image for SCI/ERR, the
        aperture sums for an aperture t-test); with `envelope`, used to
        reject the sidelobes of brighter candidates.
    envelope : ndarray of shape (nr,), optional
        Largest sidelobe of the PSF relative to its peak at a distance of
        0, 1, 2... pixels (1 at 0, non-increasing; see
        :func:`coron_cli.core.psf_envelope`).
    margin : float
        Safety factor on the envelope's amplitude.

    Returns
    -------
    ndarray of float64 of shape (ncand, 3)
        Rows (x, y, snr) sorted by decreasing snr; x, y refined to sub-pixel
        by a parabola through the peak and its neighbours along each axis.

    Notes
    -----
    One candidate per source: local maxima are taken from the highest SNR
    down. With `flux` and `envelope`, a maximum at distance d of brighter
    candidates B keeps only what their sidelobes cannot explain,
    ``snr * (1 - sum_B margin env(d - 1) f_B / f)``, and is dropped when
    that is below the threshold (a PSF's rings are not new sources). The
    envelope is read one pixel closer in, as the rotation and combination
    of exposures spread a ring radially by about a pixel.
    Without them, a maximum within ``2 fwhm`` of a brighter candidate in
    the same connected region above the threshold is dropped.
    """
    from scipy import ndimage

    s = np.asarray(snr, dtype=np.float64)
    r = _radius(s.shape, center)
    filled = np.where(np.isfinite(s), s, -np.inf)
    above = (filled >= threshold) & (r >= inner_radius)
    peak = filled == ndimage.maximum_filter(filled, footprint=_disk(max(fwhm, 1.0)) > 0,
                                            mode="constant", cval=-np.inf)
    labels, _ = ndimage.label(above)
    yy, xx = np.nonzero(above & peak)
    order = np.argsort(-filled[yy, xx], kind="stable")
    use_env = flux is not None and envelope is not None
    if use_env:
        f = np.asarray(flux, dtype=np.float64)
        env = np.asarray(envelope, dtype=np.float64)
    kept = []
    for i in order:
        y, x = yy[i], xx[i]
        if use_env:
            fq = f[y, x]
            pred = sum(f[ky, kx] * env[min(max(int(np.floor(np.hypot(x - kx, y - ky) - 0.5)),
                                                0), env.size - 1)]
                       for ky, kx in kept)
            if not (fq > 0) or s[y, x] * (1.0 - margin * pred / fq) < threshold:
                continue
        elif any(labels[y, x] == labels[ky, kx] and np.hypot(x - kx, y - ky) < 2 * fwhm
                 for ky, kx in kept):
            continue
        kept.append((y, x))
    out = np.empty((len(kept), 3))
    ny, nx = s.shape
    for k, (y, x) in enumerate(kept):
        out[k] = (x + _vertex(filled, y, x, 1, 0, nx), y + _vertex(filled, y, x, 0, 1, ny),
                  s[y, x])
    return out


def refine_peaks(image, positions, *, radius):
    """Move positions to the brightest pixel of an image within `radius`, then sub-pixel.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
        NaN pixels are ignored.
    positions : ndarray of shape (npos, 2)
        Starting (x, y) positions, 0-based pixels.
    radius : float
        Search radius in pixels.

    Returns
    -------
    ndarray of float64 of shape (npos, 2)
        The brightest pixel within `radius` of each (rounded) position,
        refined by a parabola through it and its neighbours along each axis;
        a position whose neighbourhood holds no finite pixel is unchanged.
    """
    img = np.asarray(image, dtype=np.float64)
    filled = np.where(np.isfinite(img), img, -np.inf)
    ny, nx = img.shape
    h = int(np.ceil(radius))
    dy, dx = np.mgrid[-h:h + 1, -h:h + 1]
    inside = np.hypot(dx, dy) <= radius
    dx, dy = dx[inside], dy[inside]
    out = np.array(positions, dtype=np.float64).reshape(-1, 2)
    for k, (x0, y0) in enumerate(out.copy()):
        xs, ys = np.rint(x0).astype(int) + dx, np.rint(y0).astype(int) + dy
        ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
        if not ok.any() or not np.isfinite(filled[ys[ok], xs[ok]]).any():
            continue
        i = np.argmax(filled[ys[ok], xs[ok]])
        x, y = xs[ok][i], ys[ok][i]
        out[k] = (x + _vertex(filled, y, x, 1, 0, nx), y + _vertex(filled, y, x, 0, 1, ny))
    return out


def _vertex(a, y, x, dx, dy, n):
    """Sub-pixel offset of a parabola's vertex through a peak and its two neighbours."""
    i = x if dx else y
    if i == 0 or i == n - 1:
        return 0.0
    return float(parabola_vertex(a[y - dy, x - dx], a[y, x], a[y + dy, x + dx]))
