"""KLIP: Karhunen-Loeve image projection PSF subtraction (Soummer et al. 2012)."""

import numpy as np

from ._geometry import _radius

__all__ = ["klip_subtract", "annulus_zones", "annulus_fit_zones", "noise_weights",
           "roll_groups"]


def annulus_zones(shape, center, *, annuli=1, subsections=1, inner=0.0, outer=None,
                  width=None):
    """Label image partitioning a frame into annuli and angular subsections.

    Parameters
    ----------
    shape : (ny, nx)
    center : (x, y)
        Star position, 0-based pixels.
    annuli : int
        Number of annuli of equal width between `inner` and `outer`.
    subsections : int
        Number of equal angular sectors in every annulus.
    inner, outer : float
        Radii bounding the annuli; `outer` defaults to the farthest corner.
        Pixels inside `inner` belong to the first annulus, beyond `outer` to
        the last, so that every pixel is processed.
    width : float, optional
        Annuli of this width (pixels) from `inner` outwards instead of
        `annuli` equal ones; the last one reaches `outer` (it is widened to
        at most 1.5 `width` rather than leaving a sliver).

    Returns
    -------
    ndarray of int of shape (ny, nx)
        Zone label from 0 to ``annuli * subsections - 1``.
    """
    ny, nx = shape
    y, x = np.indices(shape, dtype=np.float64)
    dx = x - center[0]
    dy = y - center[1]
    r = np.hypot(dx, dy)
    if outer is None:
        outer = r.max() + 1e-9
    if width is not None:
        if not width > 0:
            raise ValueError("annulus width must be positive")
        annuli = max(1, int(np.floor((outer - inner) / float(width) + 0.5)))
        edges = np.concatenate([inner + float(width) * np.arange(annuli), [outer]])
    else:
        edges = np.linspace(inner, outer, int(annuli) + 1)
    ring = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, int(annuli) - 1)
    theta = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    sector = np.minimum((theta / (2 * np.pi) * subsections).astype(int), int(subsections) - 1)
    return ring * int(subsections) + sector


