"""Fake point sources: injection, injection grids, and throughput photometry."""

import numpy as np
from scipy import ndimage

# scipy.signal (~0.4 s to import) is imported by the functions that use it
from ._geometry import _disk, parabola_vertex

__all__ = ["psf_center", "psf_flux", "psf_envelope", "inject_sources", "injection_grid",
           "source_ratios"]


def psf_center(psf):
    """Sub-pixel position of the peak of a PSF image.

    Parameters
    ----------
    psf : ndarray of shape (py, px)
        Unocculted PSF; NaN pixels are ignored.

    Returns
    -------
    (x, y) : tuple of float
        The brightest pixel moved to the vertex of a parabola through the
        logarithms of it and its two neighbours, along each axis (at most half
        a pixel).
    """
    img = np.asarray(psf, dtype=np.float64)
    filled = np.where(np.isfinite(img), img, -np.inf)
    y, x = np.unravel_index(np.argmax(filled), img.shape)

    def vertex(lo, c, hi):
        if lo > 0 and hi > 0 and c > 0:  # parabola of the log: exact for a Gaussian core
            lo, c, hi = np.log(lo), np.log(c), np.log(hi)
        return float(parabola_vertex(lo, c, hi))

    ny, nx = img.shape
    dx = vertex(filled[y, x - 1], filled[y, x], filled[y, x + 1]) if 0 < x < nx - 1 else 0.0
    dy = vertex(filled[y - 1, x], filled[y, x], filled[y + 1, x]) if 0 < y < ny - 1 else 0.0
    return float(x + dx), float(y + dy)


def psf_flux(psf, *, method="peak", fwhm=2.0):
    """The flux of a point source from its unocculted PSF image.

    Parameters
    ----------
    psf : ndarray of shape (py, px)
        Unocculted PSF (NaN pixels are ignored).
    method : {"peak", "aperture"}
        ``peak``: the brightest pixel. ``aperture``: the sum in a disk of
        diameter `fwhm` centred on the PSF (:func:`psf_center`), the aperture
        sums interpolated linearly to that position, as
        :func:`~coron_cli.core.aperture_snr` measures a planet.
    fwhm : float
        Aperture diameter in pixels.

    Returns
    -------
    float
    """
    img = np.asarray(psf, dtype=np.float64)
    if method == "peak":
        return float(np.nanmax(img))
    if method != "aperture":
        raise ValueError(f"unknown star-flux method {method!r}")
    from scipy import signal

    sums = signal.fftconvolve(np.where(np.isfinite(img), img, 0.0), _disk(fwhm / 2.0),
                              mode="same")
    x, y = psf_center(img)
    return float(ndimage.map_coordinates(sums, [[y], [x]], order=1, mode="nearest")[0])


def psf_envelope(psf, *, fwhm=None, percentile=90.0):
    """Upper envelope of a PSF's rings (or of its aperture sums) against distance.

    Parameters
    ----------
    psf : ndarray of shape (py, px)
        Unocculted PSF.
    fwhm : float, optional
        When given, the envelope of the sums in disks of diameter `fwhm`
        (for aperture-sum maps) instead of the pixel values.
    percentile : float
        Level, within every 1-pixel ring about the centre, taken as the
        ring's value: high enough for the lobes of the diffraction rings,
        low enough to leave out the narrow spikes (100 takes everything).

    Returns
    -------
    ndarray of float64 of shape (nr,)
        ``env[k]``: the largest ring value at distance >= k - 0.5 pixels from
        the centre, relative to the value at the centre (so 1 at 0, and
        non-increasing): an azimuth-free bound of what a source puts at that
        distance, valid for any rotation of the PSF.
    """
    img = np.where(np.isfinite(psf), np.asarray(psf, dtype=np.float64), 0.0)
    if fwhm is not None:
        from scipy import signal

        img = signal.fftconvolve(img, _disk(float(fwhm) / 2.0), mode="same")
    cx, cy = psf_center(img)
    yy, xx = np.indices(img.shape)
    ring = np.floor(np.hypot(xx - cx, yy - cy) + 0.5).astype(np.int64).ravel()
    order = np.lexsort((img.ravel(), ring))
    r_sorted, v_sorted = ring[order], img.ravel()[order]
    starts = np.searchsorted(r_sorted, np.arange(ring.max() + 1))
    counts = np.bincount(ring, minlength=ring.max() + 1)
    pick = starts + np.floor((counts - 1) * percentile / 100.0 + 0.5).astype(np.int64)
    top = v_sorted[np.minimum(pick, v_sorted.size - 1)]
    top[0] = img.max()
    env = np.maximum.accumulate(top[::-1])[::-1]
    return np.clip(env / env[0], 0.0, None)


