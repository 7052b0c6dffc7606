"""Bad pixels: masks from DQ, outlier (cosmic-ray) detection, repair."""

import warnings

import numpy as np
from scipy import ndimage

__all__ = ["DO_NOT_USE", "OUTLIER", "bad_pixel_mask", "find_outliers", "repair_bad_pixels"]

#: DQ bit value of a pixel that must not be used (JWST convention).
DO_NOT_USE = 1
#: DQ bit value set on outliers found here (JWST's OUTLIER flag).
OUTLIER = 16


def bad_pixel_mask(data, dq=None, *, bad_bits=DO_NOT_USE):
    """Pixels that cannot be trusted.

    Parameters
    ----------
    data : ndarray of shape (..., ny, nx)
    dq : ndarray of int, same shape, optional
    bad_bits : int
        A pixel is bad when ``dq & bad_bits`` is non-zero.

    Returns
    -------
    ndarray of bool, same shape
        True where the pixel is flagged or its value is not finite.
    """
    bad = ~np.isfinite(data)
    if dq is not None and bad_bits:
        bad |= (np.asarray(dq).astype(np.int64, copy=False) & int(bad_bits)) != 0
    return bad


def repair_bad_pixels(images, bad, *, max_radius=8, groups=None):
    """Replace bad pixels, from the other frames of their group or their neighbours.

    Parameters
    ----------
    images : ndarray of shape (..., ny, nx)
    bad : ndarray of bool, same shape
        Pixels to replace.
    max_radius : int
        Neighbourhoods grow from 1 (3x3) up to this half-width for pixels
        with no good neighbour; any still without one get the median of their
        frame's good pixels (0 for a frame with none).
    groups : ndarray of int of shape images.shape[:-2], optional
        Frames with the same label show the same scene (the integrations of
        one exposure). A bad pixel good in another frame of its group takes
        the median of that pixel over the group's good frames, each
        normalised by its frame's flux, times its own frame's flux (flux:
        the sum over the pixels good in every frame of the group). Only
        the others are repaired from their neighbours.

    Returns
    -------
    ndarray of float, same shape
        A repaired copy (float64 for float64 input, float32 otherwise).

    Notes
    -----
    Across frames is the better repair where the image is steep: the
    median of the neighbours of a pixel at the peak of a star is well below
    it, and a fit to the repaired frame (a registration's flux scale) is
    pulled by that. Neighbour repair visits only the bad pixels, all at
    once: for every bad pixel the values of its (2r+1)^2 neighbours are
    gathered into one array and the median of the good ones taken along
    that axis.
    """
    images = np.asarray(images)
    dtype = np.float64 if images.dtype == np.float64 else np.float32
    out = images.astype(dtype, copy=True)
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return out
    ny, nx = out.shape[-2:]
    flat = out.reshape(-1, ny, nx)
    badf = bad.reshape(-1, ny, nx).copy()
    if groups is not None:
        _repair_across(flat, badf, np.asarray(groups).reshape(-1))
    good = ~badf
    todo = np.nonzero(badf)
    radius = 1
    while todo[0].size and radius <= max_radius:
        k, y, x = todo
        off = np.arange(-radius, radius + 1)
        yy = np.clip(y[:, None, None] + off[None, :, None], 0, ny - 1)
        xx = np.clip(x[:, None, None] + off[None, None, :], 0, nx - 1)
        kk = np.broadcast_to(k[:, None, None], yy.shape)
        vals = np.where(good[kk, yy, xx], flat[kk, yy, xx], np.nan).reshape(k.size, -1)
        ok = np.isfinite(vals).any(axis=1)
        if ok.any():
            med = np.nanmedian(vals[ok], axis=1)
            flat[k[ok], y[ok], x[ok]] = med
        todo = (k[~ok], y[~ok], x[~ok])
        radius *= 2
    if todo[0].size:
        k = todo[0]
        frame_med = np.array([np.median(flat[i][good[i]]) if good[i].any() else 0.0
                              for i in np.unique(k)])
        lut = dict(zip(np.unique(k).tolist(), frame_med.tolist()))
        flat[todo] = np.array([lut[i] for i in k.tolist()], dtype=dtype)
    return out


def _repair_across(flat, bad, groups):
    """Repair, in place, bad pixels of (n, ny, nx) frames from their group; clears `bad`."""
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        if idx.size < 2:
            continue
        sub_bad = bad[idx]
        rows = np.nonzero(sub_bad.any(axis=(1, 2)))[0]
        if rows.size == 0:
            continue
        common = ~sub_bad.any(axis=0)
        if not common.any():
            continue
        frames = flat[idx].astype(np.float64)
        flux = frames[:, common].sum(axis=1)
        ref = np.median(flux)
        if not (np.isfinite(ref) and ref != 0) or np.any(flux == 0):
            continue
        norm = flux / ref
        scaled = np.where(sub_bad, np.nan, frames / norm[:, None, None])
        for r in rows:
            y, x = np.nonzero(sub_bad[r])
            vals = scaled[:, y, x]
            ok = np.isfinite(vals).any(axis=0)
            if not ok.any():
                continue
            med = np.nanmedian(vals[:, ok], axis=0)
            flat[idx[r], y[ok], x[ok]] = med * norm[r]
            bad[idx[r], y[ok], x[ok]] = False


