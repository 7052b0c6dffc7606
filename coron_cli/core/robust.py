"""Robust statistics: noise from the median absolute deviation (numpy only)."""

import warnings

import numpy as np

__all__ = ["robust_sigma", "frame_noise", "nanmedian"]

#: Ratio of the standard deviation of a normal distribution to its median
#: absolute deviation, 1 / Phi^-1(3/4) (to the four decimals used throughout).
MAD_TO_SIGMA = 1.4826


#: below this many values per median, numpy's nanmedian goes through masked arrays (slow)
_SORT_BELOW = 600


def nanmedian(values, axis, keepdims=False):
    """The median of the non-NaN values along `axis` (an int or a tuple), NaN where
    there is none (without a warning): what ``np.nanmedian`` gives, bit for bit.

    For short reductions (the integrations of a cube at every pixel), where
    numpy takes a slow masked-array path, the values are sorted (NaN last)
    and the middle of the finite count taken: several times faster. Long
    ones go to ``np.nanmedian``.
    """
    v = np.asarray(values, dtype=np.float64)
    axes = tuple(a % v.ndim for a in ((axis,) if np.ndim(axis) == 0 else axis))
    length = int(np.prod([v.shape[a] for a in axes])) if axes else 1
    if length >= _SORT_BELOW or v.size == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(v, axis=axes, keepdims=keepdims)
    kept = [a for a in range(v.ndim) if a not in axes]
    w = np.transpose(v, kept + list(axes)).reshape([v.shape[a] for a in kept] + [length])
    n = (~np.isnan(w)).sum(axis=-1)
    w = np.sort(w, axis=-1)
    lo = np.take_along_axis(w, (np.maximum(n - 1, 0) // 2)[..., None], -1)[..., 0]
    hi = np.take_along_axis(w, np.minimum(n // 2, length - 1)[..., None], -1)[..., 0]
    out = np.where(n > 0, (lo + hi) / 2.0, np.nan)
    return np.expand_dims(out, axes) if keepdims else out


def robust_sigma(values, axis=None):
    """Robust standard deviation: 1.4826 times the median absolute deviation.

    ``1.4826 * median(|v - median(v)|)`` over the finite values of `values`:
    the standard deviation for normal noise, which a minority of outliers
    (sources, cosmic rays, hot pixels) cannot inflate.

    Parameters
    ----------
    values : array_like
        Computed in float64. NaN and infinite values are ignored.
    axis : None, int or tuple of int
        Axes to reduce (e.g. ``(1, 2)`` for one value per frame of a
        cube); None reduces all of them.

    Returns
    -------
    float or ndarray of float64
        A float for ``axis=None``, else an array of the shape of `values`
        without `axis`. NaN where there is no finite value (without a
        warning); 0 where there is only one.
    """
    v = np.asarray(values, dtype=np.float64)
    if axis is None:
        v = v[np.isfinite(v)]
        if v.size == 0:
            return float("nan")
        return float(MAD_TO_SIGMA * np.median(np.abs(v - np.median(v))))
    v = np.where(np.isfinite(v), v, np.nan)
    med = nanmedian(v, axis, keepdims=True)          # all-NaN slices give NaN
    return MAD_TO_SIGMA * nanmedian(np.abs(v - med), axis)


def frame_noise(sci):
    """Per-frame noise of images without an error array, from their pixel differences.

    The differences of horizontally adjacent pixels remove the smooth scene
    (the star's halo) and keep the white noise, sqrt(2) times larger:
    ``robust_sigma(diff) / sqrt(2)`` per frame. Frames without a usable
    estimate get 1.

    Parameters
    ----------
    sci : array_like of shape (..., ny, nx)

    Returns
    -------
    ndarray of float32, the shape of `sci`
        Constant over each frame.
    """
    s = np.asarray(sci, dtype=np.float64)
    flat = s.reshape(-1, *s.shape[-2:])
    with np.errstate(invalid="ignore"):         # inf - inf: left out as NaN
        diff = np.diff(flat, axis=-1)
    sig = robust_sigma(diff, axis=(1, 2)) / np.sqrt(2.0)
    sig = np.where(np.isfinite(sig) & (sig > 0), sig, 1.0)
    return np.broadcast_to(sig[:, None, None], flat.shape).reshape(s.shape).astype(np.float32)
