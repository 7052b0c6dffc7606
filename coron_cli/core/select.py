"""Reference-library selection: how much a reference frame looks like a science image.

Pure numerics on numpy arrays (no I/O, no dask): the region KLIP fits (an annulus about
the star, :func:`region_mask`), a frame moved so that its star sits where the science
star is (:func:`shift_to`), frames turned into zero-mean unit vectors over the region
(:func:`normalise`), so that a dot product of two of them is the Pearson correlation of
the two images there (:func:`correlate`), both at once for the region's pixels only
(:func:`region_vectors`; :func:`region_scores` keeps only the scores: what a library
file costs), and the deterministic ranking of the frames (:func:`rank_frames`).

A stack of frames that share a star position (the integrations of one exposure) moves
at once, by slices of the whole stack in float64 (no loop over frames or pixels).
"""

import numpy as np

__all__ = [
    "blank_outliers",
    "blank_spikes",
    "correlate",
    "disattenuate",
    "largest_radius",
    "normalise",
    "rank_frames",
    "region_mask",
    "region_scores",
    "region_vectors",
    "shift_to",
    "source_mask",
]


#: a pixel is a spike when it exceeds its brightest neighbour by this many times the
#: frame's noise ...
SPIKE_SIGMA = 6.0
#: ... and stands above its faintest neighbour by this many times the neighbours' range
#: (a point source reaches about 3 at 1.85 px FWHM, 6 at 1.3 px, the sharpest JWST sampling)
SPIKE_RATIO = 8.0


def blank_spikes(frames, nsigma=SPIKE_SIGMA, ratio=SPIKE_RATIO):
    """Set to NaN, in place, the single-pixel spikes of frames (n, ny, nx) (float): cosmic
    rays and hot pixels that no flag marks. Returns how many.

    A pixel is a spike when it exceeds the brightest of its 8 neighbours by more
    than `nsigma` times its frame's noise (from the differences of adjacent pixels
    of every fourth row, 1.4826 MAD / sqrt 2) and stands above the faintest of them
    by more than `ratio` times their range: sharper than any point source can be
    (a pixel-centred source, whose neighbours keep half and a fifth of its peak,
    reaches about 3 at 1.85 px FWHM and 6 at 1.3 px, the sharpest JWST
    coronagraphic sampling), so a companion or a speckle is never blanked. NaN pixels
    stay NaN and count as neither brightest nor faintest.
    """
    from scipy import ndimage

    from .robust import nanmedian

    if frames.ndim != 3 or frames.shape[0] == 0:
        return 0
    ok = np.isfinite(frames)
    foot = np.ones((1, 3, 3), bool)
    foot[0, 1, 1] = False
    hi = ndimage.maximum_filter(np.where(ok, frames, -np.inf), footprint=foot, mode="nearest")
    lo = ndimage.minimum_filter(np.where(ok, frames, np.inf), footprint=foot, mode="nearest")
    rows = frames[:, ::4, :]
    d = (rows[:, :, 1:] - rows[:, :, :-1]).reshape(len(frames), -1)
    if np.isfinite(d).all():
        med = np.median(d, axis=1, keepdims=True)
        mad = np.median(np.abs(d - med), axis=1)
    else:
        med = nanmedian(d, 1, keepdims=True)
        mad = nanmedian(np.abs(d - med), 1)
    noise = 1.4826 * mad / np.sqrt(2.0)
    noise = np.where(np.isfinite(noise), noise, np.inf).astype(frames.dtype)[:, None, None]
    with np.errstate(invalid="ignore"):
        spike = ok & (frames - hi > frames.dtype.type(nsigma) * noise) \
            & (frames - lo > frames.dtype.type(ratio) * (hi - lo))
    frames[spike] = np.nan
    return int(spike.sum())


