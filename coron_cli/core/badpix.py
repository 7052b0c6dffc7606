"""Bad pixels: masks from DQ, outlier (cosmic-ray) detection, repair."""

import functools
import warnings
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .optics import _airy_intensity
from .robust import nanmedian, robust_sigma

__all__ = ["DO_NOT_USE", "OUTLIER", "SHARPEST_FWHM_PIX", "SharpnessBound", "bad_pixel_mask",
           "find_outliers", "repair_bad_pixels", "restore_source_pixels", "sharpness_bound"]

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
        dq = np.asarray(dq)
        if dq.dtype.kind == "u" and int(bad_bits) <= np.iinfo(dq.dtype).max:
            bad |= (dq & dq.dtype.type(bad_bits)) != 0          # no int64 copy
        else:
            bad |= (dq.astype(np.int64, copy=False) & int(bad_bits)) != 0
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
            med = nanmedian(vals[ok], 1)
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
            med = nanmedian(vals[:, ok], 0)
            flat[idx[r], y[ok], x[ok]] = med * norm[r]
            bad[idx[r], y[ok], x[ok]] = False


# ---------------------------------------------------------------------------
# How sharp can a point source be?
# ---------------------------------------------------------------------------

#: Nominal PSF FWHM (pixels) assumed when none is given: the sharpest JWST
#: coronagraphic sampling, NIRCam long-wave F250M at 0.063"/px (1.03 lambda/D = 1.30 px).
SHARPEST_FWHM_PIX = 1.3

# The bound is computed for an Airy pattern this much sharper than the nominal
# FWHM: the blue edge of a wide filter (W filters span +-12.5 % of their
# nominal wavelength, and the monochromatic pattern at the blue edge is the
# sharpest component of the band) times 0.97 for the JWST pupil (6.6 m
# point to point, central obscuration), which narrows the core slightly.
_FWHM_MARGIN = 0.85
# The sup of the ratio over a 1/21-pixel grid of positions converges to 1 %
# (grids of 1/9 to 1/41 pixel agree to 1 %): this covers the rest.
_RATIO_MARGIN = 1.01
# Brackets (lo, hi) of Chebyshev distance (pixels) between a pixel and the
# brightest pixel of a source, over which the allowance for its rings is set.
_BRACKETS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (7, 8), (9, 11), (12, 15),
             (16, 20), (21, 25), (26, 30))
# A source beyond the frame's edge: its rings in the frame can beat the ratio by
# up to 2.4 times the brightest edge pixel (Airy patterns 1 to 3 times the model's
# FWHM, 0.3 to 28 pixels beyond the edge, models of 1.1 to 2.8 pixels); 3 is used.
_EDGE_ALLOWANCE = 3.0
# More unknown (bad or off-frame) pixels than this in the ring: undecided.
_MAX_UNKNOWN_RING = 5
# Expected maximum of 8 standard normal deviates: the faintest 7 of 8 noisy
# neighbours average this / 7 sigma low.
_E_MAX8 = 1.4236
# Broader PSFs for which the ring allowance is computed (FWHM factors on the
# model): the ratio falls with the FWHM but a broader pattern's rings fall
# elsewhere on the pixels.
_FAMILY = tuple(1.06 ** np.arange(24))
# The envelope is a sup over a grid (1/7 pixel, 6 % steps in FWHM): doubled.
_ENVELOPE_MARGIN = 2.0

_NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
_RING = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
              if max(abs(dy), abs(dx)) == 2)


class SharpnessBound(NamedTuple):
    """How much sharper than its surroundings a point source's pixel can be.

    Attributes
    ----------
    fwhm : float
        FWHM (pixels) of the Airy pattern the bound was computed for (the
        nominal FWHM times the safety margin).
    ratio : tuple of float
        ``(R0, R1)``: the largest ``e0 / S`` over source positions for the
        pixel holding the source's centre, with ``S`` the mean excess of all
        8 neighbours (R0) or of the faintest 7 (R1), see
        :func:`find_outliers`.
    brackets : tuple of (int, int)
        Ranges of Chebyshev distance (pixels) between a pixel and a source's
        brightest pixel.
    envelope : tuple of tuple of float
        For R0 and R1, per bracket: the largest ``e0 - R S`` of a pixel at
        that distance from the brightest pixel of an Airy pattern as sharp as
        the model or broader, as a fraction of that brightest pixel's excess
        over the pixel's background (the rings of a diffraction pattern can
        be locally sharper than its core).
    """

    fwhm: float
    ratio: tuple
    brackets: tuple
    envelope: tuple