def noise_weights(err, center, *, bad=None, width=2):
    """Inverse-variance weights of the pixels for the KL fit.

    Parameters
    ----------
    err : ndarray of shape (nint, ny, nx) or (ny, nx)
        1-sigma noise of every integration.
    center : (x, y)
        Star position, 0-based pixels.
    bad : ndarray of bool of the same shape, optional
        Values whose error is not to be trusted (flagged pixels).
    width : int
        Annulus width in pixels for filling pixels without a usable error.

    Returns
    -------
    ndarray of float64 of shape (ny, nx)
        ``median(v) / v`` with ``v`` the mean over integrations of ``err**2``
        (finite, positive, not `bad` values only). A pixel with no usable
        value takes the mean ``v`` of its annulus about the star (of the
        whole image if the annulus has none); with no usable value at all,
        every weight is 1. ``v`` is floored at its 1st percentile: no noise
        is below the read noise, and a few unflagged pixels with a
        near-zero error must not carry the fit on their own.
    """
    e = np.asarray(err, dtype=np.float64)
    if e.ndim == 2:
        e = e[None]
    ok = np.isfinite(e) & (e > 0)
    if bad is not None:
        ok &= ~np.broadcast_to(np.asarray(bad, bool), e.shape)
    n = ok.sum(axis=0)
    if not n.any():
        return np.ones(e.shape[-2:])
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(ok, e, 0.0)
        v = (v * v).sum(axis=0) / n
    have = n > 0
    if not have.all():
        ring = (_radius(v.shape, center) // max(int(width), 1)).astype(np.int64)
        cnt = np.bincount(ring[have], minlength=ring.max() + 1)
        tot = np.bincount(ring[have], weights=v[have], minlength=ring.max() + 1)
        fill = np.where(cnt > 0, tot / np.maximum(cnt, 1), v[have].mean())
        v = np.where(have, v, fill[ring])
    v = np.maximum(v, np.percentile(v, 1.0))
    return np.median(v) / v


def _sky_basis(zpix, nx, zfit, order):
    """Monomials of the pixel coordinates up to `order` (constant first), (nterm, npix).

    Coordinates are centred on the fitted pixels and scaled by their spread,
    which keeps the terms well conditioned (their span does not depend on it).
    """
    y, x = np.divmod(zpix, nx)
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    x0, y0 = x[zfit].mean(), y[zfit].mean()
    sc = max(np.sqrt(((x[zfit] - x0) ** 2 + (y[zfit] - y0) ** 2).mean()), 1.0)
    u, v = (x - x0) / sc, (y - y0) / sc
    return np.stack([u ** i * v ** (d - i) for d in range(order + 1) for i in range(d, -1, -1)])


def _sky_projector(zpix, nx, zfit, order, wz=None, rcond=1e-6):
    """The sky terms of a zone: (P, Q, A) or None.

    P (nterm, npix) are the monomials on the zone's pixels; over the (weighted)
    fit pixels, Q (nfit, k) is an orthonormal basis of their span and A
    (nterm, k) turns coordinates in it into coefficients, so that the sky
    fitted to values v of the fit pixels is ``(v @ Q) @ A.T @ P``. Terms the
    zone cannot tell apart (x^2 + y^2 is nearly constant on a thin annulus)
    are dropped by the pseudo-inverse (`rcond`); a zone with fewer than four
    fit pixels per term gets a lower order, down to none.
    """
    while order > 0 and zfit.size < 4 * (order + 1) * (order + 2) // 2:
        order -= 1
    if order <= 0:
        return None
    P = _sky_basis(zpix, nx, zfit, order)
    Pf = P[:, zfit] if wz is None else P[:, zfit] * wz
    U, S, Vt = np.linalg.svd(Pf.T, full_matrices=False)
    keep = S > rcond * S[0]
    return P, U[:, keep], Vt[keep].T / S[keep]


def klip_subtract(science, references, *, truncations=(50,), zones=None, fit_mask=None,
                  fit_weights=None, reference_variance=None, sky_order=0,
                  pixels_per_mode=None, fit_zones=None, max_bytes=64 * 2 ** 20,
                  reference_error=None, extra=None):
    """Subtract a KLIP model of the PSF from every science integration.

    Parameters
    ----------
    science : ndarray of shape (nint, ny, nx) or (nint, ntarget, ny, nx)
        Science integrations; must be finite (repair bad pixels first). With
        4 dimensions, every integration has `ntarget` images that share its
        references and decomposition (e.g. injected fake sources, whose
        KLIP is cheap once the basis exists).
    references : ndarray of shape (nint, nref, ny, nx) or (1, nref, ny, nx)
        For each integration its own aligned references (finite); with a
        first axis of 1, the same references for every integration (aligned
        once per exposure): one decomposition per zone serves them all, and
        the integrations are projected together (the results equal those of
        the references repeated for every integration).
    truncations : sequence of int
        Numbers of KL modes kept; all come from one decomposition per zone
        and integration. Values above the number of usable modes use all of
        them (the caller warns).
    zones : ndarray of int of shape (ny, nx), optional
        Search areas solved independently (see :func:`annulus_zones`); pixels
        with a negative label are not processed and come out NaN.
    fit_mask : ndarray of bool of shape (ny, nx), optional
        Pixels used to build the basis and fit the coefficients (True = use).
        Excluded pixels (a known companion) are still subtracted.
    fit_weights : ndarray of shape (ny, nx), optional
        Non-negative weight of every pixel in the basis and the fit (see
        Notes), typically the inverse of the noise variance; None weighs
        all pixels alike (classic KLIP). A zero weight acts like `fit_mask`.
    reference_variance : ndarray of the shape of `references`, optional
        Variance of the aligned references, propagated to the model.
    reference_error : ndarray of the shape of `references`, optional
        Instead of `reference_variance`, the references' noise (standard
        deviations): the variance is its square in single precision, 0
        where it is not finite, made a zone at a time (no array the size of
        the references).
    extra : dict, optional
        References used at some pixels only (the target's other rolls, see
        :func:`roll_groups`): ``references`` (nextra, ny, nx), the same for
        every integration; ``error`` (nextra, ny, nx) or None, their noise
        (with `reference_error` or `reference_variance`); ``labels`` (ny, nx),
        every pixel's group; ``allowed`` (ngroups, nextra) bool, the extra
        references each group uses. Every zone is decomposed once with all
        of them (the covariance of a subset is a block of the whole one) and
        each group's pixels are modelled with the references it may use;
        each zone keeps its own fit region.
    sky_order : int
        Polynomial order of a sky fitted in every zone together with the KL
        modes (see Notes): 0 removes only the zone mean (classic KLIP), 1 a
        plane, 2 a quadratic surface.
    fit_zones : dict of int to ndarray of bool of shape (ny, nx), optional
        For a zone label, the pixels whose fit sets the zone's coefficients
        (its optimization region, intersected with `fit_mask`), instead of
        the zone's own pixels: an annulus fitted on the annuli around it but
        not on itself cannot fit its own sources away (LOCI's separation of
        the subtraction and optimization regions, Lafreniere et al. 2007).
    pixels_per_mode : float, optional
        In a zone with n fit pixels, keep at most ``n / pixels_per_mode``
        modes (at least 1): with as many coefficients as a small zone has
        independent pixels, the fit would absorb the noise and any source
        (over-fitting). None: no such limit.
    max_bytes : int
        Memory budget for the zone-ordered float32 copies of the references
        (and their variance); integrations are processed in chunks that fit
        it.

    Returns
    -------
    residual : ndarray of float32, shape (ntrunc, nint, ny, nx)
        Science minus its mean minus the KLIP model, per truncation
        ((ntrunc, nint, ntarget, ny, nx) for a 4-D `science`).
    model_variance : ndarray of float32 of that shape, or None
        Variance of the PSF model from `reference_variance`.
    nmodes : ndarray of int of shape (ntrunc, nint)
        Modes actually used (smallest over the zones).

    Notes
    -----
    In each zone, with ``R`` the (nref, npix) references and ``t`` the
    target, both made zero-mean over the fit pixels, the covariance
    ``C = R R^T`` is diagonalised once, ``C = V diag(lam) V^T``. The KL modes
    are ``Z_k = V_k^T R / sqrt(lam_k)`` and the projection of the target on
    the first K of them is

        model_K = sum_{k<K} (V_k^T R t / lam_k) V_k^T R = b_K^T R,
        b_K = V_K diag(1/lam_K) V_K^T (R t),

    so the basis is never formed: one (nref x npix) product builds ``R t``
    and one (ntrunc x nref) by (nref x npix) product gives every truncation's
    model. The model variance is ``sum_j b_Kj^2 var(R_j)``. Modes whose
    eigenvalue is below ``nref * eps * lam_max`` (numerically zero) are
    dropped.

    With `fit_weights` w, ``R`` and ``t`` of the fit pixels are multiplied
    by ``sqrt(w)`` before ``C`` and ``R t`` are formed (the zone means stay
    unweighted): the KL modes are those of the weighted references and,
    with all modes kept, ``b`` minimises ``sum w (t - b^T R)^2``, a
    generalised least-squares fit. With w the inverse noise variance, the
    bright pixels next to the star, whose photon noise is largest, no
    longer set the coefficients for the whole zone on their own. The model
    itself, ``b^T R``, uses the unweighted references.

    With `sky_order` >= 1 the model is ``b^T R + g^T P``, with P the
    monomials of the pixel coordinates up to that order: a sky the
    references do not share (a background gradient, a detector pedestal)
    is fitted with the KL modes instead of being left in the residual or
    forced onto them. Both R and t are first projected, over the fit pixels
    and with the weights, onto the complement of P, and the KL basis and
    coefficients b are those of the projected data; g is then the weighted
    least-squares fit of P to ``t - b^T R`` on the fit pixels. With all
    modes kept this is the joint least-squares fit of b and g. A source
    much smaller than the zone barely projects on a low-order surface.

    References
    ----------
    Soummer, Pueyo & Larkin 2012, ApJ 755, L28.
    """
    sci = np.asarray(science)
    refs = np.asarray(references)
    if sci.ndim not in (3, 4) or refs.ndim != 4 or refs.shape[0] not in (sci.shape[0], 1) \
            or refs.shape[2:] != sci.shape[-2:]:
        raise ValueError(f"science {sci.shape} and references {refs.shape} do not match")
    if refs.shape[0] == 1 and sci.shape[0] > 1:
        return _klip_shared_references(
            sci, refs, truncations=truncations, zones=zones, fit_mask=fit_mask,
            fit_weights=fit_weights, reference_variance=reference_variance,
            reference_error=reference_error,
            sky_order=sky_order, pixels_per_mode=pixels_per_mode, fit_zones=fit_zones,
            max_bytes=max_bytes, extra=extra)
    nint, nref, ny, nx = refs.shape
    ntg = sci.shape[1] if sci.ndim == 4 else 1
    truncs = np.asarray(list(truncations), dtype=int)
    if truncs.size == 0 or np.any(truncs < 1):
        raise ValueError("truncations must be positive integers")
    ntr = truncs.size
    if zones is None:
        zones = np.zeros((ny, nx), dtype=int)
    zones = np.asarray(zones)
    fit = np.ones((ny, nx), bool) if fit_mask is None else np.asarray(fit_mask, bool)
    wts = None
    if fit_weights is not None:
        w = np.asarray(fit_weights, dtype=np.float64)
        if w.shape != (ny, nx) or not np.all(np.isfinite(w) & (w >= 0)):
            raise ValueError(f"fit_weights must be finite, non-negative, of shape {(ny, nx)}")
        wts = np.sqrt(w).ravel()
    residual = np.full((ntr, nint, ntg, ny * nx), np.nan, dtype=np.float32)
    mvar = None
    if reference_variance is not None and reference_error is not None:
        raise ValueError("give reference_variance or reference_error, not both")
    squared = reference_error is not None
    if squared:
        reference_variance = reference_error
    if reference_variance is not None:
        mvar = np.full((ntr, nint, ntg, ny * nx), np.nan, dtype=np.float32)
    nmodes = np.full((ntr, nint), np.iinfo(np.int64).max, dtype=np.int64)
    sci2 = sci.reshape(nint, ntg, ny * nx)
    refs2 = refs.reshape(nint, nref, ny * nx)
    var2 = None if reference_variance is None else \
        np.asarray(reference_variance).reshape(nint, nref, ny * nx)
    ex = _Extra.make(extra, (ny, nx), nref, var2 is not None, squared)
    single, order, plan = _zone_plan(zones, fit, fit_zones)
    if ex is not None and single:
        single, order = False, np.arange(ny * nx)
    wts_s = None if wts is None else wts[order]
    if ex is not None:
        ex.labels_s = ex.labels[order]
    npix = ny * nx
    # integrations per chunk: their float32 references (and variance) fit in max_bytes
    per_int = nref * npix * 4 * (2 if var2 is not None else 1)
    chunk = int(max(1, min(nint, max_bytes // max(per_int, 1))))
    for i0 in range(0, nint, chunk):
        sl = slice(i0, min(nint, i0 + chunk))
        c = sl.stop - sl.start
        perm = slice(None) if single else order          # one zone: nothing to reorder
        # the references and their variance stay in frame order (no copy the size of
        # the references): each zone gathers its own pixels, `_Cols` maps the zone
        # order's positions to frame pixels
        refs_s = _Cols(refs2[sl], None if single else order,
                       extra=None if ex is None else ex.refs)
        sci_s = sci2[sl][:, :, perm]
        var_s = None if var2 is None else _Cols(var2[sl], None if single else order,
                                                square=squared,
                                                extra=None if ex is None else ex.var)
        res_s = np.full((ntr, c, ntg, npix), np.nan, dtype=np.float32)
        mv_s = None if var2 is None else np.full((ntr, c, ntg, npix), np.nan, dtype=np.float32)
        for job in plan:
            if job[0] == "self":
                zsub = job[1]
                res, k, mv = _fit_zone(refs_s, sci_s, var_s, job[1:], order, nx, wts_s,
                                       sky_order, truncs, pixels_per_mode, ex)
                done = [(zsub, res, mv)]
            else:
                done, k = _fit_shared(refs_s, sci_s, var_s, job[1], job[2], order, nx, wts_s,
                                      sky_order, truncs, pixels_per_mode, ex)
            nmodes[:, sl] = np.minimum(nmodes[:, sl], k.T)
            for zsub, res, mv in done:
                res_s[..., zsub] = res
                if mv is not None:
                    mv_s[..., zsub] = mv
        residual[:, sl][..., perm] = res_s
        if mv_s is not None:
            mvar[:, sl][..., perm] = mv_s
        del refs_s, sci_s, var_s, res_s, mv_s
    nmodes[nmodes == np.iinfo(np.int64).max] = 0
    shape = (ntr, nint) + sci.shape[1:-2] + (ny, nx)
    residual = residual.reshape(shape)
    if mvar is not None:
        mvar = mvar.reshape(shape)
    return residual, mvar, nmodes


class _Cols:
    """An array (c, n, npix) in frame order, whose pixels are taken by their positions in
    the zone order: ``float64(idx)`` is ``array[:, :, order[idx]].astype(np.float64)``
    (`order` None: the frame order itself), gathered a block of rows at a time so that
    no single-precision copy of the whole selection is made first. With `square`, the
    values are the array's squares in float32, 0 where it is not finite (a variance
    from a noise array)."""

    #: rows (references) gathered at a time
    BLOCK = 16

    def __init__(self, array, order, square=False, extra=None):
        self.array, self.order, self.square = array, order, square
        self.shape, self.dtype = array.shape, array.dtype
        # rows after the array's, the same for every integration (frame order)
        self.extra = extra
        self._buf = None                                 # scratch of :meth:`block`

    def _values(self, part):
        """`part` of the array, or with `square` its square in float32 (0 where the array
        is not finite), laid out alike."""
        if not self.square:
            return part
        out = np.array(part, dtype=np.float32)
        out[~np.isfinite(out)] = 0.0
        np.square(out, out=out)
        return out

    def float64(self, idx):
        if self.extra is not None:
            return self._with_extra(idx)
        cols = idx if self.order is None else self.order[idx]
        c, n = self.array.shape[:2]
        # laid out as numpy lays out ``array[:, :, cols]`` (a slice: in order; indices:
        # the gathered axis first in memory): the products of BLAS depend on the layout
        if isinstance(cols, slice):
            if not self.square:
                return self.array[:, :, cols].astype(np.float64)
            out = np.empty((c, n, len(range(*cols.indices(self.array.shape[2])))),
                           np.float64)
        else:
            out = np.empty((np.size(cols), c, n), np.float64).transpose(1, 2, 0)
        for j in range(0, n, self.BLOCK):
            out[:, j:j + self.BLOCK] = self._values(self.array[:, j:j + self.BLOCK][:, :, cols])
        return out

    def _part(self, cols):
        """The array's values at the frame pixels `cols`, (c, n, m), as stored (a view for
        a slice)."""
        return self.array[:, :, cols] if isinstance(cols, slice) else \
            np.take(self.array, cols, axis=2)

    def block(self, idx, mean=None):
        """The values at positions `idx` (a block of pixels, as for :meth:`float64`), the
        extra rows after the array's, in float64 and C order, less `mean` (c, rows) when
        given: gathered, converted and centred in one pass over a block small enough to
        stay in cache (:func:`_pixel_blocks`). The result is a view of a buffer that the
        next call overwrites."""
        return self._fill(idx if self.order is None else self.order[idx], mean)

    def frame_block(self, cols, mean=None):
        """:meth:`block` of the frame pixels `cols` (a slice), whatever the zone order."""
        return self._fill(cols, mean)

    def _fill(self, cols, mean):
        c, n = self.array.shape[:2]
        part = self._values(self._part(cols))
        m = part.shape[2]
        ne = 0 if self.extra is None else self.extra.shape[0]
        if self._buf is None or self._buf.size < c * (n + ne) * m:
            self._buf = np.empty(c * (n + ne) * m, np.float64)
        out = self._buf[:c * (n + ne) * m].reshape(c, n + ne, m)
        out[:, :n] = part
        if ne:
            out[:, n:] = self._values(self.extra[:, cols])[None]
        if mean is not None:
            out -= mean[:, :, None]
        return out

    @property
    def rows(self):
        """Rows of a block: the integrations times the references (and extra rows)."""
        c, n = self.array.shape[:2]
        return c * (n + (0 if self.extra is None else self.extra.shape[0]))

    def _with_extra(self, idx):
        """float64(idx) of the array's rows followed by the extra rows."""
        cols = idx if self.order is None else self.order[idx]
        c, n = self.array.shape[:2]
        m = len(range(*cols.indices(self.array.shape[2]))) if isinstance(cols, slice) \
            else np.size(cols)
        ne = self.extra.shape[0]
        # rows contiguous (no result to match bit for bit: no other path has these rows)
        out = np.empty((c, n + ne, m), np.float64)
        for j in range(0, n, self.BLOCK):
            e = min(j + self.BLOCK, n)
            out[:, j:e] = self._values(self.array[:, j:e][:, :, cols])
        out[:, n:] = self._values(self.extra[:, cols])[None]
        return out


#: float64 bytes of references gathered at a time when they are reduced block by block
#: (:func:`_pixel_blocks`): a block stays in the cache while it is converted, centred and
#: multiplied, instead of a float64 copy of all the references making trips to memory
PIXEL_BLOCK_BYTES = 2 * 2 ** 20


def _length(idx):
    return idx.stop - idx.start if isinstance(idx, slice) else np.size(idx)


def _pixel_blocks(idx, rows):
    """Blocks of the positions `idx` (a slice with a step of 1, or an index array) with
    about PIXEL_BLOCK_BYTES of float64 for `rows` rows: (where in `idx`, the positions)."""
    n = _length(idx)
    step = max(256, PIXEL_BLOCK_BYTES // (8 * max(int(rows), 1)))
    for s in range(0, n, step):
        e = min(n, s + step)
        yield slice(s, e), (slice(idx.start + s, idx.start + e) if isinstance(idx, slice)
                            else idx[s:e])


class _FitSet:
    """The pixels a zone is fitted on (positions `pos` in the zone order of the
    references `refs_s`, a :class:`_Cols`) as their means and products read them.

    The products over a set of pixels do not depend on the pixels' order, so when
    the set fills at least half of its span of the frame, the references are read
    in frame order, a block of contiguous pixels at a time, and the pixels outside
    the set are weighted 0: no gather. A sparser set is gathered a block of its
    pixels at a time.
    """

    def __init__(self, refs_s, pos, wz=None):
        self.refs_s, self.pos, self.wz = refs_s, pos, wz
        self.n = _length(pos)
        frame = pos if refs_s.order is None else refs_s.order[pos]
        self.at = None                        # where the set's pixels are in its span
        if isinstance(frame, slice):
            self.span = frame
        else:
            lo, hi = int(frame.min()), int(frame.max()) + 1
            self.span = slice(lo, hi)
            if 2 * frame.size < hi - lo:
                self.span = None              # sparse: gathered
            elif not (frame.size == hi - lo and np.all(np.diff(frame) == 1)):
                self.at = frame - lo
        self.weight = None                    # per pixel of the span (0 outside the set)
        self.set_indicator = None             # 1 on the set's pixels of the span
        if self.span is not None and (self.at is not None or wz is not None):
            self.weight = self.spread(np.ones(self.n) if wz is None else np.asarray(wz))
            if self.at is not None and wz is not None:
                self.set_indicator = self.spread(np.ones(self.n))

    def spread(self, x):
        """Values (..., n) of the set's pixels laid out on its span (0 elsewhere)."""
        if self.at is None:
            return x
        out = np.zeros(x.shape[:-1] + (self.span.stop - self.span.start,), x.dtype)
        out[..., self.at] = x
        return out

    def _blocks(self, mean=None):
        """(where in the span or set, the block less `mean`, unweighted)."""
        refs_s = self.refs_s
        if self.span is None:
            for s, p in _pixel_blocks(self.pos, refs_s.rows):
                yield s, refs_s.block(p, mean)
            return
        lo = self.span.start
        for s, p in _pixel_blocks(slice(0, self.span.stop - lo), refs_s.rows):
            yield s, refs_s.frame_block(slice(lo + p.start, lo + p.stop), mean)

    def _shift(self):
        """A rough mean of every reference row over the set (c, rows), from a run of
        SHIFT_SAMPLES of its pixels (their middle ones): the data are centred on it
        while the products are accumulated, and the exact mean follows from the sums
        (one pass, not two)."""
        pos, k = self.pos, min(self.n, self.SHIFT_SAMPLES)
        i = (self.n - k) // 2
        sub = slice(pos.start + i, pos.start + i + k) if isinstance(pos, slice) \
            else pos[i:i + k]
        return self.refs_s.block(sub).mean(axis=2)

    #: pixels of the set that give the shift of :meth:`_shift`
    SHIFT_SAMPLES = 2048

    def products(self, tf, Q):
        """The references' mean over the set and :func:`_products` of the references less
        it and the targets `tf` (c, ntg, n; centred and weighted) over the set, the
        references weighted by `wz`, with sky terms `Q` (n, k) or None, accumulated a
        block of pixels at a time in one pass: no float64 copy of the references.

        The blocks are centred on a rough mean s (:meth:`_shift`), y = x - s; with d
        the mean of y over the set (the exact mean is s + d) and w the weights, the
        sums of y give the centred products exactly: ``sum w^2 (y-d)(y-d)^T = G - d
        g^T - g d^T + (sum w^2) d d^T``, with ``G = sum w^2 y y^T``, ``g = sum w^2 y``;
        likewise R t and the sky coordinates. As d is small against the spread of y
        (s is the mean of thousands of the pixels), nothing cancels.

        Returns (rmean, C, a, RQ, tQ): with `Q`, RQ and tQ are the weighted
        references' and the targets' sky coordinates (else None)."""
        shift = self._shift()
        gathered = self.span is None
        w = self.wz if gathered else self.weight
        c, ntg = tf.shape[:2]
        tf_s = tf if gathered else self.spread(tf)
        # one more target row: w (or 1) gives g = sum w^2 y in the products with the
        # weighted blocks, and the sum of y over the set when w is the set's indicator
        last = np.ones(tf_s.shape[2]) if w is None else w
        tf_x = np.concatenate([tf_s, np.broadcast_to(last, (c, 1, last.size))], axis=1)
        own_sum = w is not None and self.wz is not None  # sum y apart from g
        Q_s = None if Q is None else (Q if gathered else self.spread(Q.T).T)
        G = A = RQ = ysum = None
        ones = None
        for s, Rb in self._blocks(shift):
            if own_sum:
                if ones is None or ones.size < Rb.shape[2]:
                    ones = np.ones(Rb.shape[2])
                part = ones[:Rb.shape[2]] if gathered or self.at is None else \
                    self.set_indicator[s]
                yb = Rb @ part
                ysum = yb if ysum is None else ysum + yb
            if w is not None:
                Rb *= w[s]
            RbT = np.swapaxes(Rb, 1, 2)
            Gb, Ab = Rb @ RbT, tf_x[:, :, s] @ RbT
            if G is None:
                G, A = Gb, Ab
            else:
                G += Gb
                A += Ab
            if Q is not None:
                RQb = Rb @ Q_s[s]
                RQ = RQb if RQ is None else RQ + RQb
        A, g = A[:, :ntg], A[:, ntg]
        if not own_sum:
            ysum = g
        d = ysum / self.n
        if w is None:
            w2, tw2, wQ = float(self.n), tf.sum(axis=2), None if Q is None else Q.sum(axis=0)
        else:
            wz = np.ones(self.n) if self.wz is None else np.asarray(self.wz, np.float64)
            w2, tw2 = float(np.sum(wz * wz)), tf @ wz
            wQ = None if Q is None else wz @ Q
        dg = d[:, :, None] * g[:, None, :]
        C = G - dg - np.swapaxes(dg, 1, 2) + w2 * (d[:, :, None] * d[:, None, :])
        a = A - tw2[:, :, None] * d[:, None, :]
        tQ = None
        if Q is not None:
            RQ = RQ - d[:, :, None] * wQ[None, None, :]
            tQ = tf @ Q
            C = C - RQ @ np.swapaxes(RQ, 1, 2)
            a = a - tQ @ np.swapaxes(RQ, 1, 2)
        return shift + d, C, a, RQ, tQ


def _sky_from_products(RQ, tQ, A, B, ntr, rows=None):
    """The sky fitted on the fit pixels to what the model ``B @ R`` (of `rows`) leaves,
    (c, ntg, ntr, nterm), from the sky coordinates of the (weighted) references RQ and
    targets tQ (:meth:`_FitSet.products`): ``(w (t - B R)) Q = tQ - B (RQ)``, no pass over
    the pixels."""
    c, ntg, k = tQ.shape
    BRQ = (B @ (RQ if rows is None else RQ[:, rows])).reshape(c, ntg, ntr, k)
    return (tQ[:, :, None, :] - BRQ) @ A.T


def _block_residual(refs_s, pos, rmean, t, B, ntr, rows=None):
    """``t - B @ R`` per truncation, (c, ntg, ntr, npos), with R the references at the
    positions `pos` less `rmean` (only `rows` of them when given), a block at a time."""
    c, ntg, n = t.shape
    res = np.empty((c, ntg, ntr, n))
    for s, p in _pixel_blocks(pos, refs_s.rows):
        Rb = refs_s.block(p, rmean)
        if rows is not None:
            Rb = Rb[:, rows]
        np.subtract(t[:, :, None, s], (B @ Rb).reshape(c, ntg, ntr, -1), out=res[..., s])
    return res


def _block_variance(var_s, pos, B, ntg, ntr):
    """The model variance ``B**2 @ var`` at the positions `pos`, (ntr, c, ntg, npos),
    clipped to float32's range, a block at a time."""
    B2 = B ** 2
    c = B.shape[0]
    mv = np.empty((c, ntg, ntr, _length(pos)))
    for s, p in _pixel_blocks(pos, var_s.rows):
        mv[..., s] = (B2 @ var_s.block(p)).reshape(c, ntg, ntr, -1)
    return np.moveaxis(_clip_variance(mv), 2, 0)


class _Extra:
    """The extra references of :func:`klip_subtract` (``extra``), checked, and which rows
    each pixel group uses."""

    def __init__(self, refs, var, labels, allowed, nref):
        self.refs, self.var, self.labels = refs, var, labels
        self.allowed = allowed
        self.rows = [_as_slice(np.concatenate([np.arange(nref), nref + np.flatnonzero(a)]))
                     for a in allowed]
        self.labels_s = None

    @classmethod
    def make(cls, extra, shape, nref, with_var, squared=True):
        if extra is None:
            return None
        refs = np.asarray(extra["references"])
        ne = refs.shape[0]
        if refs.ndim != 3 or refs.shape[1:] != tuple(shape):
            raise ValueError(f"extra references must be (n, {shape[0]}, {shape[1]}), "
                             f"not {refs.shape}")
        labels = np.asarray(extra["labels"]).reshape(-1)
        allowed = np.asarray(extra["allowed"], bool).reshape(-1, ne)
        if labels.size != shape[0] * shape[1] or labels.min() < 0 \
                or labels.max() >= allowed.shape[0]:
            raise ValueError("extra labels must give every pixel a group of `allowed`")
        var = None
        if with_var:
            # like the references' own: errors (squared when gathered) or variances
            err = extra.get("error")
            var = np.zeros((ne, labels.size), np.float32) if err is None else \
                np.asarray(err, dtype=np.float32).reshape(ne, -1)
            if err is not None and not squared:
                var = np.square(np.nan_to_num(var, nan=0.0, posinf=0.0, neginf=0.0))
        return cls(refs.reshape(ne, -1), var, labels, allowed, nref)

    def groups(self, pos):
        """(group, its rows, where among `pos` (zone-order positions)) of every group
        present at `pos`."""
        lab = self.labels_s[pos]
        return [(g, self.rows[g], np.flatnonzero(lab == g)) for g in np.unique(lab)]


def _klip_shared_references(sci, refs, **kw):
    """:func:`klip_subtract` of (nint, [ntarget,] ny, nx) science with one set of references
    (1, nref, ny, nx) for all: the integrations become the targets of a single
    integration, so every zone is decomposed once."""
    nint = sci.shape[0]
    lead = sci.shape[1:-2]
    flat = sci.reshape((1, -1) + sci.shape[-2:])
    residual, mvar, nmodes = klip_subtract(flat, refs, **kw)
    ntr = residual.shape[0]
    shape = (ntr, nint) + lead + sci.shape[-2:]
    residual = residual.reshape(shape)
    if mvar is not None:
        mvar = mvar.reshape(shape)
    return residual, mvar, np.repeat(nmodes, nint, axis=1)


def roll_groups(shape, center, rotations, min_move, blocked=None):
    """Pixels grouped by which other-roll exposures may serve them as references.

    A source at radius r from the star moves by the chord ``2 r |sin(d/2)|``
    between two exposures whose rolls differ by d. In an exposure used as a
    reference (angular differential imaging), a source that has not moved
    by about a resolution element is subtracted with the star; so another
    roll may serve a pixel only where that motion reaches `min_move`.

    Parameters
    ----------
    shape : (ny, nx)
    center : (x, y)
        The star, 0-based pixels.
    rotations : sequence of float
        Roll difference (degrees) to each other-roll exposure.
    min_move : float
        Smallest motion (pixels) for an exposure to be used at a pixel.
    blocked : ndarray of bool of shape (nroll, ny, nx), optional
        Pixels where an exposure holds a known source (an extended one moves
        by less than its own size, whatever the roll): not used there.

    Returns
    -------
    labels : ndarray of int of shape (ny, nx)
        Group of every pixel, 0 .. ngroups - 1.
    allowed : ndarray of bool of shape (ngroups, nroll)
        Which exposures each group may use (groups in increasing order of
        the set of exposures, read as a binary number: group 0 has the
        fewest when any pixel has none).
    """
    rot = np.abs(np.deg2rad(np.asarray(rotations, dtype=np.float64).ravel()))
    nroll = rot.size
    if nroll > 62:
        raise ValueError("at most 62 other-roll exposures")
    r = _radius(shape, center)
    if nroll == 0:
        return np.zeros(shape, dtype=np.int64), np.zeros((1, 0), bool)
    ok = 2.0 * r[..., None] * np.sin(0.5 * rot) >= float(min_move)
    if blocked is not None:
        ok &= ~np.moveaxis(np.asarray(blocked, bool).reshape((nroll,) + tuple(shape)), 0, -1)
    code = ok.astype(np.int64) @ (np.int64(1) << np.arange(nroll))
    uniq, labels = np.unique(code.ravel(), return_inverse=True)
    allowed = ((uniq[:, None] >> np.arange(nroll)) & 1).astype(bool)
    return labels.reshape(shape), allowed


def annulus_fit_zones(zones, center, *, margin, gap=0.0):
    """Optimization regions for annuli: the annuli around each one, not itself.

    Parameters
    ----------
    zones : ndarray of int of shape (ny, nx)
        Annulus labels (:func:`annulus_zones`, no subsections).
    center : (x, y)
        The star.
    margin : float
        The region reaches this far (pixels) inside and outside the zone.
    gap : float
        It leaves out the zone widened by this much on each side (0: the
        zone itself); a source in the zone then never enters its own fit.

    Returns
    -------
    dict of int to ndarray of bool of shape (ny, nx)
        For :func:`klip_subtract`'s `fit_zones`.
    """
    r = _radius(zones.shape, center)
    out = {}
    for label in np.unique(zones[zones >= 0]):
        rz = r[zones == label]
        a, b = rz.min(), rz.max()
        out[int(label)] = ((r >= a - margin) & (r <= b + margin)
                           & ~((r >= a - gap) & (r <= b + gap)))
    return out


def _zone_plan(zones, fit, fit_zones):
    """The order that makes every zone's pixels contiguous, and per zone where its pixels,
    its fitted pixels and its output are in that order.

    Pixels are put in zone order once per chunk of integrations (one gather of
    the references), so that every zone's pixels are a contiguous slice:
    gathering each zone's pixels from the frame was most of the time with many
    narrow zones.

    Returns
    -------
    single : bool
        One zone fitted on itself: no reordering needed.
    order : ndarray of int (npix,)
        Pixel order (stable sort by zone label).
    plan : list
        ``("self", zsub, zpix, take, zfit, zout)`` per zone fitted on its own
        pixels (or too few others): its slice of the ordered frame, the
        ordered pixels it touches, how to take them (a slice when
        contiguous), the fitted ones among them, and where its own are among
        them (None when it is fitted on itself); ``("shared", opt, zsubs)``
        per set of zones fitted on the same other pixels: those pixels
        (ordered) and the zones' slices.
    """
    zflat = zones.ravel()
    single = fit_zones is None and np.unique(zflat).size == 1
    order = np.arange(zflat.size) if single else np.argsort(zflat, kind="stable")
    zsorted = zflat[order]
    fit_s = fit.ravel()[order]
    plan, shared = [], {}
    for label in np.unique(zflat[zflat >= 0]):
        a, b = np.searchsorted(zsorted, label), np.searchsorted(zsorted, label, side="right")
        region = None if fit_zones is None else fit_zones.get(int(label))
        if region is not None:
            opt = np.flatnonzero(np.asarray(region, bool).ravel()[order] & fit_s)
            if opt.size >= 2:
                # zones fitted on the same pixels share one decomposition (the whole
                # frame for every zone inside the inner radius or cut by the edge)
                key = opt.tobytes()
                if key not in shared:
                    shared[key] = ("shared", opt, [])
                    plan.append(shared[key])
                shared[key][2].append(slice(int(a), int(b)))
                continue
            zpix = np.union1d(np.arange(a, b), opt)       # the pixels this zone touches
            zfit = np.searchsorted(zpix, opt)
            zout = np.searchsorted(zpix, np.arange(a, b))
        else:
            zpix = np.arange(a, b)
            zfit = np.flatnonzero(fit_s[a:b])
            zout = None
        if zfit.size < 2:
            # nothing to fit with: leave the zone unsubtracted (mean removed)
            zfit = np.arange(zpix.size)
        contiguous = zpix.size == zpix[-1] - zpix[0] + 1
        take = slice(int(zpix[0]), int(zpix[-1]) + 1) if contiguous else zpix
        plan.append(("self", slice(int(a), int(b)), zpix, take, zfit, zout))
    return single, order, plan


def _fit_zone(refs_s, sci_s, var_s, zone, order, nx, wts_s, sky_order, truncs,
              pixels_per_mode, ex=None):
    """KLIP of one zone for a chunk of integrations (pixels in zone order).

    Returns
    -------
    res : ndarray (ntr, c, ntg, zone pixels)
        The residuals at every truncation.
    k : ndarray of int (c, ntr)
        The modes used.
    mv : ndarray like `res`, or None
        The variance the references' noise carries into the model (with `var_s`).
    """
    if ex is not None:
        return _fit_zone_extra(refs_s, sci_s, var_s, zone, order, nx, wts_s, sky_order,
                               truncs, pixels_per_mode, ex)
    zsub, zpix, take, zfit, zout = zone
    ntr, ntg = truncs.size, sci_s.shape[1]
    fit_all = zfit.size == zpix.size
    t = sci_s[:, :, take].astype(np.float64)
    tmean = (t if fit_all else t[:, :, zfit]).mean(axis=2)
    t -= tmean[:, :, None]
    tf = t if fit_all else t[:, :, zfit]
    # the references are read a block of pixels at a time (converted and centred in
    # cache): their means over the fit pixels with the products in one pass, then the
    # model in another
    wz = None
    if wts_s is not None:
        wz = wts_s[zpix[zfit]]
        tf = tf * wz
    sky = None
    if sky_order:
        sky = _sky_projector(order[zpix], nx, zfit, int(sky_order), wz)
    fset = _FitSet(refs_s, take if fit_all else zpix[zfit], wz)
    rmean, C, a, _, _ = fset.products(tf, None if sky is None else sky[1])
    B, k = _solve(C, a, truncs, zfit.size, pixels_per_mode)
    del tf
    res = _block_residual(refs_s, take, rmean, t, B, ntr)  # (c, ntg, ntr, npix)
    del t
    if sky is not None:
        P, Q, A = sky
        rf = res[..., zfit] if wz is None else res[..., zfit] * wz
        res -= ((rf @ Q) @ A.T) @ P                       # the fitted sky
    if zout is not None:
        res = res[..., zout]
    mv = None if var_s is None else _block_variance(var_s, zsub, B, ntg, ntr)
    return np.moveaxis(res, 2, 0), k, mv


def _products(Rf, tf, sky):
    """The covariance of the references C (c, nref, nref) and R t (c, ntg, nref) on the
    fit pixels (projected on the complement of the sky terms)."""
    C = Rf @ np.swapaxes(Rf, 1, 2)                        # (c, nref, nref)
    a = tf @ np.swapaxes(Rf, 1, 2)                        # R t: (c, ntg, nref)
    if sky is not None:
        # the same products for the data projected on the complement of the sky
        # terms (Q orthonormal), without forming the projected copies
        Q, _ = sky
        RQ = Rf @ Q                                       # (c, nref, nterm)
        tQ = tf @ Q                                       # (c, ntg, nterm)
        C = C - RQ @ np.swapaxes(RQ, 1, 2)
        a = a - tQ @ np.swapaxes(RQ, 1, 2)
    return C, a


def _solve(C, a, truncs, nfit, pixels_per_mode):
    """KLIP's coefficients from the products of :func:`_products` (or
    :meth:`_FitSet.products`): B (c, ntg * ntr, nref), model = B @ references, per
    target and truncation, and the modes used, k (c, ntr)."""
    nref, ntg, ntr = C.shape[1], a.shape[1], truncs.size
    lam, V = np.linalg.eigh(C)
    lam = lam[:, ::-1]
    V = V[:, :, ::-1]
    lam_max = np.maximum(lam[:, :1], np.finfo(float).tiny)
    # modes below 1e-10 of the strongest are rounding (float32 data), not signal
    good = lam > lam_max * max(nref * np.finfo(np.float64).eps * 10, 1e-10)
    usable = good.sum(axis=1)                             # (c,)
    u = a @ V                                             # V^T R t
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(good[:, None], u / np.where(good, lam, 1.0)[:, None], 0.0)
    if pixels_per_mode:
        usable = np.minimum(usable, max(1, int(nfit / float(pixels_per_mode))))
    k = np.minimum(truncs[None, :], usable[:, None])      # (c, ntr)
    keep = np.arange(nref)[None, None, :] < k[:, :, None]  # (c, ntr, nref)
    W = (keep[:, None] * w[:, :, None, :]).reshape(-1, ntg * ntr, nref)
    return W @ np.swapaxes(V, 1, 2), k                    # (c, ntg * ntr, nref)


def _shared_fit_pixels(refs_s, sci_s, opt, zsubs, order, nx, wts_s, sky_order):
    """What zones fitted on the same pixels `opt` share: the references' means there,
    the targets' means there, the sky terms, and the products of the (weighted)
    references and targets (:meth:`_FitSet.products`).

    Returns (rmean, tmean, sky, C, a, RQ, tQ)."""
    tf = sci_s[:, :, opt].astype(np.float64)
    tmean = tf.mean(axis=2)
    tf -= tmean[:, :, None]
    wz = None if wts_s is None else wts_s[opt]
    sky = None
    if sky_order:
        # the monomials over the fit pixels then every zone's, normalised on the former
        own = np.concatenate([np.arange(z.start, z.stop) for z in zsubs])
        sky = _sky_projector(order[np.concatenate([opt, own])], nx, np.arange(opt.size),
                             int(sky_order), wz)
    rmean, C, a, RQ, tQ = _FitSet(refs_s, opt, wz).products(tf if wz is None else tf * wz,
                                                            None if sky is None else sky[1])
    return rmean, tmean, sky, C, a, RQ, tQ


def _fit_shared(refs_s, sci_s, var_s, opt, zsubs, order, nx, wts_s, sky_order, truncs,
                pixels_per_mode, ex=None):
    """KLIP of zones that are all fitted on the same pixels `opt` (ordered frame): one
    decomposition, then each zone's own pixels modelled with it.

    The same as fitting each zone on the union of its pixels and `opt`
    (:func:`_fit_zone`), without the copies and products of `opt` per zone.

    Returns
    -------
    done : list of (zsub, res, mv)
        Per zone, as :func:`_fit_zone` returns them.
    k : ndarray of int (c, ntr)
    """
    if ex is not None:
        return _fit_shared_extra(refs_s, sci_s, var_s, opt, zsubs, order, nx, wts_s,
                                 sky_order, truncs, pixels_per_mode, ex)
    ntg, ntr = sci_s.shape[1], truncs.size
    rmean, tmean, sky, C, a, RQ, tQ = _shared_fit_pixels(refs_s, sci_s, opt, zsubs, order,
                                                         nx, wts_s, sky_order)
    B, k = _solve(C, a, truncs, opt.size, pixels_per_mode)
    coef = None
    if sky is not None:
        coef = _sky_from_products(RQ, tQ, sky[2], B, ntr)
        at = opt.size
    done = []
    for zsub in zsubs:
        n = zsub.stop - zsub.start
        tz = sci_s[:, :, zsub].astype(np.float64) - tmean[:, :, None]
        res = _block_residual(refs_s, zsub, rmean, tz, B, ntr)
        if coef is not None:
            res -= coef @ sky[0][:, at:at + n]             # the fitted sky
            at += n
        mv = None if var_s is None else _block_variance(var_s, zsub, B, ntg, ntr)
        done.append((zsub, np.moveaxis(res, 2, 0), mv))
    return done, k


def _as_slice(rows):
    """`rows` (increasing indices) as a slice when they are 0..n-1 (views, not copies)."""
    rows = np.asarray(rows)
    return slice(0, rows.size) if np.array_equal(rows, np.arange(rows.size)) else rows


def _group_fit(C, a, rows, truncs, nfit, pixels_per_mode):
    """Coefficients of the references `rows` from the products of all of them."""
    Cg = C[:, rows, rows] if isinstance(rows, slice) else C[:, rows][:, :, rows]
    return _solve(Cg, a[:, :, rows], truncs, nfit, pixels_per_mode)


def _clip_variance(mv):
    # near-degenerate references (noiseless data) give huge cancelling coefficients: a
    # variance beyond float32 is infinite for every purpose
    return np.minimum(mv, np.finfo(np.float32).max, out=mv)


def _fit_zone_extra(refs_s, sci_s, var_s, zone, order, nx, wts_s, sky_order, truncs,
                    pixels_per_mode, ex):
    """:func:`_fit_zone` with extra references used by some pixels only (`ex`): one
    decomposition of all of them, each pixel group modelled with its own rows."""
    zsub, zpix, take, zfit, zout = zone
    ntr, ntg, c = truncs.size, sci_s.shape[1], sci_s.shape[0]
    own = np.arange(zpix.size) if zout is None else zout   # the zone's pixels in zpix
    t = sci_s[:, :, take].astype(np.float64)
    t -= t[:, :, zfit].mean(axis=2)[:, :, None]
    R = refs_s.float64(take)
    R -= R[:, :, zfit].mean(axis=2)[:, :, None]
    Rf, tf = R[:, :, zfit], t[:, :, zfit]
    wz = None
    if wts_s is not None:
        wz = wts_s[zpix[zfit]]
    sky = None
    if sky_order:
        sky = _sky_projector(order[zpix], nx, zfit, int(sky_order), wz)
    C, a = _products(Rf if wz is None else Rf * wz, tf if wz is None else tf * wz,
                     None if sky is None else sky[1:])
    n = own.size
    res = np.empty((c, ntg, ntr, n))
    mv = None if var_s is None else np.empty((c, ntg, ntr, n))
    Vr = None if var_s is None else var_s.float64(zsub)
    k_all = None
    for _, rows, where in ex.groups(np.arange(zsub.start, zsub.stop)):
        B, k = _group_fit(C, a, rows, truncs, zfit.size, pixels_per_mode)
        k_all = k if k_all is None else np.minimum(k_all, k)
        cols = own[where]
        Rg = R[:, rows]
        res[..., where] = t[:, :, None, cols] - \
            (B @ Rg[:, :, cols]).reshape(-1, ntg, ntr, where.size)
        if sky is not None:
            P, Q, A = sky
            rf = tf[:, :, None, :] - (B @ Rg[:, :, zfit]).reshape(-1, ntg, ntr, zfit.size)
            coef = ((rf if wz is None else rf * wz) @ Q) @ A.T
            res[..., where] -= coef @ P[:, cols]           # the fitted sky
        if Vr is not None:
            mv[..., where] = ((B ** 2) @ Vr[:, rows][:, :, where]).reshape(
                -1, ntg, ntr, where.size)
    if mv is not None:
        mv = np.moveaxis(_clip_variance(mv), 2, 0)
    return np.moveaxis(res, 2, 0), k_all, mv


def _fit_shared_extra(refs_s, sci_s, var_s, opt, zsubs, order, nx, wts_s, sky_order, truncs,
                      pixels_per_mode, ex):
    """:func:`_fit_shared` with extra references used by some pixels only (`ex`)."""
    ntg, ntr = sci_s.shape[1], truncs.size
    rmean, tmean, sky, C, a, RQ, tQ = _shared_fit_pixels(refs_s, sci_s, opt, zsubs, order,
                                                         nx, wts_s, sky_order)
    fits, k_all = {}, None

    def fitted(g, rows):
        nonlocal k_all
        if g not in fits:
            B, k = _group_fit(C, a, rows, truncs, opt.size, pixels_per_mode)
            k_all = k if k_all is None else np.minimum(k_all, k)
            coef = None if sky is None else _sky_from_products(RQ, tQ, sky[2], B, ntr, rows)
            fits[g] = (B, coef)
        return fits[g]

    done, at = [], opt.size
    for zsub in zsubs:
        n = zsub.stop - zsub.start
        Rz = refs_s.float64(zsub) - rmean[:, :, None]
        tz = sci_s[:, :, zsub].astype(np.float64) - tmean[:, :, None]
        Vz = None if var_s is None else var_s.float64(zsub)
        res = np.empty(tz.shape[:2] + (ntr, n))
        mv = None if Vz is None else np.empty(res.shape)
        for g, rows, where in ex.groups(np.arange(zsub.start, zsub.stop)):
            B, coef = fitted(g, rows)
            res[..., where] = tz[:, :, None, where] - \
                (B @ Rz[:, rows][:, :, where]).reshape(-1, ntg, ntr, where.size)
            if coef is not None:
                res[..., where] -= coef @ sky[0][:, at:at + n][:, where]
            if Vz is not None:
                mv[..., where] = ((B ** 2) @ Vz[:, rows][:, :, where]).reshape(
                    -1, ntg, ntr, where.size)
        at += n
        if mv is not None:
            mv = np.moveaxis(_clip_variance(mv), 2, 0)
        done.append((zsub, np.moveaxis(res, 2, 0), mv))
    return done, k_all