def blank_outliers(frames, psf_fwhm=None, passes=3, nsigma=6.0, rel=0.03):
    """Set to NaN, in place, the unflagged outliers of frames (n, ny, nx) (float) of one
    exposure that KLIP's preparation finds (:func:`coron_cli.core.find_outliers`, as
    :func:`coron_cli.steps.prepare_science` calls it: across the integrations, and,
    where they cannot decide, only pixels sharper than the diffraction limit
    `psf_fwhm` allows), and the rest of their tracks. Returns how many.

    Unlike :func:`blank_spikes`, it also takes cosmic rays of several pixels (a hit
    and its neighbours): one such ray can hold most of a frame's variance in the
    scored region and decide its score. With two integrations or more the hits then
    grow (up to `passes` times): a pixel beside a blanked one (8-neighbour) is an
    outlier too when it exceeds its faintest value in the other integrations by
    `nsigma` times its frame's noise (from the differences of adjacent rows, 1.4826
    MAD / sqrt 2) plus `rel` times that value: the rest of a track, which
    find_outliers leaves when its pixels hide each other (the middle of three,
    fainter than its ends). NaN pixels stay NaN and are never counted.
    """
    from scipy import ndimage

    from .badpix import find_outliers
    from .robust import robust_sigma

    if frames.ndim != 3 or frames.shape[0] == 0:
        return 0
    hit = find_outliers(frames, ~np.isfinite(frames), psf_fwhm=psf_fwhm)
    frames[hit] = np.nan
    total = int(hit.sum())
    nint = frames.shape[0]
    if nint < 2 or not total:
        return total
    diff = frames[:, 1:, :].astype(np.float64) - frames[:, :-1, :]
    noise = robust_sigma(diff, axis=(1, 2)) / np.sqrt(2.0)
    noise = np.where(np.isfinite(noise), noise, np.inf)[:, None, None]
    # each pixel's faintest value over the other integrations (inf: none finite)
    vals = np.where(np.isfinite(frames), frames, np.inf).astype(np.float64)
    two = np.partition(vals, 1, axis=0)[:2]
    lowest = np.argmin(vals, axis=0)
    others = np.where(np.arange(nint)[:, None, None] == lowest[None], two[1][None],
                      two[0][None])
    with np.errstate(invalid="ignore"):
        high = (vals - others) > nsigma * noise + rel * np.abs(others)
    del vals, two, others
    grow = np.ones((1, 3, 3), bool)
    for _ in range(max(1, int(passes))):
        new = ndimage.binary_dilation(hit, grow) & high & np.isfinite(frames)
        n = int(new.sum())
        if not n:
            break
        frames[new] = np.nan
        total += n
        hit = new
    return total


def source_mask(means, sigmas, nsigma=5.0, grow=2.0):
    """Where the science exposures differ: the pixels of (ny, nx) at which one mean
    frame of `means` (n, ny, nx; the exposures' stars registered, e.g. two rolls)
    exceeds another by more than `nsigma` times the two frames' noise added in
    quadrature (`sigmas`, 1-sigma, the same shape), and those within `grow` pixels of
    one. False everywhere for fewer than two exposures; NaN pixels are never set.

    A companion or a disk turns with the sky between rolls, the star's PSF does not:
    the sources of each exposure stand out against the others. Left out of the scores,
    they no longer hold the science vector's variance (a 1e-3 companion held 36 % of
    it in select-science seed 1).
    """
    means = np.asarray(means, np.float64)
    sigmas = np.asarray(sigmas, np.float64)
    out = np.zeros(means.shape[-2:], bool)
    if means.ndim != 3 or len(means) < 2:
        return out
    with np.errstate(invalid="ignore"):
        for j in range(len(means)):
            for k in range(len(means)):
                if j != k:
                    noise = np.hypot(sigmas[j], sigmas[k])
                    out |= (means[j] - means[k]) > nsigma * noise
    if grow > 0 and out.any():
        from scipy import ndimage

        r = int(np.ceil(grow))
        y, x = np.mgrid[-r:r + 1, -r:r + 1]
        out = ndimage.binary_dilation(out, structure=np.hypot(x, y) <= grow)
    return out


def largest_radius(shape, center):
    """Radius of the largest circle about `center` (x, y) inside a frame of `shape`."""
    ny, nx = shape[-2:]
    cx, cy = center
    return float(max(0.0, min(cx + 0.5, cy + 0.5, nx - 0.5 - cx, ny - 0.5 - cy)))


def region_mask(shape, center, inner=8.0, outer=None):
    """The pixels with ``inner <= r <= outer`` about `center` (x, y, 0-based), as a bool
    image; `outer` None is :func:`largest_radius`."""
    ny, nx = shape[-2:]
    if outer is None:
        outer = largest_radius(shape, center)
    y, x = np.indices((ny, nx), dtype=np.float64)
    r = np.hypot(x - center[0], y - center[1])
    return (r >= inner) & (r <= outer)