def inject_sources(shape, psf, positions, amplitudes=None, *, center=None):
    """Images of point sources: a PSF moved to given positions and scaled.

    Parameters
    ----------
    shape : (ny, nx)
        Output frame.
    psf : ndarray of shape (py, px)
        The PSF (any size); non-finite pixels count as 0.
    positions : ndarray of shape (nimg, nsrc, 2) or (nsrc, 2)
        Source positions (x, y), 0-based pixels; each of the nimg images
        holds its nsrc sources.
    amplitudes : ndarray of shape (nimg, nsrc) or (nsrc,), optional
        Scale of every source (default 1: the PSF as given).
    center : (x, y), optional
        Position of the source in `psf` (default :func:`psf_center`).

    Returns
    -------
    ndarray of float64 of shape (nimg, ny, nx) (or (ny, nx) for 2-D `positions`)

    Notes
    -----
    One Fourier transform per image: the PSF, zero-padded to
    ``(ny + py, nx + px)`` so that nothing wraps into the frame, is
    multiplied by ``sum_s a_s exp(-2 pi i (u dx_s + v dy_s))``, which for all
    sources at once is the matrix product ``E_y diag(a) E_x`` of the
    per-axis phase ramps; this is an exact sub-pixel (band-limited) shift
    of the PSF to every position.
    """
    ny, nx = (int(v) for v in shape)
    p = np.where(np.isfinite(psf), np.asarray(psf, dtype=np.float64), 0.0)
    py, px = p.shape
    pos = np.asarray(positions, dtype=np.float64)
    single = pos.ndim == 2
    pos = pos[None] if single else pos
    amp = np.ones(pos.shape[:2]) if amplitudes is None else \
        np.broadcast_to(np.asarray(amplitudes, dtype=np.float64), pos.shape[:2])
    cx, cy = psf_center(p) if center is None else center
    P, Q = ny + py, nx + px
    F = np.fft.rfft2(p, s=(P, Q))
    u = np.fft.rfftfreq(Q)
    v = np.fft.fftfreq(P)
    dx = pos[..., 0] - cx                                          # (nimg, nsrc)
    dy = pos[..., 1] - cy
    ex = np.exp(-2j * np.pi * dx[..., None] * u)                  # (nimg, nsrc, nu)
    ey = np.exp(-2j * np.pi * dy[..., None] * v)                  # (nimg, nsrc, nv)
    g = np.einsum("isv,is,isu->ivu", ey, amp, ex)
    out = np.fft.irfft2(F[None] * g, s=(P, Q))[:, :ny, :nx]
    return out[0] if single else out


def injection_grid(separations, n_pa, *, base=0.0, twist=137.50776):
    """Position angles of a grid of fake sources, grouped into images.

    Parameters
    ----------
    separations : ndarray of shape (nsep,)
        Separations of the sources (any unit).
    n_pa : int
        Position angles per separation; also the number of images.
    base : float
        Position angle (degrees) of the first source of the first image.
    twist : float
        Angle (degrees) between consecutive separations in one image.

    Returns
    -------
    ndarray of float64 of shape (n_pa, nsep)
        Position angle (degrees, in [0, 360)) of the source at separation j
        in image k: ``base + 360 k / n_pa + twist j``. Every separation is
        sampled at `n_pa` angles evenly spaced; in one image consecutive
        separations are `twist` apart (the golden angle by default), so the
        sources of one image are far from each other and can be injected
        together.
    """
    j = np.arange(len(np.atleast_1d(separations)))
    k = np.arange(int(n_pa))
    return np.mod(base + 360.0 * k[:, None] / int(n_pa) + twist * j[None, :], 360.0)


def source_ratios(images, models, positions, *, fwhm):
    """Recovered over injected flux of fake sources, by PSF fit and by aperture.

    Parameters
    ----------
    images : ndarray of shape (nimg, ny, nx)
        The fakes after processing (e.g. the KLIP residual of the fakes
        alone); NaN pixels count as 0.
    models : ndarray of shape (nimg, ny, nx)
        The fakes as injected, on the same grid.
    positions : ndarray of shape (nimg, nsrc, 2)
        Source positions (x, y) in both.
    fwhm : float
        Resolution element, pixels.

    Returns
    -------
    fit : ndarray of shape (nimg, nsrc)
        ``sum(image * model) / sum(model**2)`` over the pixels within `fwhm`
        of the source's nearest pixel: the amplitude of the injected PSF that
        best matches what was recovered (least squares).
    aperture : ndarray of shape (nimg, nsrc)
        Ratio of the sums in a disk of diameter `fwhm` centred on the
        source (aperture sums interpolated linearly to the position).
    """
    from scipy import signal

    img = np.nan_to_num(np.asarray(images, dtype=np.float64))
    mod = np.nan_to_num(np.asarray(models, dtype=np.float64))
    pos = np.asarray(positions, dtype=np.float64)
    big = _disk(float(fwhm))[None]
    ap = _disk(float(fwhm) / 2.0)[None]
    conv = signal.fftconvolve(np.concatenate([img * mod, mod * mod]), big, mode="same",
                              axes=(1, 2))
    apc = signal.fftconvolve(np.concatenate([img, mod]), ap, mode="same", axes=(1, 2))
    n = len(img)
    ix = np.rint(pos[..., 0]).astype(int)
    iy = np.rint(pos[..., 1]).astype(int)
    k = np.broadcast_to(np.arange(n)[:, None], ix.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        fit = conv[k, iy, ix] / conv[n + k, iy, ix]
    coords = [k.ravel().astype(float), pos[..., 1].ravel(), pos[..., 0].ravel()]
    a_img = ndimage.map_coordinates(apc[:n], coords, order=1, mode="nearest")
    a_mod = ndimage.map_coordinates(apc[n:], coords, order=1, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        aperture = (a_img / a_mod).reshape(ix.shape)
    return fit, aperture