def sharpness_bound(psf_fwhm=None):
    """The "sharper than any point source" bound for a PSF of a given FWHM.

    Parameters
    ----------
    psf_fwhm : float, optional
        Nominal FWHM in pixels of the sharpest PSF the data can contain,
        e.g. :func:`~coron_cli.core.diffraction_fwhm_pix` at the filter's
        wavelength. Default :data:`SHARPEST_FWHM_PIX`.

    Returns
    -------
    SharpnessBound

    Notes
    -----
    The model is an Airy pattern of FWHM ``0.85 * psf_fwhm`` integrated over
    square pixels: the sharpest image a filled circular aperture makes, at
    the blue edge of a wide band (nominal wavelength - 12.5 %) and a little
    sharper again (3 %) for JWST's obscured, hexagonal pupil; a real PSF is
    broader (the rest of the band, jitter, charge diffusion, IPC, a Lyot
    stop). The ratios are the largest over source positions on a
    1/21-pixel grid within the central pixel, raised by 1 % (grids of 1/9
    to 1/41 pixel agree to 1 %); they fall as the pattern broadens. The
    envelope is the largest over positions on a 1/7-pixel grid out to 30
    pixels and over patterns 1 to 3.8 times broader than the model (6 %
    steps), doubled. The statistics are computed on the model exactly as on
    data. Model FWHMs from 0.8 to 6 pixels come from a table precomputed on a
    0.05-pixel grid (see :func:`_tabulated_bound`); others are computed, ~1.5 s
    each, and cached per FWHM (to 0.01 pixel).
    """
    fwhm = SHARPEST_FWHM_PIX if psf_fwhm is None else float(psf_fwhm)
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"psf_fwhm must be a positive number of pixels, got {psf_fwhm!r}")
    model = round(_FWHM_MARGIN * fwhm, 2)
    return _tabulated_bound(model) or _sharpness_bound(model)


def _tabulated_bound(model):
    """The bound from the precomputed table (``python -m coron_cli._tables``), or None.

    Between two grid FWHMs the ratio is interpolated linearly: it falls as the pattern
    broadens, and convexly, so the chord lies above it (the safe side: a higher bound
    flags less); the envelope is the larger of the two (it carries a factor 2 anyway).
    """
    from ._sharpness_table import TABLE

    grid = sorted(TABLE)
    if not grid[0] <= model <= grid[-1]:
        return None
    i = int(np.searchsorted(grid, model + 1e-9, side="right")) - 1
    lo, hi = grid[i], grid[min(i + 1, len(grid) - 1)]
    ratio, env = TABLE[lo]
    if model > lo + 1e-9:
        q = (model - lo) / (hi - lo)
        ratio = tuple((1 - q) * a + q * b for a, b in zip(ratio, TABLE[hi][0]))
        env = tuple(tuple(max(a, b) for a, b in zip(r1, r2))
                    for r1, r2 in zip(env, TABLE[hi][1]))
    return SharpnessBound(model, tuple(ratio), _BRACKETS, tuple(tuple(r) for r in env))


