"""Reference-library selection: how much a reference frame looks like a science image.

Pure numerics on numpy arrays (no I/O, no dask): the region KLIP fits (an annulus about
the star, :func:`region_mask`), a frame moved so that its star sits where the science
star is (:func:`shift_to`), frames turned into zero-mean unit vectors over the region
(:func:`normalise`), so that a dot product of two of them is the Pearson correlation of
the two images there (:func:`correlate`), and the deterministic ranking of the
frames (:func:`rank_frames`).
"""

import numpy as np

__all__ = [
    "correlate",
    "largest_radius",
    "normalise",
    "rank_frames",
    "region_mask",
    "shift_to",
]


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


def shift_to(frames, star, target, order=1):
    """Frames (…, ny, nx) moved by ``target - star`` (x, y) pixels.

    Bilinear (`order` 1) interpolation, deterministic; an integer shift moves
    pixels exactly. Pixels that are NaN, or that come from outside the frame
    or from a NaN pixel, are NaN.
    """
    from scipy import ndimage

    frames = np.asarray(frames, dtype=np.float64)
    dx, dy = float(target[0]) - float(star[0]), float(target[1]) - float(star[1])
    if dx == 0.0 and dy == 0.0:
        return frames.copy()
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
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim == 2:
        frames = frames[None]
    v = frames[:, np.asarray(region, bool)]
    good = np.isfinite(v)
    count = good.sum(axis=1)
    total = np.where(good, v, 0.0).sum(axis=1)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    v = np.where(good, v - mean[:, None], 0.0)
    norm = np.sqrt(np.einsum("ij,ij->i", v, v))
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    return v * scale[:, None]


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
