"""Sub-pixel registration: fit (dx, dy, scale) and Fourier-shift images.

Convention: shifting an image ``r`` by ``(dx, dy)`` gives ``r(x - dx, y - dy)``,
so the offset that puts a reference star onto a science star is the science
centre minus the reference centre.
"""

import mmap

import numpy as np
from scipy import fft as sfft

from ._geometry import parabola_vertex

__all__ = ["align_references", "apply_gain", "bound_shifts", "dither_groups", "dither_model_shifts",
           "dither_positions", "fit_offsets", "pair_residuals", "shift_dq", "shift_gain",
           "shift_images",
           "shift_stack", "shift_variance"]

_TWO_PI = 2.0 * np.pi


def _freqs(ny, nx):
    ky = sfft.fftfreq(ny)[:, None]
    kx = sfft.rfftfreq(nx)[None, :]
    return ky, kx


def _phase(ky, kx, dx, dy):
    """exp(-2 pi i (kx dx + ky dy)) for a batch of shifts, shape (..., ny, nkx)."""
    dx = np.asarray(dx, dtype=np.float64)[..., None, None]
    dy = np.asarray(dy, dtype=np.float64)[..., None, None]
    return np.exp(-1j * _TWO_PI * ky * dy) * np.exp(-1j * _TWO_PI * kx * dx)


_ROWS = 64

# outputs from this size get plain (4 KiB) pages, see _large_empty
_PLAIN_PAGES_BYTES = 256 * 2 ** 20


