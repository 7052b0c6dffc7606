"""Robust statistics: noise from the median absolute deviation (numpy only)."""

import warnings

import numpy as np

__all__ = ["robust_sigma", "frame_noise"]

#: Ratio of the standard deviation of a normal distribution to its median
#: absolute deviation, 1 / Phi^-1(3/4) (to the four decimals used throughout).
MAD_TO_SIGMA = 1.4826


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        med = np.nanmedian(v, axis=axis, keepdims=True)
        return MAD_TO_SIGMA * np.nanmedian(np.abs(v - med), axis=axis)


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
