"""Small pixel-geometry helpers shared by the core modules (numpy only).

Kept apart from the modules that use them so that importing one of those
(e.g. :mod:`~coron_cli.core.klip`) does not load what another needs (the
``scipy.signal`` and ``scipy.stats`` of :mod:`~coron_cli.core.metrics`).
"""

import numpy as np

__all__ = ["parabola_vertex"]


def _radius(shape, center):
    """Distance of every pixel of an image of `shape` to `center` (x, y), float64."""
    y, x = np.indices(shape, dtype=np.float64)
    return np.hypot(x - center[0], y - center[1])


def _disk(radius):
    """Top-hat disk kernel: 1 where a pixel's centre is within `radius`, float64."""
    h = int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    return (np.hypot(xx, yy) <= radius).astype(np.float64)


def parabola_vertex(lo, c, hi):
    """Sub-pixel peak: vertex of the parabola through three equally spaced samples.

    Parameters
    ----------
    lo, c, hi : float or ndarray (broadcastable)
        Samples at offsets -1, 0 and +1, normally a peak `c` and its two
        neighbours.

    Returns
    -------
    numpy scalar or ndarray
        Offset of the vertex from the middle sample, ``0.5 (lo - hi) / (lo -
        2 c + hi)``, clipped to [-0.5, 0.5]; 0 where the parabola has no
        maximum (``lo - 2 c + hi >= 0``: flat, a straight line or a
        minimum), where it is not defined (a NaN) and where `lo` or `hi` is
        not finite. The arithmetic is done in the inputs' own dtype.
    """
    lo, c, hi = np.asarray(lo), np.asarray(c), np.asarray(hi)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        den = lo - 2 * c + hi
        ok = (den < 0) & np.isfinite(lo) & np.isfinite(hi)
        s = np.where(ok, 0.5 * (lo - hi) / den, 0.0)
    return np.clip(s, -0.5, 0.5)