@functools.lru_cache(maxsize=32)
def _sharpness_bound(fwhm):
    fine = _model_statistics(fwhm, 21, 0)
    ratio = []
    for k in (0, 1):
        s = fine["S"][k]
        cand = fine["peak"][k] & (fine["e0"] > 0)
        if not (s[cand] > 0).all():  # cannot happen for a centrally peaked PSF
            raise RuntimeError("a source's central pixel is not above its neighbours")
        ratio.append(float(_RATIO_MARGIN * np.max(fine["e0"][cand] / s[cand])))
    dmax = _BRACKETS[-1][1]
    envelope = np.zeros((2, len(_BRACKETS)))
    for factor in _FAMILY:
        coarse = _model_statistics(fwhm * factor, 7, dmax, dtype=np.float32)
        scale = coarse["P"] - coarse["b"]
        for k in (0, 1):
            # every position, not only where the pixel is a local peak: in a sum of
            # sources one of them may make it the peak while another sets its ring
            frac = np.maximum(coarse["e0"] - ratio[k] * coarse["S"][k], 0.0) / scale
            per_d = np.zeros(dmax + 1)
            np.maximum.at(per_d, coarse["d"].ravel(), frac.ravel())
            per_bracket = [per_d[lo:hi + 1].max() for lo, hi in _BRACKETS]
            envelope[k] = np.maximum(envelope[k], per_bracket)
    envelope = tuple(tuple(float(_ENVELOPE_MARGIN * v) for v in row) for row in envelope)
    return SharpnessBound(fwhm, tuple(ratio), _BRACKETS, envelope)


def _model_statistics(fwhm, step, lim, dtype=np.float64):
    """Test statistics of a pixel-integrated Airy pattern for all source positions.

    A pixel is centred at every offset (multiples of 1/step pixel, Chebyshev
    distance up to ``lim + 1/2`` pixels) from the pattern's centre; returned
    are its excess ``e0`` over its background ``b`` (the faintest half of
    its ring), its neighbours' mean excess ``S`` (all 8; faintest 7),
    whether it is at least as bright as those neighbours, the brightest
    pixel ``P`` of the pattern as sampled with that phase, and the Chebyshev
    distance ``d`` (pixels) to that pixel.
    """
    half = (lim + 3) * step
    x = np.arange(-half, half + 1) / step
    image = _airy_intensity(np.hypot(x[:, None], x[None, :]), fwhm).astype(dtype)
    # pixel integral, midpoint rule: a pixel centred on a sample spans `step` samples
    pix = ndimage.uniform_filter(image, size=step, mode="constant")
    span = (2 * lim + 1) * step // 2

    def at(dy, dx):
        y0, x0 = half - span + dy * step, half - span + dx * step
        return pix[y0:y0 + 2 * span + 1, x0:x0 + 2 * span + 1]

    v0 = at(0, 0)
    total = np.zeros_like(v0)
    first = np.full_like(v0, -np.inf)
    second = first.copy()
    for dy, dx in _NEIGHBOURS:
        a = at(dy, dx)
        total += a
        second = np.maximum(second, np.minimum(first, a))
        first = np.maximum(first, a)
    b = _faint_half_mean(np.stack([at(dy, dx) for dy, dx in _RING]))
    u = np.arange(-span, span + 1)
    k = np.rint(u / step).astype(int)       # pixels between this one and the brightest
    phase = u - step * k
    return {
        "e0": v0 - b,
        "S": ((total / 8.0 - b), ((total - first) / 7.0 - b)),
        "peak": (v0 >= first, v0 >= second),
        "b": b,
        "P": pix[half + phase[:, None], half + phase[None, :]],
        "d": np.maximum(np.abs(k)[:, None], np.abs(k)[None, :]),
    }


def _faint_half_mean(ring):
    """Mean of the faintest half of a (16, ...) stack of ring values."""
    half = ring.shape[0] // 2
    return np.partition(ring, half - 1, axis=0)[:half].mean(axis=0)


def _sharper_than_psf(frames, bad, var, bound, nsigma):
    """Pixels of (n, ny, nx) frames sharper than any point source can be (see find_outliers)."""
    st = _sharpness_statistics(frames, bad, var, bound, nsigma)
    with np.errstate(invalid="ignore"):
        hit0 = st["valid0"] & (st["t0"] > nsigma * st["s0"])
        hit1 = st["valid1"] & (st["t1"] > nsigma * st["s1"])
    return (hit0 | hit1) & st["above"]


