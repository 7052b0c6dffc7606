"""Rotation of exposures to north-up about the star and their combination."""

import numpy as np
from scipy import ndimage

__all__ = ["north_up", "combine_images"]


def north_up(image, angle, center, *, out_shape=None, out_center=None, order=3):
    """Rotate an image about the star so that north is up.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
        Detector image; non-finite pixels are treated as missing.
    angle : float
        Position angle of the detector +y axis, degrees east of north (the
        roll, e.g. from the WCS or ROLL_REF). The image is rotated
        counter-clockwise by this angle.
    center : (x, y)
        Star position in `image`, 0-based pixels.
    out_shape : (ny, nx), optional
        Output shape; defaults to the input's.
    out_center : (x, y), optional
        Where the star lands in the output; defaults to the centre of the
        output frame, ((nx - 1) / 2, (ny - 1) / 2).
    order : int
        Spline order of the interpolation (3 for images, 1 for variances).

    Returns
    -------
    rotated : ndarray of float64 of shape out_shape
        NaN where no valid input pixel contributes.

    Notes
    -----
    With north up and east left, a source at separation rho and position
    angle theta sits at ``(-rho sin theta, rho cos theta)`` from the star;
    on a detector whose +y axis has position angle phi it sits at
    ``(-rho sin(theta - phi), rho cos(theta - phi))``. The output pixel q
    therefore samples the input at ``c_in + Rot(-phi) (q - c_out)``.
    """
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    out_shape = img.shape if out_shape is None else tuple(out_shape)
    if out_center is None:
        out_center = ((out_shape[1] - 1) / 2.0, (out_shape[0] - 1) / 2.0)
    phi = np.deg2rad(angle)
    c, s = np.cos(phi), np.sin(phi)
    yy, xx = np.indices(out_shape, dtype=np.float64)
    u = xx - out_center[0]
    v = yy - out_center[1]
    # rotation by -phi of (u, v)
    xin = center[0] + c * u + s * v
    yin = center[1] - s * u + c * v
    valid = np.isfinite(img)
    filled = _fill_from_neighbours(img, valid) if order > 1 and not valid.all() else \
        np.where(valid, img, 0.0)
    coords = np.stack([yin, xin])
    out = ndimage.map_coordinates(filled, coords, order=order, mode="constant", cval=0.0,
                                  prefilter=order > 1)
    frac = ndimage.map_coordinates(valid.astype(np.float64), coords, order=1,
                                   mode="constant", cval=0.0)
    out[frac < 0.999] = np.nan
    return out


def _fill_from_neighbours(img, valid, passes=2):
    """`img` with its invalid pixels set to the mean of their valid neighbours (3x3),
    `passes` times over (growing into larger holes), else 0.

    Those values are never output (the rotation gives NaN wherever an invalid
    pixel contributes); they keep a spline's ringing from a hole filled with 0
    out of the valid pixels around it.
    """
    out = np.where(valid, img, 0.0)
    have = valid.astype(np.float64)
    kernel = np.ones((3, 3))
    for _ in range(passes):
        if have.all():
            break
        num = ndimage.convolve(out * have, kernel, mode="constant")
        den = ndimage.convolve(have, kernel, mode="constant")
        new = (have == 0) & (den > 0)
        out[new] = num[new] / den[new]
        have[new] = 1.0
    return out


def combine_images(images, variances):
    """Inverse-variance weighted mean of aligned images.

    Parameters
    ----------
    images : ndarray of shape (nexp, ny, nx)
        Images on a common grid; NaN where an image has no data.
    variances : ndarray of shape (nexp, ny, nx)
        Their variances; non-finite or non-positive values give no weight.

    Returns
    -------
    image : ndarray of float64 of shape (ny, nx)
        ``sum(w x) / sum(w)`` with ``w = 1 / variance``; NaN where no
        exposure has data.
    variance : ndarray of float64 of shape (ny, nx)
        ``1 / sum(w)``.
    """
    x = np.asarray(images, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(v) & (v > 0)
    w = np.where(ok, 1.0 / np.where(ok, v, 1.0), 0.0)
    wsum = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(wsum > 0, (w * np.where(ok, x, 0.0)).sum(axis=0) / wsum, np.nan)
        var = np.where(wsum > 0, 1.0 / wsum, np.nan)
    return img, var


def mean_frames(sci, err, bad=None):
    """Mean over integrations of (nint, ny, nx) images and the variance of the mean.

    Values that are not finite, have no positive finite error, or are `bad`
    (a mask broadcast to `sci`, e.g. flagged DO_NOT_USE) are left out; NaN
    where an (y, x) has none left.
    """
    sci = np.asarray(sci, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64).reshape(sci.shape)
    good = np.isfinite(sci) & np.isfinite(err) & (err > 0)
    if bad is not None:
        good &= ~np.broadcast_to(np.asarray(bad, bool), sci.shape)
    n = good.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(n > 0, np.where(good, sci, 0).sum(axis=0) / n, np.nan)
        var = np.where(n > 0, np.where(good, err ** 2, 0).sum(axis=0) / n ** 2, np.nan)
    return img, var


def sky_offsets(separation, pa, roll):
    """Detector offsets (dx, dy) from the star of sources at (separation, position angle).

    Parameters
    ----------
    separation : array_like
        Pixels.
    pa : array_like
        Position angles, degrees east of north (broadcast with `separation`).
    roll : float
        Position angle of the image's +y axis, degrees east of north.

    Returns
    -------
    ndarray of shape (..., 2)
        With the usual sky parity (east to the left when north is up).
        :func:`position_angle` is its inverse.
    """
    a = np.radians(np.asarray(pa) - roll)
    sep = np.asarray(separation)
    return np.stack([-sep * np.sin(a), sep * np.cos(a)], axis=-1)


def position_angle(dx, dy, roll):
    """Position angle (degrees east of north, in [0, 360)) of detector offsets (dx, dy)
    from the star, for an image whose +y axis is at `roll` (inverse of :func:`sky_offsets`)."""
    return np.mod(roll + np.degrees(np.arctan2(-np.asarray(dx), np.asarray(dy))), 360.0)