def _axis_plan(n, d):
    """How a shift by `d` pixels moves an axis of `n` pixels, bilinearly.

    Output pixel i takes the input at ``s = i - d`` (as scipy.ndimage.shift
    does): ``(1 - t) in[i + c0] + t in[i + c0 + 1]`` with ``c0 = floor(-d)``,
    ``t = -d - c0``; only the pixels with ``0 <= s <= n - 1`` (in float64, as
    ndimage, mode "constant") have a value. Returns (c0, t, i0, i1): output
    pixels i0..i1-1 have one; (0, 0, 0, 0) when none.
    """
    s = np.arange(n, dtype=np.float64) - d
    inside = np.flatnonzero((s >= 0) & (s <= n - 1))
    if inside.size == 0:
        return 0, 0.0, 0, 0
    c0 = int(np.floor(-d))
    t = float(-d - c0)
    if t <= 1e-9:          # a whole pixel (to 1e-9): one input pixel per output pixel
        t = 0.0
    elif t >= 1.0 - 1e-9:
        c0, t = c0 + 1, 0.0
    i0, i1 = int(inside[0]), int(inside[-1]) + 1
    # the input pixels used exist (s in [0, n - 1] and t rounded to a whole pixel
    # within 1e-9 keep i + c0 (+ 1 when t > 0) inside the axis)
    i0 = max(i0, -c0)
    i1 = min(i1, n - c0 - (1 if t > 0 else 0))
    return c0, t, i0, max(i0, i1)


def shift_to(frames, star, target, order=1):
    """Frames (…, ny, nx) moved by ``target - star`` (x, y) pixels, float64.

    Bilinear (`order` 1) interpolation, deterministic; an integer shift moves
    pixels exactly. Pixels that come from outside the frame, or from a NaN or
    infinite pixel, are NaN (an output pixel comes from the two input pixels
    about its source along each axis, weighted 1 - t and t; a fraction t
    within 1e-9 of a whole pixel counts as a whole pixel, so that the pixel
    beside it does not count). All the frames move by the same shift,
    computed on the whole stack at once, in float64: each output pixel is
    ``(1 - ty) ((1 - tx) a + tx b) + ty ((1 - tx) c + tx d)`` of its four
    input pixels. These are the values of ``scipy.ndimage.shift(frame, (dy,
    dx), order=1, mode="constant", prefilter=False)`` to rounding, the same
    pixels outside the frame. Another `order` uses ndimage's spline of that
    order, frame by frame (NaN pixels where the spline gives NaN pixels a
    weight above 1e-9).
    """
    frames = np.asarray(frames)
    if frames.dtype.kind != "f":
        frames = frames.astype(np.float64)
    dx, dy = float(target[0]) - float(star[0]), float(target[1]) - float(star[1])
    if dx == 0.0 and dy == 0.0:
        return frames.astype(np.float64, copy=True)
    if order != 1:
        return _shift_ndimage(frames, dx, dy, order)
    ny, nx = frames.shape[-2:]
    out = np.full(frames.shape, np.nan)
    cx, tx, x0, x1 = _axis_plan(nx, dx)
    cy, ty, y0, y1 = _axis_plan(ny, dy)
    if x1 <= x0 or y1 <= y0:
        return out
    # along x: the rows the output needs, columns x0..x1-1 (float64 from here on;
    # 0 * NaN is never formed: a weight of 0 leaves its pixel out)
    rows = frames[..., y0 + cy:y1 + cy + (1 if ty > 0 else 0), :]
    left = rows[..., x0 + cx:x1 + cx]
    if tx > 0:
        right = rows[..., x0 + cx + 1:x1 + cx + 1]
        part = np.multiply(left, 1.0 - tx, dtype=np.float64)
        part += np.multiply(right, tx, dtype=np.float64)
    else:
        part = left.astype(np.float64)
    # along y
    dest = out[..., y0:y1, x0:x1]
    if ty > 0:
        np.multiply(part[..., :-1, :], 1.0 - ty, out=dest)
        dest += ty * part[..., 1:, :]
    else:
        dest[...] = part
    np.copyto(dest, np.nan, where=~np.isfinite(dest))   # an infinite input pixel too
    return out


def _shift_ndimage(frames, dx, dy, order):
    """:func:`shift_to` with scipy.ndimage's spline of `order`, frame by frame."""
    from scipy import ndimage

    frames = np.asarray(frames, dtype=np.float64)
    lead = frames.shape[:-2]
    flat = frames.reshape((-1,) + frames.shape[-2:])
    out = np.empty_like(flat)
    for i, f in enumerate(flat):
        bad = ~np.isfinite(f)
        filled = np.where(bad, 0.0, f)
        moved = ndimage.shift(filled, (dy, dx), order=order, mode="constant", cval=0.0,
                              prefilter=False)
        holes = ndimage.shift(bad.astype(np.float64), (dy, dx), order=order,
                              mode="constant", cval=1.0, prefilter=False)
        moved[holes > 1e-9] = np.nan
        out[i] = moved
    return out.reshape(lead + frames.shape[-2:])