def _sharpness_statistics(frames, bad, var, bound, nsigma):
    """The test statistics T0, T1, their noise and where each applies (see find_outliers)."""
    ny, nx = frames.shape[1:]
    filled = repair_bad_pixels(frames, bad).astype(np.float64)
    own_var = np.where(np.isfinite(var) & ~bad, var, np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        typical = np.nanmedian(np.where(np.isfinite(own_var), own_var, np.nan), axis=(1, 2))
    typical = np.where(np.isfinite(typical), typical, np.inf)
    fill_var = np.where(np.isfinite(own_var), own_var, typical[:, None, None])
    pad = ((0, 0), (2, 2), (2, 2))
    p_val = np.pad(filled, pad, mode="edge")
    p_var = np.pad(fill_var, pad, mode="edge")
    p_bad = np.pad(bad, pad, constant_values=True)   # off the frame: unknown

    def at(a, dy, dx):
        return a[:, 2 + dy:2 + dy + ny, 2 + dx:2 + dx + nx]

    nb = np.stack([at(p_val, dy, dx) for dy, dx in _NEIGHBOURS])
    nb_bad = np.stack([at(p_bad, dy, dx) for dy, dx in _NEIGHBOURS])
    missing = nb_bad.sum(axis=0)
    n_good = 8 - missing
    nb_var = np.where(nb_bad, 0.0, np.stack([at(p_var, dy, dx) for dy, dx in _NEIGHBOURS]))
    nb_var = nb_var.sum(axis=0) / np.maximum(n_good, 1)
    # a ring pixel off the frame or bad is unknown: it counts as the faintest
    # known one (a lower background is the safe side); the variance of the mean
    # of the faintest half is taken as that of a mean of 8
    ring = np.stack([at(p_val, dy, dx) for dy, dx in _RING])
    ring_bad = np.stack([at(p_bad, dy, dx) for dy, dx in _RING])
    faintest = np.where(ring_bad, np.inf, ring).min(axis=0)
    decidable = ring_bad.sum(axis=0) <= _MAX_UNKNOWN_RING
    b = _faint_half_mean(np.where(ring_bad, np.where(decidable, faintest, 0.0), ring))
    ring_var = sum(at(p_var, dy, dx) for dy, dx in _RING) / (len(_RING) * len(_RING) // 2)

    # a missing neighbour counts as the brightest: it is the one left out
    ordered = np.sort(np.where(nb_bad, np.inf, nb), axis=0)
    v0 = filled
    e0 = v0 - b
    above = e0 > nsigma * np.sqrt(own_var + ring_var)
    r0, r1 = bound.ratio
    allowance = _ring_allowance(v0, bad, b, nb, nb_bad, above, fill_var, bound)

    with np.errstate(invalid="ignore"):
        t0 = e0 - r0 * (nb.mean(axis=0) - b) - allowance[0]
        s0 = np.sqrt(own_var + r0 ** 2 * nb_var / 8.0 + (r0 - 1.0) ** 2 * ring_var)
        kept = ordered[:7]
        kept_sum = np.where(missing <= 1, kept.sum(axis=0), 0.0)
        t1 = (e0 - r1 * (kept_sum / 7.0 - b) - allowance[1]
              - r1 * _E_MAX8 / 7.0 * np.sqrt(nb_var))          # bias of leaving the top out
        s1 = np.sqrt(own_var + r1 ** 2 * nb_var / 7.0 + (r1 - 1.0) ** 2 * ring_var)
        usable = decidable & ~bad
        return {
            "t0": t0, "s0": s0, "valid0": usable & (missing == 0) & (v0 >= ordered[7]),
            "t1": t1, "s1": s1, "valid1": usable & (missing <= 1) & (v0 >= kept[6]),
            "above": above & usable, "e0": e0, "b": b, "allowance": allowance,
            "decided": usable & (missing <= 1),
        }


def _ring_allowance(v0, bad, b, nb, nb_bad, above, noise_var, bound):
    """(2, n, ny, nx): what the rings of the sources around each pixel may add to T0, T1.

    Every source counts by its brightest pixel: a local maximum standing
    significantly above its background (`above`), or a bad pixel that is a
    local maximum once given the largest value a source's peak could have
    over its good neighbours. Their excesses over the pixel's background `b`
    are summed over each bracket of distance (an annulus of the Chebyshev
    metric) and weighted by the bound's envelope.
    """
    with np.errstate(invalid="ignore"):
        brightest_good = np.where(nb_bad, -np.inf, nb).max(axis=0)
    r0 = bound.ratio[0]
    peak_fill = np.where(np.isfinite(brightest_good), b + r0 * (brightest_good - b), v0)
    img = np.where(bad, np.maximum(v0, peak_fill), v0)
    local_max = img >= ndimage.maximum_filter(img, size=(1, 3, 3), mode="nearest")
    peaks = local_max & (above | bad)
    value = np.where(peaks, img, 0.0)
    count = peaks.astype(np.float64)

    def box(a, half):  # sum over the (2 half + 1)^2 box around each pixel
        if half < 0:
            return np.zeros_like(a)
        size = 2 * half + 1
        return ndimage.uniform_filter(a, size=(1, size, size), mode="constant") * size * size

    out = np.zeros((2,) + v0.shape)
    for (lo, hi), w0, w1 in zip(bound.brackets, *bound.envelope):
        if w0 == 0.0 and w1 == 0.0:
            continue
        ring_sum = box(value, hi) - box(value, lo - 1)
        ring_count = box(count, hi) - box(count, lo - 1)
        excess = np.maximum(ring_sum - ring_count * b, 0.0)
        out[0] += w0 * excess
        out[1] += w1 * excess
    # a source beyond the frame's edge shows only its wings and rings; their
    # excess is bounded by the bump it makes on the edge (the edge pixels above
    # the faintest half of their 17 neighbours along the edge, less 4 times
    # their noise: a smooth glow or noise alone must cost no sensitivity)
    reach = bound.brackets[-1][1]
    bump = np.full(img.shape, -np.inf)
    noise = np.sqrt(noise_var)
    for axis in (1, 2):
        for side in (0, -1):
            line = np.take(v0, side, axis=axis)               # (n, length)
            sig = np.take(noise, side, axis=axis)
            pad = np.pad(line, ((0, 0), (8, 8)), mode="reflect")
            window = np.stack([pad[:, i:i + line.shape[1]] for i in range(17)])
            base = np.partition(window, 8, axis=0)[:8].mean(axis=0)
            excess = np.where(np.take(bad, side, axis=axis), -np.inf, line - base - 4.0 * sig)
            index = [slice(None)] * 3
            index[axis] = side
            bump[tuple(index)] = np.maximum(bump[tuple(index)], excess)
    bump = ndimage.maximum_filter(bump, size=(1, 2 * reach + 1, 2 * reach + 1), mode="constant",
                                  cval=-np.inf)
    out += _EDGE_ALLOWANCE * np.maximum(bump, 0.0)[None]
    return out


def find_outliers(cube, bad=None, *, err=None, nsigma=6.0, rel=0.03, jitter=0.05,
                  psf_fwhm=None):
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
        Detection threshold in units of the noise of each test statistic.
    rel : float
        Across integrations: changes up to ``rel`` times the brightest pixel
        of the 3x3 neighbourhood are expected and never flagged.
    jitter : float
        Across integrations: a move of the scene by this many pixels (rms)
        is expected; the change it makes on a slope is never flagged (moves
        up to ``nsigma * jitter``, 0.3 pixel by default, pass).
    psf_fwhm : float, optional
        Nominal FWHM (pixels) of the sharpest PSF the data can contain: the
        diffraction limit at the filter's wavelength,
        ``diffraction_fwhm_pix(filter_wavelength_um(FILTER), pixel_scale)``.
        Default :data:`SHARPEST_FWHM_PIX` (1.3 px, the sharpest JWST
        coronagraphic sampling), safe for any JWST data but less sensitive
        than the right value.

    Returns
    -------
    ndarray of bool, shape (nint, ny, nx)
        True at new outliers only (never at a pixel of `bad`), so this is
        the outlier mask apart from the bad-pixel mask. Repair them with
        :func:`repair_bad_pixels`; to give back those that turn out to be on
        a source, see :func:`restore_source_pixels`.

    Raises
    ------
    ValueError
        For a cube that is not 3-D or a non-positive `psf_fwhm`.

    Notes
    -----
    **Sharper than any point source** (one integration, and pixels where
    the integrations cannot decide). Let ``v0`` be a pixel and ``b`` its
    local background: the mean of the faintest half of the 16 pixels of the
    ring just outside its 3x3 neighbourhood (the border of its 5x5 box). On
    a steep halo this lies below ``v0`` (by 1.5 times the slope), so a
    gradient can only hide a detection, never fake one, and a bright source
    on one side of the ring does not raise it. ``e0 = v0 - b`` is the
    pixel's excess and ``S`` the mean excess over ``b`` of its neighbours:
    all 8 (statistic 0), or the faintest 7 (statistic 1, so that the two
    pixels of a cosmic-ray track do not hide each other). For a point source
    centred anywhere in the pixel ``e0 <= R S``, with ``R`` from
    :func:`sharpness_bound`: the largest ``e0 / S`` of a pixel-integrated
    Airy pattern 15 % sharper than `psf_fwhm`. At F356W and 0.063"/px
    (FWHM 1.85 px) ``R0, R1 = 4.3, 5.0``, while a source centred on the
    pixel, with edge neighbours at 0.48 and corners at 0.21 of its peak, has
    ``e0 / S = 3.0``. The rings of a diffraction pattern can be locally
    sharper than its core; the allowance ``A`` covers them: the bound's
    envelope times the excess of every source (significant local maximum)
    within 30 pixels, summed by distance, plus 3 times the bump a source
    beyond the frame's edge makes on the edge. A pixel is an outlier when
    it is at least as bright as its neighbours (the 7 kept, for statistic
    1), its excess ``e0`` is above ``nsigma`` times its noise, and

        T = e0 - R S - A > nsigma * sigma_T,
        sigma_T^2 = var(v0) + R^2 var(mean of the neighbours) + (R - 1)^2 var(b),

    variances from `err`. Statistic 1 has the bias of leaving out the
    brightest of 8 noisy neighbours removed; the low bias of ``b`` is kept
    (the safe side). A bad neighbour counts as the brightest: with one only
    statistic 1 is used, with two or more the pixel is not decided, nor with
    more than 5 ring pixels bad or off the frame (the outermost row and
    column, the corners).

    The price of never flagging a source is sensitivity. On a flat sky with
    ``nsigma = 6``, single-pixel hits are found half of the time at 17
    sigma and 90 % at 20 sigma for FWHM 1.85 px, at 24 and 27 sigma for
    1.6 px, at 8 and 10 sigma for 3.3 px (MIRI), and at ~42 sigma for the
    default 1.3 px; on a slope they must also exceed ~(R0 - 1) 1.5 times
    it, near a bright source the allowance. The middle pixel of a straight
    three-pixel track is found only when brighter than ``R1 / 7`` times the
    track's far end.

    **Three or more integrations**: a pixel is compared with its median over
    the integrations, scaled by each integration's fitted flux factor; the
    noise is the quadrature sum of `err`, the robust spread over
    integrations, the fractional tolerance `rel` and the change a move by
    `jitter` makes. A companion, present in every integration, matches the
    median and is not flagged; a cosmic ray on it is (when above ``nsigma
    rel``, 18 % of the local peak by default), and is repaired from the
    other integrations. Where only two integrations are good the pair
    rule applies, where only one the single-frame test.

    **Two integrations**: of a pair that differs by more than ``nsigma``
    times the noise (``err`` of both, `rel` and `jitter`), the brighter is
    flagged if it is also sharper than any point source in its own frame:
    the comparison alone flags the steep core of a source that moved
    between the two.
    """
    cube = np.asarray(cube, dtype=np.float64)
    if cube.ndim != 3:
        raise ValueError(f"cube must be 3-D (nint, ny, nx), got shape {cube.shape}")
    if psf_fwhm is not None and not (np.isfinite(psf_fwhm) and psf_fwhm > 0):
        raise ValueError(f"psf_fwhm must be a positive number of pixels, got {psf_fwhm!r}")
    nint = cube.shape[0]
    bad = np.zeros(cube.shape, bool) if bad is None else np.asarray(bad, bool)
    bad = bad | ~np.isfinite(cube)
    work = np.where(bad, np.nan, cube)
    if err is None:
        diff = work[:, 1:, :] - work[:, :-1, :]
        sig = robust_sigma(diff, axis=(1, 2)) / np.sqrt(2.0)
        noise = np.broadcast_to(sig[:, None, None], cube.shape)
    else:
        err = np.asarray(err, dtype=np.float64)
        noise = np.where(np.isfinite(err) & (err > 0), err, np.inf)
    ngood = (~bad).sum(axis=0)
    out = np.zeros(cube.shape, bool)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        med = nanmedian(work, 0)
        filled_med = np.nan_to_num(med)
        local = ndimage.maximum_filter(np.abs(filled_med), size=3, mode="nearest")
        # a shift of the scene by `jitter` pixels changes a pixel by up to this
        if min(filled_med.shape) >= 2:
            slope = ndimage.maximum_filter(np.hypot(*np.gradient(filled_med)), size=3,
                                           mode="nearest")
        else:
            slope = np.zeros_like(filled_med)
        tol = (rel * local) ** 2 + (jitter * slope) ** 2
        if nint >= 3 and (ngood >= 3).any():
            # integrations may differ by a flux factor: fit it before comparing
            ok = np.isfinite(work) & np.isfinite(med)[None]
            m0 = np.where(ok, med[None], 0.0)
            num = (np.where(ok, work, 0.0) * m0).sum(axis=(1, 2))
            den = (m0 * m0).sum(axis=(1, 2))
            scale = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
            dev = work - scale[:, None, None] * med[None]
            spread = robust_sigma(dev, axis=0)
            sigma = np.sqrt(noise ** 2 + spread[None] ** 2 + tol[None])
            out |= (np.abs(dev) > nsigma * sigma) & (ngood >= 3)[None]
        undecided = (ngood >= 1) & (ngood <= 2)
        if undecided.any():
            sharp = _sharper_than_psf(cube, bad, noise ** 2, sharpness_bound(psf_fwhm), nsigma)
            out |= sharp & (ngood == 1)[None]
            pair = ngood == 2
            if pair.any():
                hi = np.nanmax(np.where(pair[None], work, np.nan), axis=0)
                lo = np.nanmin(np.where(pair[None], work, np.nan), axis=0)
                first = np.argmax(np.where(bad, -np.inf, work), axis=0)
                last = np.argmin(np.where(bad, np.inf, work), axis=0)
                n_hi = np.take_along_axis(noise, first[None], axis=0)[0]
                n_lo = np.take_along_axis(noise, last[None], axis=0)[0]
                sigma = np.sqrt(n_hi ** 2 + n_lo ** 2 + tol)
                hot = pair & (hi - lo > nsigma * sigma)
                brighter = np.arange(nint)[:, None, None] == first[None]
                out |= hot[None] & brighter & sharp
    out &= ~bad
    return out


def restore_source_pixels(repaired, original, outliers, sources):
    """Give back the values of outliers that turned out to lie on a source.

    Parameters
    ----------
    repaired : ndarray of shape (..., ny, nx)
        Data after :func:`repair_bad_pixels` (outliers replaced).
    original : ndarray, same shape
        The same data as read, before the repair.
    outliers : ndarray of bool, same shape
        What :func:`find_outliers` returned (new outliers only, so distinct
        from the pixels flagged bad in DQ).
    sources : ndarray of bool, broadcastable to the same shape
        Where a source is known to be (e.g. ``(ny, nx)`` for all
        integrations): a companion or disk found after the subtraction.

    Returns
    -------
    values : ndarray, same shape and dtype as `repaired`
        A copy of `repaired` with `original` values at the outliers on a
        source.
    kept : ndarray of bool, same shape
        The outliers that stay outliers (``outliers & ~sources``); the
        caller clears ``DO_NOT_USE | OUTLIER`` in DQ where ``outliers &
        ~kept``.

    Notes
    -----
    Only pixels that :func:`find_outliers` reported are given back, never
    pixels flagged bad on input (dead, hot, saturated): their values stay
    repaired.
    """
    repaired = np.asarray(repaired)
    outliers = np.asarray(outliers, dtype=bool)
    if outliers.shape != repaired.shape or np.shape(original) != repaired.shape:
        raise ValueError("repaired, original and outliers must have the same shape")
    give_back = outliers & np.broadcast_to(np.asarray(sources, dtype=bool), repaired.shape)
    values = np.where(give_back, np.asarray(original).astype(repaired.dtype), repaired)
    return values, outliers & ~give_back
