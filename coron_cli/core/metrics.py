"""Signal-to-noise, annular noise, contrast and aperture photometry."""

import numpy as np
from scipy import ndimage, signal, stats

__all__ = [
    "snr_image",
    "annular_profile",
    "calibrate_error",
    "student_t_factor",
    "contrast_curve",
    "aperture_snr",
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


def _radius(shape, center):
    y, x = np.indices(shape, dtype=np.float64)
    return np.hypot(x - center[0], y - center[1])


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
    width = int(width)
    if width < 1:
        raise ValueError("annulus width must be a positive integer")
    img = np.asarray(image, dtype=np.float64)
    r = _radius(img.shape, center)
    ok = np.isfinite(img)
    idx = (r[ok] // width).astype(np.int64)
    v = img[ok]
    n = np.bincount(idx)
    s1 = np.bincount(idx, weights=v, minlength=n.size)
    s2 = np.bincount(idx, weights=v * v, minlength=n.size)
    keep = n >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / np.maximum(n, 1)
        var = (s2 - n * mean ** 2) / np.maximum(n - 1, 1)
    bins = np.flatnonzero(keep)
    return (bins + 0.5) * width, np.sqrt(np.maximum(var[keep], 0.0)), n[keep].astype(np.int64)


def _grouped_median(values, groups, ngroups):
    """Median of `values` within each group (groups are 0..ngroups-1)."""
    order = np.lexsort((values, groups))
    g = groups[order]
    v = values[order]
    starts = np.searchsorted(g, np.arange(ngroups), side="left")
    counts = np.bincount(groups, minlength=ngroups)
    lo = starts + np.maximum(counts - 1, 0) // 2
    hi = starts + counts // 2
    lo = np.minimum(lo, v.size - 1)
    hi = np.minimum(hi, v.size - 1)
    med = 0.5 * (v[lo] + v[hi])
    return np.where(counts > 0, med, np.nan)


def _grouped_robust_std(values, groups, ngroups):
    med = _grouped_median(values, groups, ngroups)
    mad = _grouped_median(np.abs(values - med[groups]), groups, ngroups)
    return 1.4826 * mad


def calibrate_error(residual, err, center, *, width=2, iterations=6):
    """Inflate an error map so that it matches the residual noise in annuli.

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

    Returns
    -------
    ndarray of float32, same shape
        ``sqrt(err**2 + e(r)**2)``, with ``e(r)`` the smallest excess (zero
        or more) per annulus for which the robust standard deviation
        (1.4826 MAD) of ``residual / err_new`` is 1.

    Notes
    -----
    Residual speckles are an additive noise that the propagated error does
    not see; the robust statistics keep planets from inflating it. Pixels
    where `err` is not finite or not positive are left unchanged.
    """
    res = np.asarray(residual, dtype=np.float64)
    e = np.asarray(err, dtype=np.float64)
    ny, nx = res.shape[-2:]
    r = np.broadcast_to(_radius((ny, nx), center), res.shape)
    ring = (r // int(width)).astype(np.int64)
    ok = np.isfinite(res) & np.isfinite(e) & (e > 0)
    nring = int(ring.max()) + 1
    g = ring[ok]
    rv = res[ok]
    ev2 = e[ok] ** 2
    counts = np.bincount(g, minlength=nring)
    excess = np.zeros(nring)
    for _ in range(iterations):
        z = rv / np.sqrt(ev2 + excess[g])
        s = _grouped_robust_std(z, g, nring)
        tot = _grouped_median(ev2 + excess[g], g, nring)
        upd = excess + tot * (np.nan_to_num(s, nan=1.0) ** 2 - 1.0)
        excess = np.where(counts >= 8, np.maximum(upd, 0.0), 0.0)
    out = np.where(ok, np.sqrt(e ** 2 + excess[ring]), e)
    return out.astype(np.float32)


def student_t_factor(n, *, sigma=5.0):
    """Small-sample factor turning a noise estimate into a detection threshold.

    Parameters
    ----------
    n : float or ndarray
        Number of resolution elements in the annulus, ``2 pi r / fwhm``.
    sigma : float
        Gaussian-equivalent significance wanted (5 for "5 sigma").

    Returns
    -------
    ndarray of float64
        ``tau * sqrt(1 + 1/n2)`` with ``n2 = n - 1`` noise elements (one is
        the candidate's) and ``tau`` the Student-t quantile with ``n2 - 1``
        degrees of freedom at the false-positive fraction of a Gaussian
        `sigma`; NaN where fewer than 3 elements fit.

    References
    ----------
    Mawet et al. 2014, ApJ 792, 97, eq. 9 and section 3.
    """
    n = np.asarray(n, dtype=np.float64)
    fpf = stats.norm.sf(sigma)
    n2 = np.floor(n) - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = stats.t.isf(fpf, np.where(n2 >= 2, n2 - 1.0, np.nan))
        return tau * np.sqrt(1.0 + 1.0 / n2)


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
    img = np.where(np.isfinite(image), image, 0.0)
    rad = fwhm / 2.0
    h = int(np.ceil(rad)) + 1
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    kernel = (np.hypot(xx, yy) <= rad).astype(np.float64)
    return signal.fftconvolve(img, kernel, mode="same")


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