def _large_empty(shape, dtype):
    """``np.empty`` for the large output cubes, on plain memory pages.

    numpy asks the kernel for transparent huge pages for large arrays; where
    the kernel then compacts memory to find them at the first touch, the
    time to fill a cube of hundreds of MB varies several-fold from one call
    to the next (align_references on 10 x 200 x 320^2 took 1.6 s or 3-4 s by
    turns). An anonymous memory map, which nobody advises to use huge
    pages, faults in at a steady cost. Smaller arrays are left to numpy.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < _PLAIN_PAGES_BYTES:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


def _matmul_rows(X, V):
    """``X @ V`` for stacks of shape (n, ny, k) @ (n, k, m) with small m.

    Done in blocks of at most 64 rows so that every BLAS call is small
    enough for OpenBLAS to run it on one thread. Its threaded batched gemm is
    about 2x faster on an idle machine (8.5 vs 16 ms for (200, 320, 161) @
    (200, 161, 3)), but its threads wait for each other, and single calls
    stalled for up to 1.6 s when another process held a core. (Splitting
    the blocks among Python threads gave no speed-up.)
    """
    n, ny, _ = X.shape
    if X.dtype == np.complex64:
        V = V.astype(np.complex64)     # a single-precision X is contracted in single
    out = np.empty((n, ny, V.shape[-1]), dtype=np.result_type(X, V))
    for a in range(0, ny, _ROWS):
        np.matmul(X[:, a:a + _ROWS], V, out=out[:, a:a + _ROWS])
    return out


def _hermitian_weights(ny, nx):
    """Weights turning a sum over the rfft half-plane into the full-plane sum.

    Interior columns stand for two conjugate frequencies. The Nyquist row and
    column get weight 0: a real image shifted by a non-integer amount has no
    well-defined Nyquist term.
    """
    w = np.full((ny, nx // 2 + 1), 2.0)
    w[:, 0] = 1.0
    if nx % 2 == 0:
        w[:, -1] = 0.0
    if ny % 2 == 0:
        w[ny // 2, :] = 0.0
    return w


def shift_images(images, dx, dy, *, workers=-1):
    """Shift images by sub-pixel amounts with the Fourier shift theorem.

    Parameters
    ----------
    images : ndarray of shape (..., ny, nx)
        Images to shift; must be finite.
    dx, dy : float or ndarray broadcastable to ``images.shape[:-2]``
        Shifts in pixels along x (columns) and y (rows): the output is
        ``images(x - dx, y - dy)`` (periodic at the edges).
    workers : int
        Threads for the FFTs (scipy.fft).

    Returns
    -------
    ndarray of float64, shape broadcast of images and shifts
    """
    images = np.asarray(images, dtype=np.float64)
    ny, nx = images.shape[-2:]
    ky, kx = _freqs(ny, nx)
    spec = sfft.rfft2(images, workers=workers)
    spec = spec * _phase(ky, kx, dx, dy)
    return sfft.irfft2(spec, s=(ny, nx), workers=workers)


def shift_stack(images, dx, dy, *, workers=-1):
    """Shift one stack of images by several sets of shifts, in single precision.

    Parameters
    ----------
    images : ndarray of shape (nref, ny, nx)
        Finite images.
    dx, dy : ndarray of shape (nint, nref)
        Shift of image j in set i (see :func:`shift_images` for the convention).
    workers : int
        Threads for the FFTs (scipy.fft).

    Returns
    -------
    ndarray of float32, shape (nint, nref, ny, nx)
        ``out[i, j] = images[j](x - dx[i, j], y - dy[i, j])``.

    Notes
    -----
    The spectra are computed once, in float64, and kept as complex64; every
    set is then one complex64 phase multiply and inverse FFT. The result
    matches :func:`shift_images` to about 1e-7 of the largest value.
    """
    images = np.asarray(images)
    nref, ny, nx = images.shape
    dx = np.asarray(dx, dtype=np.float64).reshape(-1, nref)
    dy = np.asarray(dy, dtype=np.float64).reshape(-1, nref)
    ky, kx = _freqs(ny, nx)
    S = sfft.rfft2(np.asarray(images, dtype=np.float64), workers=workers).astype(np.complex64)
    out = _large_empty((dx.shape[0], nref, ny, nx), np.float32)
    buf = np.empty_like(S)
    for i in range(dx.shape[0]):
        _shift_spectra(S, dx[i], dy[i], ky, kx, (ny, nx), workers, buf, out=out[i])
    return out


def _variance_response(dx, dy, ny, nx):
    """rfft2 of the square of the 2-D Fourier-shift kernel for m shifts, as factors.

    Returns (fy, fx) of shapes (m, ny, 3) and (m, 3, nx//2+1), complex64:
    the transform is ``fy @ fx``.

    :func:`shift_images` is the periodic convolution with the kernel
    ``h = irfft2(py(ky) px(kx))``, and independent noise of variance ``v``
    comes out with variance ``v`` convolved with ``h**2``. With ``a + i c =
    ifft(py)`` (the imaginary part comes only from the y Nyquist frequency)
    and ``b = irfft(px)``, ``e = irfft(i px)``, ``h = a b + c e`` (outer
    products), so ``h**2`` is three separable terms, whose transforms are
    products of 1-D transforms.
    """
    dx = np.asarray(dx, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    px = np.exp(-1j * _TWO_PI * sfft.rfftfreq(nx) * dx[:, None])
    py = np.exp(-1j * _TWO_PI * sfft.fftfreq(ny) * dy[:, None])
    b = sfft.irfft(px, n=nx, axis=-1)
    e = sfft.irfft(1j * px, n=nx, axis=-1)
    hy = sfft.ifft(py, axis=-1)
    a, c = hy.real, hy.imag
    fy = sfft.fft(np.stack([a * a, 2.0 * a * c, c * c], axis=-1), axis=-2)   # (m, ny, 3)
    fx = sfft.rfft(np.stack([b * b, b * e, e * e], axis=-2), axis=-1)        # (m, 3, nkx)
    return fy.astype(np.complex64), fx.astype(np.complex64)


def shift_variance(variances, dx, dy, *, errors=False, workers=-1):
    """Variance maps of independent noise carried through :func:`shift_stack`.

    Parameters
    ----------
    variances : ndarray of shape (nref, ny, nx)
        Per-pixel variance of each image (finite, not negative); with
        `errors`, the noise itself (standard deviations).
    dx, dy : ndarray of shape (nint, nref)
        The shifts given to :func:`shift_stack`.
    errors : bool
        `variances` are standard deviations: the variances are their
        squares in float64, 0 where they are not finite (the same as passing
        ``np.where(np.isfinite(e), e.astype(np.float64) ** 2, 0.0)``, made a
        block of images at a time instead of as a whole float64 stack).

    Returns
    -------
    ndarray of float32, shape (nint, nref, ny, nx)
        The variance of each shifted image, not negative.

    Notes
    -----
    A sub-pixel shift mixes neighbouring pixels with the weights ``w`` of
    its (periodic sinc) kernel, so the variance of independent noise goes
    through ``w**2``, not ``w``. Shifting the variance map itself, like an
    image, rings into negative values next to a hot pixel (and spreads its
    variance with the wrong weights); a Fourier shift is nearly lossless for
    smooth noise (``sum w**2`` is 0.97-1 for any shift), so elsewhere the
    two agree closely. See :func:`_variance_response` for the exact kernel.
    """
    var = np.asarray(variances)
    nref, ny, nx = var.shape
    dx = np.asarray(dx, dtype=np.float64).reshape(-1, nref)
    dy = np.asarray(dy, dtype=np.float64).reshape(-1, nref)
    # the spectra in float64 then kept as complex64, a block of images at a time
    S = np.empty((nref, ny, nx // 2 + 1), np.complex64)
    for j in range(0, nref, _FFT_BLOCK):
        v = np.asarray(var[j:j + _FFT_BLOCK], dtype=np.float64)
        if errors:
            v = np.where(np.isfinite(v), v ** 2, 0.0)
        S[j:j + _FFT_BLOCK] = sfft.rfft2(v, workers=workers)
        del v
    out = _large_empty((dx.shape[0], nref, ny, nx), np.float32)
    # the shifted spectra a block of images at a time (a buffer of a block, not of the
    # stack); every image's transforms are its own, so the numbers are the same
    buf = np.empty((min(nref, _FFT_BLOCK),) + S.shape[1:], S.dtype)
    for i in range(dx.shape[0]):
        fy, fx = _variance_response(dx[i], dy[i], ny, nx)
        for j in range(0, nref, _FFT_BLOCK):
            b = slice(j, min(nref, j + _FFT_BLOCK))
            part = buf[:b.stop - b.start]
            np.matmul(fy[b], fx[b], out=part)
            part *= S[b]
            _irfft2_into(part, out[i, b], workers)
    # a convolution of non-negative maps with a non-negative kernel: only rounding
    # can take it below zero
    np.maximum(out, 0.0, out=out)
    return out


def _cc_weights(n):
    """Column weights of the rfft half-plane as irfft uses them (0 and Nyquist once)."""
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def _wrap(i, n):
    return np.where(i > n // 2, i - n, i)


def _periodic_peak(cc):
    """Peak of periodic correlations (n, my, mx): signed integer position plus parabola."""
    n, my, mx = cc.shape
    idx = np.argmax(cc.reshape(n, -1), axis=1)
    iy, ix = np.unravel_index(idx, (my, mx))
    b = np.arange(n)
    c0 = cc[b, iy, ix]
    sx = parabola_vertex(cc[b, iy, (ix - 1) % mx], c0, cc[b, iy, (ix + 1) % mx])
    sy = parabola_vertex(cc[b, (iy - 1) % my, ix], c0, cc[b, (iy + 1) % my, ix])
    return _wrap(ix, mx) + sx, _wrap(iy, my) + sy


def _full_peak(X, ny, nx, workers):
    """Integer cross-correlation peak and parabola, from the full inverse FFT."""
    return _periodic_peak(sfft.irfft2(X, s=(ny, nx), workers=workers).reshape(-1, ny, nx))


def _coarse_peak(X, ny, nx, ky_n, kx_n, workers):
    """Peak of the low-pass cross-correlation, from a small inverse FFT.

    Only the ``ky_n x kx_n`` lowest frequencies are kept, so the correlation
    comes out sampled every ``ny / ky_n`` (``nx / kx_n``) pixels; a parabola
    through the samples gives the peak to about a pixel.
    """
    hy, hx = ky_n // 2, kx_n // 2
    Xc = np.concatenate([X[:, :hy, :hx + 1], X[:, ny - hy:, :hx + 1]], axis=1)
    fx, fy = _periodic_peak(sfft.irfft2(Xc, s=(ky_n, kx_n), workers=workers))
    return fx * (nx / kx_n), fy * (ny / ky_n)


def _window_cc(X, ix, iy, ky, kx, cx, half):
    """Cross-correlation at integer shifts ``(ix + a, iy + b)``, |a|, |b| <= half.

    Evaluated as a direct Fourier sum restricted to the window (two batched
    matrix products, no FFT); equal to ``irfft2(X)`` at those shifts times the
    number of pixels. Returns an array of shape (n, 2 half + 1, 2 half + 1),
    indexed [pair, b, a].
    """
    off = np.arange(-half, half + 1)
    ex = np.exp(1j * _TWO_PI * kx.ravel()[None, :, None] * (ix[:, None, None] + off))
    ex *= cx[None, :, None]                                               # (n, nkx, w)
    ey = np.exp(1j * _TWO_PI * ky.ravel()[None, None, :] * (iy[:, None, None] + off[:, None]))
    return (ey @ _matmul_rows(X, ex)).real                                # (n, w, w)


def _initial_shift(X, ny, nx, workers, *, decimate=4, half=2, rounds=3):
    """Starting shifts: the integer cross-correlation peak, then a parabola.

    The peak is first located on the low-pass correlation from the central
    ``1/decimate`` of the spectrum (a small inverse FFT), then the exact
    correlation is evaluated on a (2 half + 1)^2 window of integer shifts
    around it; the window moves to its maximum until the maximum is inside
    (at most `rounds` times). Pairs whose peak is still on the window edge,
    and images too small to decimate, use the full inverse FFT. The result
    is that of the full cross-correlation whenever its global peak is the
    one nearest the low-pass peak, i.e. for any shift of a rigid image.
    """
    batch = X.shape[:-2]
    X = X.reshape((-1,) + X.shape[-2:])
    n = X.shape[0]
    ky_n = 2 * (ny // (2 * decimate))
    kx_n = 2 * (nx // (2 * decimate))
    if decimate <= 1 or ky_n < 8 or kx_n < 8:
        fx, fy = _full_peak(X, ny, nx, workers)
        return fx.reshape(batch), fy.reshape(batch)
    ky, kx = _freqs(ny, nx)
    cx = _cc_weights(nx)
    cx0, cy0 = _coarse_peak(X, ny, nx, ky_n, kx_n, workers)
    ix = np.rint(cx0).astype(np.int64)
    iy = np.rint(cy0).astype(np.int64)
    fx = np.empty(n)
    fy = np.empty(n)
    todo = np.arange(n)
    w = 2 * half + 1
    for _ in range(rounds):
        cc = _window_cc(X[todo] if todo.size < n else X, ix[todo], iy[todo], ky, kx, cx, half)
        k = np.argmax(cc.reshape(todo.size, -1), axis=1)
        b, a = np.divmod(k, w)
        inside = (a > 0) & (a < w - 1) & (b > 0) & (b < w - 1)
        j = np.nonzero(inside)[0]
        if j.size:
            a_j, b_j = a[j], b[j]
            c0 = cc[j, b_j, a_j]
            sx = parabola_vertex(cc[j, b_j, a_j - 1], c0, cc[j, b_j, a_j + 1])
            sy = parabola_vertex(cc[j, b_j - 1, a_j], c0, cc[j, b_j + 1, a_j])
            t = todo[j]
            fx[t] = _wrap((ix[t] + a_j - half) % nx, nx) + sx
            fy[t] = _wrap((iy[t] + b_j - half) % ny, ny) + sy
        out = ~inside
        t = todo[out]
        ix[t] += a[out] - half
        iy[t] += b[out] - half
        todo = t
        if todo.size == 0:
            break
    if todo.size:
        fx[todo], fy[todo] = _full_peak(X[todo], ny, nx, workers)
    return fx.reshape(batch), fy.reshape(batch)


def fit_offsets(references, target, *, weights=None, max_iter=30, tol=1e-7, workers=-1):
    """Fit the shift and flux scale that best match references to a target.

    Minimises ``sum w * (target - scale * shift(reference, dx, dy))**2`` for
    every reference independently, in float64.

    Parameters
    ----------
    references : ndarray of shape (nref, ny, nx)
        Finite reference images (repair bad pixels first).
    target : ndarray of shape (ny, nx)
        Finite target image.
    weights : ndarray of shape (ny, nx), optional
        Non-negative weights (1 = use, 0 = ignore). Without weights the fit
        runs entirely in the Fourier domain.
    max_iter : int
        Newton iterations at most.
    tol : float
        Stop when no shift changes by more than this (pixels).

    Returns
    -------
    dx, dy, scale : ndarray of shape (nref,)
        Shift to apply to each reference and its flux factor.

    Notes
    -----
    Unweighted, Parseval's theorem turns the least-squares problem into the
    maximisation over d of ``F(d) = sum_k c_k Re(conj(P_k(d)) X_k)``, with
    ``X = conj(R) T`` the cross-power spectrum, ``P_k(d)`` the shift phase and
    ``c_k`` the Hermitian weights of the half-plane; the best scale for a
    given d is ``F(d) / sum_k c_k |R_k|^2``. F is maximised by Newton's method
    with analytic gradient and Hessian, starting from the cross-correlation
    peak: each iteration costs one complex multiply per reference and
    no FFT. With weights, a Gauss-Newton fit in the image plane is used
    instead (three inverse FFTs per iteration).
    """
    refs = np.asarray(references, dtype=np.float64)
    if refs.ndim == 2:
        refs = refs[None]
    tgt = np.asarray(target, dtype=np.float64)
    nref, ny, nx = refs.shape
    R = sfft.rfft2(refs, workers=workers)
    T = sfft.rfft2(tgt, workers=workers)
    X = np.conj(R) * T
    dx, dy = _initial_shift(X, ny, nx, workers)
    ky, kx = _freqs(ny, nx)
    if weights is None:
        c = _hermitian_weights(ny, nx)
        return _fit_fourier(R, X, c, dx, dy, ky, kx, max_iter, tol)
    w = np.asarray(weights, dtype=np.float64)
    return _fit_image(R, tgt, w, dx, dy, ky, kx, max_iter, tol, workers)


def _moments(X, dx, dy, ky, kx, cy, cx):
    """Weighted sums of conj(P(d)) X over the half-plane, by separable products.

    The shift phase and the Hermitian weights factor into a y part and an x
    part, so every moment is a contraction over x (a batched matrix
    product) followed by one over y; no full-size complex array is formed.

    Returns
    -------
    re, im : ndarray of shape (n, 6)
        Moments with weights c, c kx, c ky, c kx^2, c ky^2, c kx ky.
    """
    px = np.exp(1j * _TWO_PI * kx.ravel()[None, :] * dx[:, None])     # conj of the x phase
    py = np.exp(1j * _TWO_PI * ky.ravel()[None, :] * dy[:, None])     # conj of the y phase
    kxv, kyv = kx.ravel(), ky.ravel()
    gx = np.stack([cx, cx * kxv, cx * kxv ** 2], axis=1)               # (nkx, 3)
    fy = np.stack([cy, cy * kyv, cy * kyv ** 2], axis=0)               # (3, ny)
    A = _matmul_rows(X, px[:, :, None] * gx[None])                     # (n, ny, 3)
    M = (py[:, None, :] * fy[None]) @ A                                 # (n, 3, 3)
    m = np.stack([M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 0, 2], M[:, 2, 0], M[:, 1, 1]],
                 axis=1)
    return m.real, m.imag


def _separable(c):
    """The Hermitian weights as a product cy (rows) x cx (columns)."""
    cx = c[0] / (c[0, 0] if c[0, 0] else 1.0)
    cy = c[:, 0] / cx[0]
    return cy, cx


def _power(R, c):
    """sum_k c_k |R_k|^2 for every spectrum of R: the scale's denominator."""
    cy, cx = _separable(c)
    return np.einsum("nyx,y,x->n", (R.real ** 2 + R.imag ** 2), cy, cx)


def _fit_fourier(R, X, c, dx, dy, ky, kx, max_iter, tol, norm=None):
    nref = X.shape[0]
    cy, cx = _separable(c)
    if norm is None:
        norm = _power(R, c)
    active = np.ones(nref, bool)
    f0 = np.empty(nref)
    for _ in range(max_iter):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        re, im = _moments(X[idx] if idx.size < nref else X, dx[idx], dy[idx], ky, kx, cy, cx)
        # gradient of F and Hessian
        gx = -_TWO_PI * im[:, 1]
        gy = -_TWO_PI * im[:, 2]
        hxx = -(_TWO_PI ** 2) * re[:, 3]
        hyy = -(_TWO_PI ** 2) * re[:, 4]
        hxy = -(_TWO_PI ** 2) * re[:, 5]
        det = hxx * hyy - hxy ** 2
        ok = (det > 0) & (hxx < 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            stx = np.where(ok, -(hyy * gx - hxy * gy) / det, 0.0)
            sty = np.where(ok, -(hxx * gy - hxy * gx) / det, 0.0)
        # not concave here: a small gradient step toward the maximum
        stx = np.where(ok, stx, np.clip(gx / (np.abs(hxx) + 1e-300), -0.1, 0.1))
        sty = np.where(ok, sty, np.clip(gy / (np.abs(hyy) + 1e-300), -0.1, 0.1))
        stx = np.clip(stx, -0.5, 0.5)
        sty = np.clip(sty, -0.5, 0.5)
        dx[idx] += stx
        dy[idx] += sty
        # F at the new shift, to second order (the last step is below tol)
        f0[idx] = re[:, 0] + gx * stx + gy * sty + 0.5 * (hxx * stx ** 2 + 2 * hxy * stx * sty
                                                          + hyy * sty ** 2)
        active[idx] = (np.abs(stx) > tol) | (np.abs(sty) > tol)
    idx = np.nonzero(active)[0]
    if idx.size:
        # not converged in max_iter: F exactly where the shift stopped
        f0[idx] = _moments(X[idx], dx[idx], dy[idx], ky, kx, cy, cx)[0][:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(norm > 0, f0 / norm, np.nan)
    return dx, dy, scale


def _fit_image(R, tgt, w, dx, dy, ky, kx, max_iter, tol, workers):
    ny, nx = tgt.shape
    nref = R.shape[0]
    scale = np.ones(nref)
    tw = tgt * np.sqrt(w)
    sw = np.sqrt(w)
    for _ in range(max_iter):
        P = _phase(ky, kx, dx, dy)
        PR = P * R
        m = sfft.irfft2(PR, s=(ny, nx), workers=workers) * sw
        mx = sfft.irfft2(-1j * _TWO_PI * kx * PR, s=(ny, nx), workers=workers) * sw
        my = sfft.irfft2(-1j * _TWO_PI * ky * PR, s=(ny, nx), workers=workers) * sw
        # best scale for the current shift, then a Gauss-Newton step in (dx, dy)
        mm = np.einsum("nij,nij->n", m, m)
        scale = np.where(mm > 0, np.einsum("nij,ij->n", m, tw) / np.where(mm > 0, mm, 1), 0.0)
        r = tw[None] - scale[:, None, None] * m
        jx = scale[:, None, None] * mx
        jy = scale[:, None, None] * my
        a11 = np.einsum("nij,nij->n", jx, jx)
        a22 = np.einsum("nij,nij->n", jy, jy)
        a12 = np.einsum("nij,nij->n", jx, jy)
        g1 = np.einsum("nij,nij->n", jx, r)
        g2 = np.einsum("nij,nij->n", jy, r)
        det = a11 * a22 - a12 ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            stx = np.where(det > 0, (a22 * g1 - a12 * g2) / det, 0.0)
            sty = np.where(det > 0, (a11 * g2 - a12 * g1) / det, 0.0)
        stx = np.clip(stx, -0.5, 0.5)
        sty = np.clip(sty, -0.5, 0.5)
        dx = dx + stx
        dy = dy + sty
        if max(np.max(np.abs(stx)), np.max(np.abs(sty))) < tol:
            break
    P = _phase(ky, kx, dx, dy)
    m = sfft.irfft2(P * R, s=(ny, nx), workers=workers) * sw
    mm = np.einsum("nij,nij->n", m, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(mm > 0, np.einsum("nij,ij->n", m, tw) / mm, np.nan)
    return dx, dy, scale


def align_references(references, targets, *, weights=None, shifts=None, workers=-1,
                     max_iter=30, return_residual=False, fit_only=False):
    """Fit and apply the shift of every reference onto every target.

    Parameters
    ----------
    references : ndarray of shape (nref, ny, nx)
        Finite reference images.
    targets : ndarray of shape (nint, ny, nx)
        Finite science integrations.
    weights : ndarray of shape (ny, nx), optional
        Fit weights (see :func:`fit_offsets`).
    shifts : (dx, dy, scale), each ndarray of shape (nint, nref), optional
        Shifts measured otherwise (e.g. :func:`dither_positions`): no fit,
        the references are only shifted.
    return_residual : bool
        Also return the residual of every pair (see Returns).
    fit_only : bool
        Only fit: return ``(dx, dy, scale)`` and shift nothing.

    Returns
    -------
    aligned : ndarray of float32, shape (nint, nref, ny, nx)
        References shifted onto each integration (not scaled).
    dx, dy, scale : ndarray of float64, shape (nint, nref)
        Shift applied and flux factor fitted (science = scale * reference).
    residual : ndarray of float64, shape (nint, nref)
        Only with `return_residual`: ``sum w (target - scale * aligned)**2``
        for every pair (w the `weights`, else 1).

    Notes
    -----
    The references' spectra are computed once and reused for the fits and
    the shifts of every integration. The fits run in float64; the aligned
    cube is made by complex64 inverse FFTs (it is float32 anyway), within
    about 1e-7 of the largest value of a float64 shift.
    """
    refs = np.asarray(references)
    nref, ny, nx = refs.shape
    tg = np.asarray(targets)
    nint = tg.shape[0]
    ky, kx = _freqs(ny, nx)
    weighted = shifts is None and weights is not None
    c = _hermitian_weights(ny, nx) if shifts is None else None
    # the references' spectra, a block of images at a time (no float64 copy of the
    # references): the shifts are applied in single precision (the output is float32);
    # the fits use the double-precision spectra, kept whole only for a weighted fit
    # (unweighted, only their power is needed)
    R32, R, norm = _spectra(refs, c if shifts is None and not weighted else None,
                            keep=weighted, workers=workers)
    del refs
    aligned = None if fit_only else _large_empty((nint, nref, ny, nx), np.float32)
    dx = np.empty((nint, nref))
    dy = np.empty((nint, nref))
    scale = np.empty((nint, nref))
    if shifts is None:
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        if w is not None:
            Rf = R
            X = np.empty_like(R)
        else:
            # the cross-power conj(R) T, in single precision, made as conj(R conj(T)) (the
            # same numbers, without a conjugated copy of the spectra): it only feeds
            # sums (the moments), which run in double
            X = np.empty_like(R32)
    del R
    # the shifted spectra's buffer: the cross-power's once it is used (single precision)
    buf = X if shifts is None and weights is None else np.empty_like(R32)
    resid = np.empty((nint, nref)) if return_residual else None
    wr = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    for i in range(nint):
        if shifts is not None:
            dx[i], dy[i], scale[i] = shifts[0][i], shifts[1][i], shifts[2][i]
        else:
            if w is None:
                T = sfft.rfft2(np.asarray(tg[i], dtype=np.float32), workers=workers)
                np.multiply(R32, np.conjugate(T), out=X)
                np.conjugate(X, out=X)
            else:
                T = sfft.rfft2(np.asarray(tg[i], dtype=np.float64), workers=workers)
                np.conjugate(Rf, out=X)
                X *= T
            x0, y0 = _initial_shift(X, ny, nx, workers)
            if w is None:
                dx[i], dy[i], scale[i] = _fit_fourier(None, X, c, x0, y0, ky, kx, max_iter,
                                                      1e-7, norm=norm)
            else:
                dx[i], dy[i], scale[i] = _fit_image(Rf, np.asarray(tg[i], dtype=np.float64),
                                                    w, x0, y0, ky, kx, max_iter, 1e-7,
                                                    workers)
        if fit_only:
            continue
        _shift_spectra(R32, dx[i], dy[i], ky, kx, (ny, nx), workers, buf, out=aligned[i])
        if return_residual:
            resid[i] = pair_residuals(aligned[i], tg[i], scale[i], weights=wr)
    if fit_only:
        return dx, dy, scale
    if return_residual:
        return aligned, dx, dy, scale, resid
    return aligned, dx, dy, scale


#: images per block when the spectra of a stack are computed (float64 temporaries of
#: this many images)
_FFT_BLOCK = 16


def _spectra(images, c=None, *, keep=False, workers=-1):
    """rfft2 of a stack of images (nref, ny, nx), in float64, a block of images at a time.

    Returns (the spectra as complex64, the complex128 spectra with `keep` else None, with
    the Hermitian weights `c` the power of each spectrum (:func:`_power`) else None): the
    same numbers as transforming the whole stack at once, without its float64 copy.
    """
    nref, ny, nx = images.shape
    R32 = np.empty((nref, ny, nx // 2 + 1), np.complex64)
    R = np.empty(R32.shape, np.complex128) if keep else None
    norm = None if c is None else np.empty(nref)
    for j in range(0, nref, _FFT_BLOCK):
        b = slice(j, min(nref, j + _FFT_BLOCK))
        Rb = sfft.rfft2(np.asarray(images[b], dtype=np.float64), workers=workers)
        R32[b] = Rb
        if R is not None:
            R[b] = Rb
        if norm is not None:
            norm[b] = _power(Rb, c)
    return R32, R, norm


def pair_residuals(aligned, target, scale, *, weights=None, block=32):
    """Weighted squared residual of a target against each of several scaled images.

    Parameters
    ----------
    aligned : ndarray of shape (n, ny, nx)
        Images already shifted onto the target.
    target : ndarray of shape (ny, nx)
    scale : ndarray of shape (n,)
        Flux factor of each image (target = scale * image).
    weights : ndarray of shape (ny, nx) or (ny * nx,), optional
        Pixel weights (1 = use, 0 = ignore); None weighs every pixel alike.
    block : int
        Images handled at a time (bounds the float64 temporaries).

    Returns
    -------
    ndarray of float64 of shape (n,)
        ``sum w (target - scale_j aligned_j)**2``, expanded as
        ``sum w t^2 - 2 s sum w t a + s^2 sum w a^2`` so that no residual
        image is formed.
    """
    a = np.asarray(aligned).reshape(np.shape(aligned)[0], -1)
    t = np.asarray(target, dtype=np.float64).ravel()
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    s = np.asarray(scale, dtype=np.float64)
    wt = w * t
    tt = float(wt @ t)
    out = np.empty(a.shape[0])
    for j in range(0, a.shape[0], block):
        blk = a[j:j + block].astype(np.float64)
        ta = blk @ wt
        aa = (blk * blk) @ w
        out[j:j + block] = tt - 2.0 * s[j:j + block] * ta + s[j:j + block] ** 2 * aa
    return np.maximum(out, 0.0)


def _shift_spectra(S, dx, dy, ky, kx, shape, workers, buf=None, out=None):
    """irfft2 of the spectra S times the shift phase, in the precision of S.

    The phase is separable, so it is applied as an x factor then a y factor
    (per image vectors) rather than formed as a full array. With `out`, the
    images are written there (see :func:`_irfft2_into`).
    """
    dx = np.broadcast_to(np.asarray(dx, dtype=np.float64), S.shape[:-2])
    dy = np.broadcast_to(np.asarray(dy, dtype=np.float64), S.shape[:-2])
    px = np.exp(-1j * _TWO_PI * kx.ravel() * dx[..., None]).astype(S.dtype)
    py = np.exp(-1j * _TWO_PI * ky.ravel() * dy[..., None]).astype(S.dtype)
    buf = np.multiply(S, px[..., None, :], out=buf)
    buf *= py[..., :, None]
    if out is None:
        return sfft.irfft2(buf, s=shape, workers=workers, overwrite_x=True)
    return _irfft2_into(buf, out, workers)


def _irfft2_into(buf, out, workers):
    """``irfft2(buf)`` written into `out` (buf is overwritten).

    scipy's irfft2 returns a new array: for a stack of images a fresh
    allocation of tens of MB per call, whose pages the kernel must fault
    in (and, with transparent huge pages, may compact memory for, which
    made the cost vary several-fold between calls). The transform is done
    instead as an in-place complex inverse FFT along y (scipy, threaded)
    and a real inverse FFT along x written into `out` (numpy, which takes
    an output array); the result is the same to rounding.
    """
    buf = sfft.ifft(buf, axis=-2, overwrite_x=True, workers=workers)
    np.fft.irfft(buf, n=out.shape[-1], axis=-1, out=out)
    return out


def _poly_terms(p, order):
    """Monomials of a position and their x/y derivatives: (n, nterm) each."""
    x, y = p[:, 0], p[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    if order == 1:
        c = np.stack([one, x, y], axis=1)
        cx = np.stack([zero, one, zero], axis=1)
        cy = np.stack([zero, zero, one], axis=1)
    else:
        c = np.stack([one, x, y, x * x, x * y, y * y], axis=1)
        cx = np.stack([zero, one, zero, 2 * x, y, zero], axis=1)
        cy = np.stack([zero, zero, one, zero, x, 2 * y], axis=1)
    return c, cx, cy


def _fit_model_positions(coef, frames, start, order, max_iter=30, tol=1e-7):
    """Gauss-Newton fit of frames ~ scale * model(p), all frames at once."""
    p = np.array(start, dtype=np.float64)
    n = frames.shape[0]
    scale = np.ones(n)
    for _ in range(max_iter):
        c, cx, cy = _poly_terms(p, order)
        m = c @ coef
        mx = cx @ coef
        my = cy @ coef
        mm = np.einsum("np,np->n", m, m)
        scale = np.einsum("np,np->n", m, frames) / np.where(mm > 0, mm, 1.0)
        r = frames - scale[:, None] * m
        J = np.stack([m, scale[:, None] * mx, scale[:, None] * my], axis=1)  # (n, 3, npix)
        A = np.einsum("nip,njp->nij", J, J)
        g = np.einsum("nip,np->ni", J, r)
        try:
            step = np.linalg.solve(A, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(A.sum(0), g.sum(0), rcond=None)[0][None].repeat(n, 0)
        st = np.clip(step[:, 1:], -0.5, 0.5)
        p += st
        if np.abs(st).max() < tol:
            break
    c, _, _ = _poly_terms(p, order)
    m = c @ coef
    mm = np.einsum("np,np->n", m, m)
    scale = np.einsum("np,np->n", m, frames) / np.where(mm > 0, mm, 1.0)
    return p, scale


def dither_positions(references, dithers, targets, *, weights=None, iterations=2,
                     return_residual=False):
    """Star positions from an empirical model learned on a dithered reference set.

    Behind a coronagraph the image does not move rigidly with the star: the
    focal-plane mask stays put, and the light it diffracts changes with the
    star's position. A small-grid dither of the reference star samples that
    change. The model ``I(p) = A + G_x p_x + G_y p_y (+ quadratic terms)``
    is fitted pixel by pixel to the references at their commanded dither
    positions; then every frame (reference or science) is fitted as
    ``scale * I(p)`` for its own position p and flux scale. Reference
    positions are refined and the model refitted `iterations` times.

    Parameters
    ----------
    references : ndarray of shape (nref, ny, nx)
        Finite reference images.
    dithers : ndarray of shape (nref, 2)
        Commanded (x, y) dither offset of each reference, pixels. At least 3
        distinct, non-collinear positions (6 for the quadratic model).
    targets : ndarray of shape (nint, ny, nx)
        Finite science integrations.
    weights : ndarray of shape (ny, nx), optional
        Fit weights (1 = use, 0 = ignore).
    return_residual : bool
        Also return how well the model fits every frame (see Returns).

    Returns
    -------
    ref_pos : ndarray of shape (nref, 2)
        Position of the star in each reference, in the dither frame (pixels).
    ref_scale : ndarray of shape (nref,)
    tgt_pos : ndarray of shape (nint, 2)
        Position of the star in each science integration, same frame.
    tgt_scale : ndarray of shape (nint,)
        Flux relative to the model (science / reference flux is
        ``tgt_scale / ref_scale``).
    ref_resid, tgt_resid : ndarray of shape (nref,) and (nint,)
        Only with `return_residual`: ``sum w (frame - scale * I(p))**2`` at
        the fitted position and scale of each frame.

    Raises
    ------
    ValueError
        If the dither positions cannot constrain the model.
    """
    refs = np.asarray(references, dtype=np.float64)
    nref = refs.shape[0]
    pos = np.asarray(dithers, dtype=np.float64).reshape(nref, 2)
    uniq = np.unique(np.round(pos, 4), axis=0)
    if uniq.shape[0] < 3 or np.linalg.matrix_rank(
            np.column_stack([np.ones(len(uniq)), uniq])) < 3:
        raise ValueError("the dither positions do not span two dimensions")
    order = 2 if uniq.shape[0] >= 6 else 1
    w = None if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64)).ravel()
    R = refs.reshape(nref, -1)
    T = np.asarray(targets, dtype=np.float64).reshape(np.shape(targets)[0], -1)
    if w is not None:
        R = R * w
        T = T * w
    ref_pos = pos.copy()
    ref_scale = np.ones(nref)
    for _ in range(max(1, iterations) + 1):
        # the model is fitted to flux-normalised references, so it sees geometry only
        c, _, _ = _poly_terms(ref_pos, order)
        coef = np.linalg.lstsq(c, R / ref_scale[:, None], rcond=None)[0]
        new_pos, new_scale = _fit_model_positions(coef, R, ref_pos, order)
        # keep the frame anchored to the commanded dithers (mean position), and the
        # flux scale to the references' median
        new_pos -= (new_pos - pos).mean(axis=0)
        ref_pos = new_pos
        ref_scale = ref_scale * new_scale / np.median(new_scale)
    start = np.repeat(pos.mean(axis=0)[None], T.shape[0], axis=0)
    c, _, _ = _poly_terms(ref_pos, order)
    coef = np.linalg.lstsq(c, R / ref_scale[:, None], rcond=None)[0]
    tgt_pos, tgt_scale = _fit_model_positions(coef, T, start, order)
    if not return_residual:
        return ref_pos, ref_scale, tgt_pos, tgt_scale

    def resid(frames, p, sc):
        m = _poly_terms(p, order)[0] @ coef
        return np.einsum("np,np->n", frames - sc[:, None] * m, frames - sc[:, None] * m)

    ref_fit = resid(R, ref_pos, _fit_model_positions(coef, R, ref_pos, order, max_iter=0)[1])
    return (ref_pos, ref_scale, tgt_pos, tgt_scale, ref_fit,
            resid(T, tgt_pos, tgt_scale))


def dither_groups(dithers, groups):
    """Labels of the reference groups a dither model can be learned from.

    A group qualifies when its references have known dither offsets at 3 or
    more distinct positions that do not lie on one line.
    """
    out = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        pos = dithers[idx]
        if not np.isfinite(pos).all():
            continue
        uniq = np.unique(np.round(pos, 4), axis=0)
        if len(uniq) >= 3 and np.linalg.matrix_rank(
                np.column_stack([np.ones(len(uniq)), uniq - uniq.mean(axis=0)]), tol=1e-6) >= 3:
            out.append(g)
    return out


def dither_model_shifts(references, dithers, groups, targets, rigid, *, weights=None,
                        max_offset=1.0, max_scale_ratio=1.5):
    """Shifts from per-group dither models, validated frame by frame against rigid fits.

    Parameters
    ----------
    references : ndarray of shape (nref, ny, nx)
        Finite reference images.
    dithers : ndarray of shape (nref, 2)
        Commanded dither offset (x, y) of each reference in pixels; NaN where
        unknown.
    groups : ndarray of int of shape (nref,)
        Which references share a star and a visit (and so a wavefront and a
        target acquisition): a model is learned within a group only.
    targets : ndarray of shape (nint, ny, nx)
        Finite science integrations.
    rigid : (dx, dy, scale, residual), each ndarray of shape (nint, nref)
        The rigid Fourier fit of every pair and its residual
        (:func:`align_references` with ``return_residual=True``).
    weights : ndarray of shape (ny, nx), optional
        The fit weights used for the rigid fit.
    max_offset : float
        Largest distance (pixels) allowed between the model's shift and the
        rigid fit's, and between a reference's fitted and commanded
        position.
    max_scale_ratio : float
        Largest ratio allowed between the model's and the rigid fit's flux
        factor.

    Returns
    -------
    dx, dy, scale : ndarray of shape (nint, nref)
        The model's values where it was accepted, else the rigid ones.
    used : ndarray of bool of shape (nint, nref)
        Pairs that take the model's values.
    report : list of dict
        One per group with a model: ``group``, ``refs`` (indices),
        ``frame_ok`` (nint,) whether the model fits each science
        integration at least as well as the best rigidly shifted reference
        of the group, ``model_resid`` and ``rigid_resid`` (nint,) those two
        residuals, ``ref_ok`` (nrefs in group,), ``pairs_out_of_bounds``,
        and ``error`` (a message when the model could not be fitted).

    Notes
    -----
    The model (:func:`dither_positions`) is fitted to each group on its
    own: references of other stars or visits sit at unknown positions, and
    lumping them with a dithered set corrupts the model (offsets of tens of
    pixels were seen). A science integration takes a group's model only
    when (1) the model at the integration's fitted position reproduces it
    with a residual no larger than the best rigidly shifted reference of the
    group (the model must explain the frame better than a rigid shift
    does), and, pair by pair, (2) the model's shift is within `max_offset`
    of the rigid fit's, (3) its flux factor within `max_scale_ratio` of the
    rigid one, and (4) the reference's fitted position within `max_offset`
    of its commanded dither. Everything else keeps the rigid fit.
    """
    rdx, rdy, rsc, rres = (np.asarray(a, dtype=np.float64) for a in rigid)
    dx, dy, scale = rdx.copy(), rdy.copy(), rsc.copy()
    used = np.zeros(rdx.shape, bool)
    dithers = np.asarray(dithers, dtype=np.float64).reshape(-1, 2)
    groups = np.asarray(groups).reshape(-1)
    refs = np.asarray(references)
    report = []
    for g in dither_groups(dithers, groups):
        idx = np.flatnonzero(groups == g)
        entry = {"group": g, "refs": idx, "error": None}
        report.append(entry)
        try:
            rp, rs, tp, ts, _, tres = dither_positions(refs[idx], dithers[idx], targets,
                                                       weights=weights, return_residual=True)
        except (ValueError, np.linalg.LinAlgError) as exc:
            entry["error"] = str(exc)
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            mdx = tp[:, None, 0] - rp[None, :, 0]
            mdy = tp[:, None, 1] - rp[None, :, 1]
            msc = ts[:, None] / rs[None, :]
            best_rigid = rres[:, idx].min(axis=1)
            frame_ok = np.isfinite(tres) & (tres <= best_rigid)
            ref_ok = np.hypot(*(rp - dithers[idx]).T) <= max_offset
            near = np.hypot(mdx - rdx[:, idx], mdy - rdy[:, idx]) <= max_offset
            ratio = msc / rsc[:, idx]
            flux_ok = (ratio <= max_scale_ratio) & (ratio >= 1.0 / max_scale_ratio)
        pair_ok = near & flux_ok & np.isfinite(mdx) & np.isfinite(mdy) & np.isfinite(msc)
        ok = frame_ok[:, None] & ref_ok[None, :] & pair_ok
        entry.update(frame_ok=frame_ok, ref_ok=ref_ok, model_resid=tres, rigid_resid=best_rigid,
                     pairs_out_of_bounds=int((frame_ok[:, None] & ~pair_ok).sum()))
        sub = (slice(None), idx)
        dx[sub] = np.where(ok, mdx, rdx[sub])
        dy[sub] = np.where(ok, mdy, rdy[sub])
        scale[sub] = np.where(ok, msc, rsc[sub])
        used[sub] = ok
    return dx, dy, scale, used, report


def bound_shifts(dx, dy, scale, expected, groups=None, *, max_shift=1.0, max_scale_ratio=3.0):
    """Reject shifts and flux factors that no pointing can explain.

    Parameters
    ----------
    dx, dy, scale : ndarray of shape (nint, nref)
        Measured shifts and flux factors.
    expected : ndarray of shape (nint, nref, 2) or (2,)
        The shift the pointing predicts (science star minus reference star
        from the headers; 0 when both sit on the mask centre, as JWST's
        target acquisition puts them).
    groups : ndarray of int of shape (nref,), optional
        References of one star: their flux factors should agree.
    max_shift : float or ndarray broadcastable to (nint, nref)
        A shift farther than this (pixels) from `expected` is rejected and
        replaced by `expected`: behind a coronagraph a rigid fit can mistake
        the change of the image with the star's offset for a motion (seen:
        1.8 px on a four-quadrant mask where the truth was 0.5 px).
    max_scale_ratio : float
        A flux factor more than this ratio from the median of its group (for
        the same science integration) is replaced by that median.

    Returns
    -------
    dx, dy, scale : ndarray of shape (nint, nref)
        Copies, with the rejected values replaced.
    bad_shift, bad_scale : ndarray of bool of shape (nint, nref)
        What was replaced.
    """
    dx = np.array(dx, dtype=np.float64)
    dy = np.array(dy, dtype=np.float64)
    scale = np.array(scale, dtype=np.float64)
    exp = np.broadcast_to(np.asarray(expected, dtype=np.float64), dx.shape + (2,))
    bad_shift = ~(np.hypot(dx - exp[..., 0], dy - exp[..., 1]) <= max_shift)
    dx = np.where(bad_shift, exp[..., 0], dx)
    dy = np.where(bad_shift, exp[..., 1], dy)
    bad_scale = np.zeros(dx.shape, bool)
    labels = np.zeros(dx.shape[1], int) if groups is None else np.asarray(groups)
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        if idx.size < 3:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            med = np.nanmedian(scale[:, idx], axis=1, keepdims=True)
            ratio = scale[:, idx] / med
            out = ~((ratio <= max_scale_ratio) & (ratio >= 1.0 / max_scale_ratio))
        out &= np.isfinite(med) & (med > 0)
        sub = scale[:, idx]
        sub[out] = np.broadcast_to(med, sub.shape)[out]
        scale[:, idx] = sub
        bad_scale[:, idx] = out
    return dx, dy, scale, bad_shift, bad_scale


def shift_gain(references, dithers, groups, *, weights=None, min_r2=0.9, bounds=(0.5, 5.0),
               significance=None, model="full"):
    """How a rigid shift fit misreads star offsets behind a coronagraph, from a dithered set.

    Behind a focal-plane mask the image does not move rigidly with the star:
    the part of the halo the mask dims or lets through changes, and a rigid
    fit reads that as extra motion. To first order the fitted shift is a
    linear map of the true one, ``d = G delta`` (G about 1.2 for a round
    Lyot mask, 2-3 along the axes of a four-quadrant mask, 1 far from any
    mask). References of one star and visit taken at commanded dither
    offsets c measure G: the rigid fits between them give ``d_jk = G (c_j -
    c_k)``, and G is their least-squares fit (between the mean frames of the
    distinct positions). The same visit means the same
    wavefront and pointing, so those fits see the mask's effect and little
    else.

    Parameters
    ----------
    references : ndarray of shape (nref, ny, nx)
        Finite reference images.
    dithers : ndarray of shape (nref, 2)
        Commanded dither offsets (pixels); NaN where unknown.
    groups : ndarray of int of shape (nref,)
        Star-and-visit labels; only references of one group are compared.
    weights : ndarray of shape (ny, nx), optional
        Fit weights, as for the science.
    min_r2 : float
        The linear map must explain at least this share of the variance of
        the fitted shifts; otherwise no gain is returned.
    bounds : (float, float)
        Allowed range of G's singular values.
    significance : float or None
        A term of ``G - 1`` within this many standard errors of 0 (a
        jackknife over the dither positions) is set to 0, and no gain is
        returned when every term is; None keeps the fitted G.
    model : {"full", "isotropic"}
        For a two-dimensional pattern: a general 2 x 2 G, or ``g I`` (a
        mask with rotational symmetry, a round occulter: about its centre
        the rigid fit over-reads a move in every direction alike; one
        number is measured from every pair, where four would take up the
        dither positions' own errors as anisotropy).

    Returns
    -------
    gain : ndarray of shape (2, 2) or None
        G, or None when no group has 2 or more distinct dither positions or
        the fit fails the checks. For a one-dimensional pattern (a bar
        dither) G is 1 across the pattern's axis and measured along it.
    info : dict
        ``groups`` used, ``npairs``, ``r2`` (share of the variance
        explained), ``rms`` of the fit (pixels), ``rotation_deg`` of G,
        ``gain_se`` (its standard errors), ``gain_fitted`` (G before the
        significance test), ``reason`` when None. The commanded offsets are
        taken to be along the detector's axes: a G that reflects or turns by
        more than 20 degrees says they are not, and is refused.
    """
    if model not in ("full", "isotropic"):
        raise ValueError(f"shift_gain: model must be 'full' or 'isotropic', not {model!r}")
    refs = np.asarray(references)
    dithers = np.asarray(dithers, dtype=np.float64).reshape(-1, 2)
    groups = np.asarray(groups).reshape(-1)
    dc, dd, used = [], [], []
    pos_j, pos_k, npos_before = [], [], 0
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        c = dithers[idx]
        if idx.size < 2 or not np.isfinite(c).all():
            continue
        positions, which = np.unique(np.round(c, 4), axis=0, return_inverse=True)
        which = np.asarray(which).reshape(-1)
        if len(positions) < 2:
            continue
        # one mean frame per commanded position (its integrations and repeats): the same
        # measurement, with less noise and n_positions^2 fits instead of n_frames^2
        means = np.stack([refs[idx[which == p]].astype(np.float64).mean(axis=0)
                          for p in range(len(positions))])
        pc = np.stack([c[which == p].mean(axis=0) for p in range(len(positions))])
        dx, dy, _ = align_references(means, means, weights=weights, fit_only=True)
        # dx[j, k]: shift putting position k's frame onto position j's
        j, k = np.nonzero(~np.eye(len(positions), dtype=bool))
        dc.append(pc[j] - pc[k])
        dd.append(np.column_stack([dx[j, k], dy[j, k]]))
        pos_j.append(j + npos_before)                 # the positions each pair compares
        pos_k.append(k + npos_before)
        npos_before += len(positions)
        used.append(g)
    info = {"groups": used, "npairs": int(sum(len(a) for a in dc)), "r2": float("nan"),
            "rms": float("nan"), "reason": None}
    if not dc:
        info["reason"] = "no references of one visit at 2 or more dither positions"
        return None, info
    dc, dd = np.concatenate(dc), np.concatenate(dd)
    pj, pk = np.concatenate(pos_j), np.concatenate(pos_k)
    # the directions the pattern spans
    _, sv, vt = np.linalg.svd(dc, full_matrices=False)
    span = sv > 1e-3 * max(sv[0], 1e-12)
    two_d = span.sum() == 2
    u = vt[0]                                                       # the pattern's axis

    def fit(c, d):
        if two_d and model == "isotropic":
            return float((c * d).sum() / (c * c).sum()) * np.eye(2)   # d = g c
        if two_d:
            return np.linalg.lstsq(c, d, rcond=None)[0].T           # d = G c
        a = c @ u
        g1 = float(a @ (d @ u) / (a @ a))
        return np.eye(2) + (g1 - 1.0) * np.outer(u, u)

    gain = fit(dc, dd)
    # its uncertainty: a jackknife over the dither positions (leaving out every pair of one
    # position at a time; the pairs of n positions are not n(n-1) independent measurements)
    npos = int(max(pj.max(), pk.max())) + 1
    loo = []
    for q in range(npos):
        keep = (pj != q) & (pk != q)
        c = dc[keep]
        if keep.sum() >= 2 and np.linalg.matrix_rank(c) == (2 if two_d else 1) \
                and (two_d or (c @ u) @ (c @ u) > 0):
            loo.append(fit(c, dd[keep]))
    se = np.full((2, 2), np.nan)
    if len(loo) >= 3:
        loo = np.array(loo)
        se = np.sqrt((len(loo) - 1) / len(loo) * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))
    info["gain_se"] = se.tolist()
    pred = dc @ gain.T
    resid = dd - pred
    total = ((dd - dd.mean(axis=0)) ** 2).sum()
    info["r2"] = float(1.0 - (resid ** 2).sum() / total) if total > 0 else float("nan")
    info["rms"] = float(np.sqrt((resid ** 2).sum(axis=1).mean()))
    svals = np.linalg.svd(gain, compute_uv=False)
    # the commanded offsets must be in the detector's frame (up to the mask's distortion):
    # a reflection or a large rotation means they are not, and G would turn the shifts
    u, _, vt = np.linalg.svd(gain)
    rot = u @ vt                                   # the rotation of G's polar decomposition
    info["rotation_deg"] = float(np.degrees(np.arctan2(rot[1, 0], rot[0, 0])))
    if np.linalg.det(gain) <= 0 or abs(info["rotation_deg"]) > 20.0:
        info["reason"] = (f"the commanded offsets are not in the detector's frame (rotation "
                          f"{info['rotation_deg']:.0f} deg, det {np.linalg.det(gain):.2f})")
        return None, info
    if not np.isfinite(info["r2"]) or info["r2"] < min_r2:
        info["reason"] = f"the dithers explain only {info['r2']:.2f} of the fitted shifts"
        return None, info
    if svals.min() < bounds[0] or svals.max() > bounds[1]:
        info["reason"] = f"gain {svals.min():.2f}-{svals.max():.2f} outside {bounds}"
        return None, info
    if significance:
        # correct only what the dithers measure: a term of G - 1 within `significance`
        # standard errors of 0 is left at 0 (the dither positions' own errors, a few
        # thousandths of an arcsecond, move G by several percent)
        info["gain_fitted"] = gain.tolist()
        dev = gain - np.eye(2)
        measured = ~(np.abs(dev) <= significance * se)      # a NaN error counts as measured
        if not measured.any():
            info["reason"] = (f"the gain is not told apart from 1 (diagonal "
                              f"{gain[0, 0]:.3f}+-{se[0, 0]:.3f}, {gain[1, 1]:.3f}+-"
                              f"{se[1, 1]:.3f})")
            return None, info
        gain = np.eye(2) + np.where(measured, dev, 0.0)
    return gain, info


def apply_gain(dx, dy, gain, expected=None):
    """True shifts from rigid-fit ones: ``e + G^-1 (d - e)`` (see :func:`shift_gain`).

    Parameters
    ----------
    dx, dy : ndarray of the same shape
    gain : ndarray of shape (2, 2)
    expected : ndarray of shape dx.shape + (2,), optional
        The shift the pointing predicts (default 0).

    Returns
    -------
    dx, dy : ndarray
    """
    inv = np.linalg.inv(np.asarray(gain, dtype=np.float64))
    ex = np.zeros(np.shape(dx)) if expected is None else np.asarray(expected)[..., 0]
    ey = np.zeros(np.shape(dy)) if expected is None else np.asarray(expected)[..., 1]
    ux, uy = np.asarray(dx) - ex, np.asarray(dy) - ey
    return ex + inv[0, 0] * ux + inv[0, 1] * uy, ey + inv[1, 0] * ux + inv[1, 1] * uy


def shift_dq(dq, dx, dy):
    """DQ of shifted references: OR of the pixels the shift interpolates between.

    dq is (nref, ny, nx), or its flagged pixels only, as ``(shape, (j, y, x),
    values)`` (``np.nonzero(dq)`` and the values there: a small fraction of
    the cube); dx/dy (nint, nref); returns (nint, nref, ny, nx) uint32.
    Only flagged pixels are visited, all at once. For one of the four
    neighbour offsets the map from source to destination pixel is a
    translation of each image, so no destination repeats and a plain indexed
    OR (no ufunc.at) is exact.
    """
    nint = dx.shape[0]
    if isinstance(dq, tuple):
        (nref, ny, nx), (j, y, x), flagged = dq
    else:
        dq = np.asarray(dq, dtype=np.uint32)
        nref, ny, nx = dq.shape
        j, y, x = np.nonzero(dq)
        flagged = dq[j, y, x]
    out = np.zeros((nint, nref, ny, nx), dtype=np.uint32)
    if j.size == 0:
        return out
    val = np.broadcast_to(np.asarray(flagged, dtype=np.uint32), (nint, j.size))
    fx = np.floor(dx).astype(np.int64)[:, j] + x
    fy = np.floor(dy).astype(np.int64)[:, j] + y
    base = (np.arange(nint, dtype=np.int64)[:, None] * nref + j) * ny          # (nint, n)
    flat = out.reshape(-1)
    for oy in (0, 1):
        row = (base + (fy + oy) % ny) * nx
        for ox in (0, 1):
            idx = row + (fx + ox) % nx
            flat[idx] |= val
    return out