def normalise(frames, region):
    """(n, npix) float64 vectors: each frame's pixels in `region`, minus their mean and
    divided by their norm (NaN pixels count as the mean, i.e. 0).

    The dot product of two such vectors is the Pearson correlation of the two
    frames over the region (exactly, when neither has NaN pixels there). A
    frame that is constant (or all NaN) in the region gives a zero vector:
    it scores 0 against anything.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    # a new array (boolean indexing copies), float64, worked on in place
    return _unit_rows(frames[:, np.asarray(region, bool)].astype(np.float64, copy=False))


#: frames a pass of :func:`region_vectors` and :func:`region_scores` works on (their
#: scratch arrays: a few MB)
_CHUNK = 4


def region_vectors(frames, star, target, region):
    """``normalise(shift_to(frames, star, target), region)`` for frames (n, ny, nx),
    computed for the pixels of `region` only: the same values to rounding (the
    same shifted pixels, bit for bit; the sums over the region may round
    differently, by ~1e-16).

    Each pixel of the region is the bilinear mix of :func:`shift_to` of the
    four input pixels about its source, NaN when its source is outside the
    frame; the frames need not be float64 (float32 pixels are used as
    they are, the arithmetic is float64).
    """
    frames = np.asarray(frames)
    out = np.empty((1 if frames.ndim == 2 else len(frames), int(np.count_nonzero(region))))
    for i, chunk in _moved_chunks(frames, star, target, region):
        out[i:i + len(chunk)] = chunk
    return _unit_rows(out)


def region_scores(frames, star, target, region, science, noise=False):
    """``correlate(science, region_vectors(frames, star, target, region))``: the scores
    (n, n_science) of frames (n, ny, nx) against `science` vectors (from
    :func:`normalise`), a few frames at a time, so that only the scores are kept
    (the same values as those two, to rounding).

    With `noise`, also each frame's noise fraction (n,): the share of its variance
    over the region that is noise, ``v / var_i``, where ``var_i`` is the variance of
    frame i's moved pixels about their mean and ``v`` the mean over the region's
    pixels of their variance across the frames (unbiased; pixels finite in two
    frames or more): the frames must be integrations of one exposure (the same
    scene, independent noise). NaN with fewer than two frames, or no such pixel.
    Returns (scores, fraction) then.
    """
    science = np.atleast_2d(np.asarray(science, np.float64))
    frames = np.asarray(frames)
    n = 1 if frames.ndim == 2 else len(frames)
    out = np.empty((n, len(science)))
    var = np.full(n, np.nan)
    total = total2 = count = None
    for i, chunk in _moved_chunks(frames, star, target, region):
        if noise:
            ok = np.isfinite(chunk)
            m = len(chunk)
            if total is None:
                total, total2 = np.zeros(chunk.shape[1]), np.zeros(chunk.shape[1])
                count = np.zeros(chunk.shape[1], np.int64)
            vals = np.where(ok, chunk, 0.0)
            total += vals.sum(axis=0)
            total2 += np.einsum("ij,ij->j", vals, vals)
            count += ok.sum(axis=0)
            k = ok.sum(axis=1)
            mean = np.divide(vals.sum(axis=1), k, out=np.zeros(m), where=k > 1)
            dev = np.where(ok, vals - mean[:, None], 0.0)
            var[i:i + m] = np.where(k > 1, np.einsum("ij,ij->i", dev, dev)
                                    / np.maximum(k - 1, 1), np.nan)
        out[i:i + len(chunk)] = correlate(science, _unit_rows(chunk))
    if not noise:
        return out
    fraction = np.full(n, np.nan)
    if n >= 2 and count is not None and (count >= 2).any():
        use = count >= 2
        c = count[use].astype(np.float64)
        across = (total2[use] - total[use] ** 2 / c) / (c - 1.0)
        v = float(np.mean(np.maximum(across, 0.0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            fraction = np.where(var > 0, v / var, np.nan)
    return out, fraction


#: the largest noise fraction :func:`disattenuate` corrects for (a frame that is 95 %
#: noise or more gains at most sqrt(20) = 4.5 times its score)
MAX_NOISE_FRACTION = 0.95


def disattenuate(scores, fraction, max_fraction=MAX_NOISE_FRACTION):
    """Scores (n, n_science) of frames whose noise fraction is `fraction` (n,)
    (:func:`region_scores`) corrected for the library frame's own noise: ``score /
    sqrt(1 - fraction)`` (Spearman's correction for attenuation), the correlation of
    its noiseless image with the science.

    A frame's photon noise lowers its Pearson correlation with anything by
    ``sqrt(1 - fraction)``: without the correction the ranking follows the
    references' brightness before their likeness. `fraction` is clipped to [0,
    `max_fraction`]; NaN (one integration: no estimate) leaves the score as it is.
    The corrected score may exceed 1 by the estimate's own noise.
    """
    scores = np.asarray(scores, np.float64)
    f = np.asarray(fraction, np.float64).reshape(-1)
    gain = np.where(np.isfinite(f), 1.0 / np.sqrt(1.0 - np.clip(f, 0.0, max_fraction)), 1.0)
    return scores * gain.reshape((-1,) + (1,) * (scores.ndim - 1))


def _moved_chunks(frames, star, target, region):
    """(first frame, its pixels of `region` moved as :func:`shift_to` moves them, float64
    (m, npix), NaN where their source is outside the frame) for a few frames at a time.

    Each chunk is a scratch array, made once and overwritten by the next: a
    few MB of memory touched however many the frames.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.dtype.kind != "f":
        frames = frames.astype(np.float64)
    n, ny, nx = frames.shape
    ys, xs = np.nonzero(np.asarray(region, bool))     # the order of frames[:, region]
    dx, dy = float(target[0]) - float(star[0]), float(target[1]) - float(star[1])
    cx, tx, x0, x1 = _axis_plan(nx, dx)
    cy, ty, y0, y1 = _axis_plan(ny, dy)
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    everywhere = bool(inside.all())
    outside = np.flatnonzero(~inside)
    flat = frames.reshape(n, ny * nx)
    src = (ys[inside] + cy) * nx + (xs[inside] + cx)
    c = max(1, min(n, _CHUNK))
    pick = np.empty((c, src.size), frames.dtype)
    top, bottom, scratch = (np.empty((c, src.size)) for _ in range(3))
    full = top if everywhere else np.empty((c, ys.size))

    def row(sub, index, dest, m):       # (1 - tx) a + tx b along x, as shift_to
        np.take(sub, index, axis=1, out=pick[:m], mode="clip")
        if tx > 0:
            np.multiply(pick[:m], 1.0 - tx, out=dest, dtype=np.float64)
            np.take(sub, index + 1, axis=1, out=pick[:m], mode="clip")
            dest += np.multiply(pick[:m], tx, out=scratch[:m], dtype=np.float64)
        else:
            np.copyto(dest, pick[:m])

    for i in range(0, n, c):
        m = min(c, n - i)
        sub = flat[i:i + m]
        dest = top[:m]
        row(sub, src, dest, m)
        if ty > 0:                      # then (1 - ty) top + ty bottom, as shift_to
            dest *= 1.0 - ty
            row(sub, src + nx, bottom[:m], m)
            bottom[:m] *= ty
            dest += bottom[:m]
        if not everywhere:
            full[:m, inside] = dest
            full[:m, outside] = np.nan
        yield i, full[:m]