def _robust_sigma(values, axis):
    # callers silence the all-NaN warnings (a pixel bad in every integration)
    med = np.nanmedian(values, axis=axis, keepdims=True)
    return 1.4826 * np.nanmedian(np.abs(values - med), axis=axis)


def find_outliers(cube, bad=None, *, err=None, nsigma=6.0, sharpness=3.0, rel=0.03):
    """Find unflagged outliers (cosmic rays, hot pixels) in a cube of integrations.

    Parameters
    ----------
    cube : ndarray of shape (nint, ny, nx)
        Integrations of one exposure (the same scene).
    bad : ndarray of bool, same shape, optional
        Pixels already known bad; never reported again.
    err : ndarray, same shape, optional
        1-sigma noise per pixel. When missing it is estimated per frame.
    nsigma : float
        Detection threshold in units of the noise.
    rel : float
        Fractional tolerance: changes up to ``rel`` times the brightest
        pixel in the 3x3 neighbourhood are expected (pointing jitter moves a
        steep PSF core) and never flagged.
    sharpness : float
        For a single integration only: how much sharper than its
        neighbourhood an outlier must be (see Notes).

    Returns
    -------
    ndarray of bool, shape (nint, ny, nx)
        True at new outliers.

    Notes
    -----
    With three or more integrations a pixel is compared with its median over
    the integrations, scaled by each integration's fitted flux factor; the
    noise is the quadrature sum of `err`, the robust spread over
    integrations and the fractional tolerance, so that real changes of the
    scene are not flagged. With two, the brighter of a discrepant pair is flagged. With one,
    a pixel is an outlier when it stands `nsigma` above the 3x3 median of the
    repaired frame *and* is `sharpness` times sharper than the local
    structure (3x3 median minus 7x7 median of that), which spares the cores
    of point sources.
    """
    cube = np.asarray(cube, dtype=np.float64)
    nint = cube.shape[0]
    bad = np.zeros(cube.shape, bool) if bad is None else np.asarray(bad, bool)
    work = np.where(bad, np.nan, cube)
    if err is None:
        diff = work[:, 1:, :] - work[:, :-1, :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dev = np.abs(diff - np.nanmedian(diff, axis=(1, 2), keepdims=True))
            sig = np.nanmedian(dev, axis=(1, 2)) * 1.4826 / np.sqrt(2.0)
        noise = np.broadcast_to(sig[:, None, None], cube.shape)
    else:
        noise = np.where(np.isfinite(err) & (err > 0), err, np.inf)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        if nint >= 3:
            med = np.nanmedian(work, axis=0)
            # integrations may differ by a flux factor: fit it before comparing
            ok = np.isfinite(work) & np.isfinite(med)[None]
            m0 = np.where(ok, med[None], 0.0)
            num = (np.where(ok, work, 0.0) * m0).sum(axis=(1, 2))
            den = (m0 * m0).sum(axis=(1, 2))
            scale = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
            dev = work - scale[:, None, None] * med[None]
            spread = _robust_sigma(dev, axis=0)
            local = ndimage.maximum_filter(np.abs(np.nan_to_num(med)), size=3, mode="nearest")
            sigma = np.sqrt(noise ** 2 + spread[None] ** 2 + (rel * local[None]) ** 2)
            out = np.abs(dev) > nsigma * sigma
        elif nint == 2:
            d = work[1] - work[0]
            local = ndimage.maximum_filter(np.abs(np.nan_to_num(work[0])), size=3,
                                           mode="nearest")
            sigma = np.sqrt(noise[0] ** 2 + noise[1] ** 2 + (rel * local) ** 2)
            hot = np.abs(d) > nsigma * sigma
            out = np.stack([hot & (d < 0), hot & (d > 0)])
        else:
            fixed = repair_bad_pixels(cube, bad | ~np.isfinite(cube))
            pad = np.pad(fixed, ((0, 0), (1, 1), (1, 1)), mode="edge")
            ny, nx = fixed.shape[1:]
            nbrs = np.stack([pad[:, 1 + oy:1 + oy + ny, 1 + ox:1 + ox + nx]
                             for oy in (-1, 0, 1) for ox in (-1, 0, 1) if oy or ox])
            nbrs.sort(axis=0)
            med = 0.5 * (nbrs[3] + nbrs[4])
            second = nbrs[-2]
            resid = fixed - med
            out = (resid > nsigma * noise) & (resid > sharpness * np.maximum(second - med, noise))
    out &= ~bad
    return np.asarray(out, dtype=bool)
