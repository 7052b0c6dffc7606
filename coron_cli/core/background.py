"""Sky backgrounds: combine background exposures, measure sky levels, decide what to do."""

import warnings

import numpy as np

__all__ = ["combine_backgrounds", "sky_level", "background_decision"]


def combine_backgrounds(images, errors, bad=None):
    """Combine background exposures into one sky image and its noise.

    Parameters
    ----------
    images : ndarray of shape (n, ny, nx)
        Every background frame (the integrations of all background
        exposures of one kind, already averaged per exposure or not).
    errors : ndarray of shape (n, ny, nx)
        Their 1-sigma noise.
    bad : ndarray of bool of shape (n, ny, nx), optional
        Values not to use (flagged, not finite).

    Returns
    -------
    sky : ndarray of float64 of shape (ny, nx)
        The median over the frames of the good values (the mean of two);
        NaN where no frame is good.
    err : ndarray of float64 of shape (ny, nx)
        Its noise: the error of the mean of the good values, times
        sqrt(pi / 2) for a median of three or more (the efficiency of the
        median of normal values).
    nused : ndarray of int of shape (ny, nx)
        Frames used at each pixel.

    Notes
    -----
    The median keeps a cosmic ray or a star in one background frame out
    of the sky; with two frames, the lower of a pair that differs by more
    than 5 sigma is taken instead of their mean, for the same reason.
    """
    img = np.asarray(images, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    good = np.isfinite(img) & np.isfinite(err) & (err > 0)
    if bad is not None:
        good &= ~np.asarray(bad, bool)
    n = good.sum(axis=0)
    vals = np.where(good, img, np.nan)
    var = np.where(good, err ** 2, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(vals, axis=0)
        med = np.nanmedian(vals, axis=0)
        mean_err = np.sqrt(np.nansum(var, axis=0)) / np.maximum(n, 1)
        sky = np.where(n >= 3, med, mean)
        if img.shape[0] == 2:
            pair = good.all(axis=0)
            d = np.abs(img[0] - img[1])
            hit = pair & (d > 5.0 * np.sqrt(err[0] ** 2 + err[1] ** 2))
            low = np.where(img[0] <= img[1], 0, 1)
            sky = np.where(hit, np.take_along_axis(img, low[None], 0)[0], sky)
            mean_err = np.where(hit, np.take_along_axis(err, low[None], 0)[0], mean_err)
        out_err = np.where(n >= 3, mean_err * np.sqrt(np.pi / 2.0), mean_err)
    sky = np.where(n > 0, sky, np.nan)
    out_err = np.where(n > 0, out_err, np.nan)
    return sky, out_err, n


def sky_level(image, bad=None, *, center=None, fraction=0.5):
    """Sky level of a frame: the median of the pixels farthest from the star.

    Parameters
    ----------
    image : ndarray of shape (ny, nx) or (nint, ny, nx)
        A frame (integrations are averaged first).
    bad : ndarray of bool, same shape, optional
        Values to leave out.
    center : (x, y), optional
        The star; default the frame centre.
    fraction : float
        Share of the good pixels, the farthest from the star, that are used.

    Returns
    -------
    float
        NaN when no pixel is usable.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        good3 = np.isfinite(img) if bad is None else np.isfinite(img) & ~np.asarray(bad, bool)
        n = good3.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            img = np.where(n > 0, np.where(good3, img, 0.0).sum(axis=0) / n, np.nan)
        good = n > 0
    else:
        good = np.isfinite(img) if bad is None else np.isfinite(img) & ~np.asarray(bad, bool)
    if not good.any():
        return float("nan")
    ny, nx = img.shape
    cx, cy = ((nx - 1) / 2.0, (ny - 1) / 2.0) if center is None else center
    y, x = np.indices(img.shape)
    r = np.hypot(x - cx, y - cy)[good]
    v = img[good]
    far = r >= np.quantile(r, 1.0 - float(fraction))
    return float(np.median(v[far]))


def background_decision(mode, *, keyword=None, science_sky=None, background_sky=None,
                        background_noise=None, ratio=0.5):
    """Whether to subtract a background, and why.

    Parameters
    ----------
    mode : {"auto", "subtract", "off"}
    keyword : str, optional
        The exposure's S_BKDSUB (the JWST stage-2 background step's status).
    science_sky, background_sky : float, optional
        Sky levels (:func:`sky_level`) of the exposure and of its combined
        background.
    background_noise : float, optional
        Per-pixel noise of the combined background, to tell a background
        level from zero.
    ratio : float
        With ``auto``, an exposure whose sky is below ``ratio`` times a
        significant background level has had that background removed
        already.

    Returns
    -------
    subtract : bool
    reason : str
        One line saying what was decided and from what.
    """
    if mode not in ("auto", "subtract", "off"):
        raise ValueError(f"background mode must be auto, subtract or off, not {mode!r}")
    if mode == "off":
        return False, "background subtraction turned off"
    if mode == "subtract":
        return True, "background subtracted (asked for)"
    if keyword is not None and str(keyword).strip().upper() == "COMPLETE":
        return False, "not subtracted: S_BKDSUB = COMPLETE (the JWST stage 2 subtracted it)"
    if science_sky is not None and background_sky is not None and np.isfinite(science_sky) \
            and np.isfinite(background_sky):
        noise = 0.0 if background_noise is None or not np.isfinite(background_noise) \
            else float(background_noise)
        if background_sky > 3.0 * noise and science_sky < ratio * background_sky:
            return False, (f"not subtracted: the exposure's sky reads {science_sky:.4g} against "
                           f"{background_sky:.4g} in its background exposures, so it was "
                           f"already removed")
        return True, (f"background subtracted (sky {science_sky:.4g}, background "
                      f"{background_sky:.4g})")
    return True, "background subtracted"