def _unit_rows(v):
    """Rows of `v` (n, npix; float64, overwritten) minus their mean over the finite
    pixels and divided by their norm, the other pixels 0 (:func:`normalise`)."""
    bad = ~np.isfinite(v)
    any_bad = bool(bad.any())
    if any_bad:
        v[bad] = 0.0
        count = v.shape[1] - bad.sum(axis=1)
    else:
        count = np.full(v.shape[0], v.shape[1])
    total = v.sum(axis=1)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    v -= mean[:, None]
    if any_bad:
        v[bad] = 0.0
    norm = np.sqrt(np.einsum("ij,ij->i", v, v))
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    v *= scale[:, None]
    return v


def correlate(science, library):
    """Scores (n_library, n_science): `library` vectors (from :func:`normalise`) against
    `science` vectors; each in [-1, 1]."""
    science = np.atleast_2d(np.asarray(science, np.float64))
    library = np.atleast_2d(np.asarray(library, np.float64))
    return np.clip(library @ science.T, -1.0, 1.0)


def rank_frames(scores, names, integrations):
    """For each science column of `scores` (n_frames, n_science), the frame indices best
    first: highest score, then file name, then integration (so that the order depends
    only on the values, never on how they were computed). NaN scores come last.

    Returns
    -------
    ndarray (n_science, n_frames) of int
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    names = np.asarray(names, dtype=str)
    integrations = np.asarray(integrations, dtype=np.int64)
    out = []
    for j in range(scores.shape[1]):
        key = np.where(np.isfinite(scores[:, j]), -scores[:, j], np.inf)
        # np.lexsort: the last key is the primary one
        out.append(np.lexsort((integrations, names, key)))
    return np.array(out, dtype=np.int64).reshape(scores.shape[1], scores.shape[0])
