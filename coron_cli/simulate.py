"""Simulated JWST/NIRCam-like coronagraphic data sets.

The simulation is pure numerics (numpy only): it returns arrays and plain
dictionaries, performs no I/O and prints nothing.

Optics
------
A monochromatic-per-channel Fraunhofer model of a Lyot coronagraph, evaluated
at three wavelengths across an F444W-like band (4.05, 4.40, 4.75 um, equal
weights):

1. entrance pupil: 18 hexagonal segments (1.32 m flat to flat, 7 mm gaps) with
   a missing central segment, a 0.74 m secondary obscuration and three struts;
2. static aberrations: a power-law phase screen (PSD ~ f^-2.5, ~30 nm RMS)
   plus segment pistons (~10 nm RMS); tip/tilt are removed from every map so
   that the star position is fully described by the pointing;
3. wavefront drift: the reference visit adds ~4 nm RMS of low-order
   aberration, and every integration adds ~0.5 nm RMS plus a ~1 nm linear
   trend across its visit;
4. a focal-plane amplitude mask ``t(r) = 1 - exp(-r^2 / (2 sigma^2))``
   (intensity half-transmission radius ~2.7 lambda/D), centred at the fixed
   mask centre; source offsets are applied as pupil tilts before the mask;
5. an undersized circular Lyot stop (outer radius 2.45 m, inner 1.15 m,
   0.40 m struts; 50 % of the pupil area);
6. the detector image, point-sampled at 0.063 arcsec/pixel (about 2.2 pixels
   per lambda/D at 4.4 um for D = 6.5 m).

All Fourier transforms are matrix Fourier transforms (MFT). The focal mask is
applied semi-analytically (Soummer et al. 2007): the Lyot-plane field is the
pupil field minus the inverse transform of the focal field multiplied by
``1 - t``, which only needs the focal field on a small grid around the mask.

Detector
--------
Counts (DN) per integration: model = star + planets + uniform background;
data = model + sqrt(model) * z1 + read * z2 + row offsets (z are standard
normal draws, shared with the planet-free twin). ERR = sqrt(model + read^2).
DO_NOT_USE pixels (a fixed bad-pixel map plus a few per integration) hold
garbage values, and cosmic rays are added, half of them flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["SIZES", "SimExposure", "SimDataset", "simulate_dataset"]

#: Data-set sizes: name -> (pixels per side, integrations per exposure).
SIZES = {"small": (64, 3), "medium": (160, 5), "large": (320, 10)}

# --------------------------------------------------------------------------
# Instrument and scene constants
# --------------------------------------------------------------------------
_ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0
_PIXSCALE_ARCSEC = 0.063
_D_TEL_M = 6.5                       # diameter used for lambda/D
_WAVE_REF_UM = 4.40
_WAVES_UM = (4.05, 4.40, 4.75)
_WAVE_WEIGHTS = (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0)

_PUPIL_WIDTH_M = 6.8                 # width of the pupil array (>= circumscribed 6.64 m)
_SEG_F2F_M = 1.32
_SEG_GAP_M = 0.007
_SM_DIAM_M = 0.74
_STRUT_WIDTH_M = 0.08
_STRUT_ANGLES_DEG = (90.0, 210.0, 330.0)
_LYOT_ROUT_M = 2.45
_LYOT_RIN_M = 1.15
_LYOT_STRUT_WIDTH_M = 0.40
_SUPERSAMPLE = 4                     # sub-samples per pupil pixel for grey edges
_PUPIL_SAMPLES = {64: 96, 160: 128, 320: 192}

_MASK_SIGMA_LOD = 1.75               # Gaussian mask sigma in lambda_ref / D_tel
_MASK_STEP_LOD = 0.25                # focal sampling of the mask grid
_MASK_HALF_EXTENT_SIGMA = 6.5

_STATIC_WFE_NM = 30.0
_SEGMENT_PISTON_NM = 10.0
_REF_DELTA_WFE_NM = 4.0
_VISIT_TREND_WFE_NM = 1.0
_INT_JITTER_WFE_NM = 0.5

_TA_RANGE_PIX = (0.05, 0.30)
_POINT_JITTER_PIX = 0.007
_DITHER_STEP_PIX = 0.2
_DITHER_ERR_PIX = 0.005
_DITHER_ORDER = ((0, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0))
_ROLL_DELTA_DEG = 10.0

_STAR_PEAK_RANGE = (2.0e6, 6.0e6)
_REF_FLUX_RATIO_RANGE = (1.3, 3.0)
_READ_NOISE = 12.0
_ROW_NOISE = 3.0
_BACKGROUND = 10.0

_BADPIX_FRAC = 0.003
_BADPIX_INT_FRAC = 3.0e-4
_CR_DENSITY = 2.5e-4

_DO_NOT_USE = 1
_JUMP_DET = 4
_DEAD = 1024
_HOT = 2048

_SCI_COORD = (150.0, -30.0)
_REF_COORD = (151.2, -29.4)

# random-stream tags (one independent generator per purpose)
_S_POINT, _S_WAVE, _S_PLANET, _S_NOISE, _S_BADPIX, _S_CR = range(6)


# --------------------------------------------------------------------------
# Public containers
# --------------------------------------------------------------------------
@dataclass
class SimExposure:
    """One simulated ``calints``-like exposure.

    Attributes
    ----------
    name : str
        File name, e.g. ``"demo_sci_roll1_calints.fits"``.
    exptype : str
        ``"science"`` or ``"psf"``.
    sci : numpy.ndarray
        float32, shape (nint, ny, nx): counts (DN) per integration.
    err : numpy.ndarray
        float32, shape (nint, ny, nx): 1-sigma noise, ``sqrt(model + read^2)``
        (NaN where ``sci`` is NaN).
    dq : numpy.ndarray
        uint32, shape (nint, ny, nx): data quality; bit 1 = DO_NOT_USE.
    header : dict
        Primary-header keywords (TARGNAME, INSTRUME, FILTER, CORONMSK,
        ROLL_REF, NINTS, EXP_TYPE, IS_PSF, BUNIT, ...).
    wcs : dict
        SCI-header celestial WCS keywords (CTYPE, CUNIT, CRPIX, CRVAL, CD).
    star_xy : numpy.ndarray
        float64, shape (nint, 2): true star position (x, y) per integration,
        0-based pixel coordinates.
    """

    name: str
    exptype: str
    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    header: dict
    wcs: dict
    star_xy: np.ndarray


@dataclass
class SimDataset:
    """A simulated coronagraphic RDI data set.

    Attributes
    ----------
    exposures : list of SimExposure
        The two science rolls, then the nine reference (psf) dithers.
    twin : list of SimExposure
        Planet-free twins of the science exposures, with the same noise,
        bad pixels and cosmic rays.
    offaxis_psf : numpy.ndarray
        float32, shape (ny, nx): unocculted PSF of the science star (no focal
        mask, same Lyot stop), centred at the mask centre; peak = star peak.
    truth : dict
        JSON-serialisable ground truth.
    asn : dict
        JSON-serialisable association (science and psf members only).
    """

    exposures: list[SimExposure]
    twin: list[SimExposure]
    offaxis_psf: np.ndarray
    truth: dict
    asn: dict


# --------------------------------------------------------------------------
# Optics
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Optics:
    """Cached, seed-independent optical model for one detector size."""

    npix: int
    npup: int
    mask_center: float          # 0-based pixel coordinate (same in x and y)
    pupil: np.ndarray           # (npup, npup) amplitude
    lyot: np.ndarray            # (npup, npup) amplitude
    seg_index: np.ndarray       # (npup, npup) int, -1 outside segments
    weight: np.ndarray          # (npup, npup) pupil weights for statistics
    ptt_proj: np.ndarray        # (3, npup*npup) piston/tip/tilt projector
    ptt_basis: np.ndarray       # (3, npup*npup)
    u: np.ndarray               # (npup,) pupil coordinate in units of the array width
    lod_w: tuple                # per wavelength: lambda / width in detector pixels
    waves_nm: tuple
    weights: tuple
    gmask: np.ndarray           # (m, m) 1 - t on the mask grid
    am: tuple                   # per wavelength (m, npup) forward MFT to the mask grid
    bm: tuple                   # per wavelength (npup, m) inverse MFT from the mask grid
    ad: tuple                   # per wavelength (npix, npup) forward MFT to the detector


def _lod_pix(wave_um, diameter_m):
    """lambda/D in detector pixels."""
    return wave_um * 1e-6 / diameter_m * _ARCSEC_PER_RAD / _PIXSCALE_ARCSEC


def _segment_centres():
    """Centres (m) of the 18 hexagonal segments, shape (18, 2)."""
    a1 = _SEG_F2F_M * np.array([np.cos(np.pi / 6), np.sin(np.pi / 6)])
    a2 = _SEG_F2F_M * np.array([0.0, 1.0])
    out = []
    for i in range(-2, 3):
        for j in range(-2, 3):
            ring = max(abs(i), abs(j), abs(i + j))
            if 1 <= ring <= 2:
                out.append(i * a1 + j * a2)
    return np.array(out)


def _pupil_masks(x, y):
    """Boolean entrance-pupil and Lyot-stop masks at coordinates ``x, y`` (m).

    Parameters
    ----------
    x, y : numpy.ndarray
        Coordinates in metres, same shape.

    Returns
    -------
    pupil, lyot : numpy.ndarray of bool
        Same shape as ``x``.
    """
    normals = [np.array([np.cos(a), np.sin(a)]) for a in np.radians([30.0, 90.0, 150.0])]
    half = 0.5 * (_SEG_F2F_M - _SEG_GAP_M)
    pupil = np.zeros(x.shape, bool)
    for c in _segment_centres():
        inside = np.ones(x.shape, bool)
        for n in normals:
            inside &= np.abs((x - c[0]) * n[0] + (y - c[1]) * n[1]) <= half
        pupil |= inside
    r = np.hypot(x, y)
    pupil &= r >= 0.5 * _SM_DIAM_M
    lyot = (r <= _LYOT_ROUT_M) & (r >= _LYOT_RIN_M)
    for ang in np.radians(_STRUT_ANGLES_DEG):
        along = x * np.cos(ang) + y * np.sin(ang)
        across = np.abs(-x * np.sin(ang) + y * np.cos(ang))
        pupil &= ~((along > 0) & (across < 0.5 * _STRUT_WIDTH_M))
        lyot &= ~((along > 0) & (across < 0.5 * _LYOT_STRUT_WIDTH_M))
    return pupil, lyot


@lru_cache(maxsize=4)
def _get_optics(npix):
    """Build (once per ``npix``) the pupil, Lyot stop, mask and MFT matrices."""
    npup = _PUPIL_SAMPLES.get(npix, max(96, int(np.ceil(0.6 * npix / 16.0)) * 16))
    dx = _PUPIL_WIDTH_M / npup
    u = (np.arange(npup) - (npup - 1) / 2.0) / npup          # units of the width
    s = _SUPERSAMPLE
    sub = (np.arange(npup * s) - (npup * s - 1) / 2.0) * dx / s
    xs, ys = np.meshgrid(sub, sub)
    p, ly = _pupil_masks(xs, ys)
    pupil = p.reshape(npup, s, npup, s).mean(axis=(1, 3))
    lyot = ly.reshape(npup, s, npup, s).mean(axis=(1, 3))

    xc, yc = np.meshgrid(u * _PUPIL_WIDTH_M, u * _PUPIL_WIDTH_M)
    cen = _segment_centres()
    d2 = (xc[..., None] - cen[:, 0]) ** 2 + (yc[..., None] - cen[:, 1]) ** 2
    seg_index = np.where(pupil > 0, np.argmin(d2, axis=-1), -1)

    weight = pupil ** 2
    basis = np.stack([np.ones_like(xc), xc, yc]).reshape(3, -1)
    wb = basis * weight.reshape(1, -1)
    ptt_proj = np.linalg.solve(wb @ basis.T, wb)               # coefficients = proj @ map

    mask_center = npix / 2.0
    lod_ref = _lod_pix(_WAVE_REF_UM, _D_TEL_M)
    sigma = _MASK_SIGMA_LOD * lod_ref
    step = _MASK_STEP_LOD * min(_lod_pix(w, _PUPIL_WIDTH_M) for w in _WAVES_UM)
    m = 2 * int(np.ceil(_MASK_HALF_EXTENT_SIGMA * sigma / step)) + 1
    xm = (np.arange(m) - (m - 1) / 2.0) * step
    gmask = np.exp(-(xm[:, None] ** 2 + xm[None, :] ** 2) / (2.0 * sigma ** 2))

    xd = np.arange(npix) - mask_center
    lod_w, am, bm, ad = [], [], [], []
    for w in _WAVES_UM:
        lw = _lod_pix(w, _PUPIL_WIDTH_M)
        lod_w.append(lw)
        am.append(np.exp(-2j * np.pi * np.outer(xm, u) / lw) / npup)
        bm.append(np.exp(2j * np.pi * np.outer(u, xm) / lw) * (step / lw))
        ad.append(np.exp(-2j * np.pi * np.outer(xd, u) / lw) / npup)

    arrays = [pupil, lyot, seg_index, weight, ptt_proj, basis, u, gmask, *am, *bm, *ad]
    for a in arrays:
        a.setflags(write=False)
    return _Optics(npix=npix, npup=npup, mask_center=mask_center, pupil=pupil, lyot=lyot,
                   seg_index=seg_index, weight=weight, ptt_proj=ptt_proj, ptt_basis=basis,
                   u=u, lod_w=tuple(lod_w), waves_nm=tuple(1e3 * w for w in _WAVES_UM),
                   weights=_WAVE_WEIGHTS, gmask=gmask, am=tuple(am), bm=tuple(bm), ad=tuple(ad))


def _images(opt, opd, offsets, coron, chunk=16):
    """Polychromatic detector images of unit-amplitude point sources.

    Parameters
    ----------
    opt : _Optics
    opd : numpy.ndarray
        Shape (B, npup, npup): wavefront error in nm for each source.
    offsets : numpy.ndarray
        Shape (B, 2): source (x, y) offsets from the mask centre, pixels.
    coron : bool
        Apply the focal-plane mask (else only the Lyot stop).
    chunk : int
        Number of sources propagated together.

    Returns
    -------
    numpy.ndarray
        float64, shape (B, npix, npix), un-normalised intensity.
    """
    opd = np.asarray(opd, float)
    offsets = np.asarray(offsets, float).reshape(-1, 2)
    nb = offsets.shape[0]
    out = np.zeros((nb, opt.npix, opt.npix))
    for s0 in range(0, nb, chunk):
        s1 = min(nb, s0 + chunk)
        o = opd[s0:s1]
        off = offsets[s0:s1]
        for iw in range(len(opt.waves_nm)):
            k = 2.0 * np.pi * opt.u / opt.lod_w[iw]
            tx = np.exp(1j * off[:, 0, None] * k[None, :])
            ty = np.exp(1j * off[:, 1, None] * k[None, :])
            e = opt.pupil * np.exp((2j * np.pi / opt.waves_nm[iw]) * o)
            e *= ty[:, :, None]
            e *= tx[:, None, :]
            if coron:
                am, bm = opt.am[iw], opt.bm[iw]
                f = am @ e @ am.T
                f *= opt.gmask
                e -= bm @ f @ bm.T
            e *= opt.lyot
            ad = opt.ad[iw]
            d = ad @ e @ ad.T
            out[s0:s1] += opt.weights[iw] * (d.real ** 2 + d.imag ** 2)
    return out


def _powerlaw_opd(rng, opt, count, alpha, rms_nm):
    """Random power-law wavefront maps without piston, tip and tilt.

    Parameters
    ----------
    rng : numpy.random.Generator
    opt : _Optics
    count : int
        Number of maps.
    alpha : float
        PSD exponent, PSD ~ (f^2 + 1)^(-alpha/2), f in cycles per pupil.
    rms_nm : float
        Weighted RMS over the pupil of each returned map.

    Returns
    -------
    numpy.ndarray
        Shape (count, npup, npup), nm.
    """
    n = opt.npup
    f = np.fft.fftfreq(n) * n
    amp = (f[:, None] ** 2 + f[None, :] ** 2 + 1.0) ** (-alpha / 4.0)
    amp[0, 0] = 0.0
    noise = rng.standard_normal((count, n, n)) + 1j * rng.standard_normal((count, n, n))
    maps = np.fft.ifft2(noise * amp).real
    return _normalise(opt, maps, rms_nm)


def _remove_ptt(opt, maps):
    """Remove the weighted piston/tip/tilt from maps of shape (..., npup, npup)."""
    flat = maps.reshape(-1, opt.npup * opt.npup)
    coef = flat @ opt.ptt_proj.T
    return (flat - coef @ opt.ptt_basis).reshape(maps.shape)


def _rms(opt, maps):
    """Pupil-weighted RMS of maps (..., npup, npup)."""
    w = opt.weight
    return np.sqrt(np.sum(maps ** 2 * w, axis=(-2, -1)) / w.sum())


def _normalise(opt, maps, rms_nm):
    maps = _remove_ptt(opt, maps)
    return maps * (rms_nm / _rms(opt, maps))[:, None, None]


def _visit_opd(rng, opt, base, nint_total):
    """Per-integration wavefronts of one visit, shape (nint_total, npup, npup)."""
    trend = _powerlaw_opd(rng, opt, 1, 3.0, _VISIT_TREND_WFE_NM)[0]
    jitter = _powerlaw_opd(rng, opt, nint_total, 2.5, _INT_JITTER_WFE_NM)
    tau = (np.arange(nint_total) + 0.5) / nint_total - 0.5
    return base[None] + tau[:, None, None] * trend[None] + jitter


# --------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------
def _rotate_offset(sep, pa_deg, roll_deg):
    """Detector offset (dx, dy) of a source at (sep, PA) for a roll angle."""
    a = np.radians(pa_deg - roll_deg)
    return np.array([-sep * np.sin(a), sep * np.cos(a)])


def _contrasts(n):
    if n <= 0:
        return []
    if n == 1:
        return [1e-3]
    return [float(f"{c:.3g}") for c in np.geomspace(1e-3, 1e-5, n)]


def _place_planets(rng, n, lod, max_sep_lod, rolls):
    """Draw planet separations (lambda/D) and position angles (deg).

    The brightest planet is at 5-6 lambda/D; the others are spread over
    [4, max_sep_lod] with separation increasing as contrast decreases.
    Planets are at least 3 lambda/D apart (and, when possible, also from the
    other planets' positions in the other roll).
    """
    if n == 0:
        return [], []
    edges = np.linspace(4.0, max_sep_lod, max(n, 2))
    golden = 137.50776
    min_d = 3.0 * lod
    for attempt in range(4000):
        cross = attempt < 2000
        seps = [rng.uniform(5.0, 6.0)]
        seps += [rng.uniform(edges[k], edges[k + 1]) for k in range(n - 1)]
        base = rng.uniform(0.0, 360.0)
        jit = 0.4 * min(360.0 / n, golden) / 2.0
        pas = [(base + k * golden + rng.uniform(-jit, jit)) % 360.0 for k in range(n)]
        pos = [[_rotate_offset(s * lod, p, r) for s, p in zip(seps, pas)] for r in rolls]
        ok = True
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                if np.hypot(*(pos[0][i] - pos[0][j])) < min_d:
                    ok = False
                if cross and np.hypot(*(pos[0][i] - pos[1][j])) < min_d:
                    ok = False
        if ok:
            return [float(s) for s in seps], [float(p) for p in pas]
    raise ValueError(f"cannot place {n} planets without overlap; use fewer planets")


def _cd_matrix(roll_deg):
    scale = _PIXSCALE_ARCSEC / 3600.0
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    return {"CD1_1": float(-scale * c), "CD1_2": float(scale * s),
            "CD2_1": float(scale * s), "CD2_2": float(scale * c)}


def _wcs(mask_center, coord, roll_deg):
    w = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
         "CRPIX1": float(mask_center + 1.0), "CRPIX2": float(mask_center + 1.0),
         "CRVAL1": float(coord[0]), "CRVAL2": float(coord[1]), "RADESYS": "ICRS"}
    w.update(_cd_matrix(roll_deg))
    return w


def _header(targname, coord, roll, nint, is_psf, observtn, expstart, extra):
    h = {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCALONG", "MODULE": "A",
         "CHANNEL": "LONG", "FILTER": "F444W", "PUPIL": "MASKRND", "CORONMSK": "MASKA335R",
         "EXP_TYPE": "NRC_CORON", "IS_PSF": bool(is_psf), "TARGNAME": targname,
         "RA_TARG": float(coord[0]), "DEC_TARG": float(coord[1]), "ROLL_REF": float(roll),
         "NINTS": int(nint), "NGROUPS": 10, "BUNIT": "DN", "PROGRAM": "00000",
         "OBSERVTN": observtn, "EXPSTART": float(expstart), "PIXSCALE": _PIXSCALE_ARCSEC,
         "SUBARRAY": "SIMULATED", "ORIGIN": "coron simulate"}
    h.update(extra)
    return h


# --------------------------------------------------------------------------
# Detector effects
# --------------------------------------------------------------------------
def _garbage(rng, kind, size):
    """Garbage values for DO_NOT_USE pixels of the given kinds (0-3)."""
    vals = np.empty(size)
    vals[kind == 0] = np.nan
    vals[kind == 1] = 0.0
    nh = int(np.sum(kind == 2))
    vals[kind == 2] = 10.0 ** rng.uniform(5.0, 8.0, nh)
    nn = int(np.sum(kind == 3))
    vals[kind == 3] = -(10.0 ** rng.uniform(3.0, 5.0, nn))
    return vals


def _cosmic_rays(rng, shape):
    """Draw cosmic-ray events for one exposure.

    Returns
    -------
    list of tuple
        ``(int, x, y, pixels, rel_amplitudes, flagged, strength)`` where
        ``pixels`` is a list of (y, x) and ``strength`` multiplies the local
        noise at (y, x).
    """
    nint, ny, nx = shape
    events = []
    for i in range(nint):
        for _ in range(rng.poisson(_CR_DENSITY * ny * nx)):
            x, y = int(rng.integers(nx)), int(rng.integers(ny))
            size = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
            step = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(4))]
            pix = [(y + k * step[0], x + k * step[1]) for k in range(size)]
            pix = [(py, px) for py, px in pix if 0 <= py < ny and 0 <= px < nx]
            rel = [1.0] + list(rng.uniform(0.1, 0.6, len(pix) - 1))
            strength = 10.0 ** rng.uniform(2.0, 4.0)
            flagged = bool(rng.random() < 0.5)
            events.append((i, x, y, pix, rel, flagged, strength))
    return events


def _detector(model_star, model_planet, rngs, badmap, events):
    """Add noise, cosmic rays and bad pixels to a science or psf exposure.

    Parameters
    ----------
    model_star : numpy.ndarray
        (nint, ny, nx) noiseless model without planets (counts).
    model_planet : numpy.ndarray or None
        (nint, ny, nx) noiseless planet images.
    rngs : tuple of numpy.random.Generator
        (noise, bad-pixel) generators.
    badmap : tuple
        (fixed bad-pixel boolean map, kinds) for the detector.
    events : list
        Cosmic rays from :func:`_cosmic_rays`.

    Returns
    -------
    (sci, err, dq), (sci, err, dq) or None, list
        Real exposure, planet-free twin (None without planets) and the
        unflagged cosmic rays as (int, x, y, pixels).
    """
    rng_noise, rng_bad = rngs
    nint, ny, nx = model_star.shape
    z1 = rng_noise.standard_normal(model_star.shape)
    z2 = rng_noise.standard_normal(model_star.shape)
    rows = rng_noise.standard_normal((nint, ny, 1)) * _ROW_NOISE
    models = [model_star + model_planet] if model_planet is not None else [model_star]
    if model_planet is not None:
        models.append(model_star)

    fixed, kinds = badmap
    dq = np.zeros(model_star.shape, np.uint32)
    dq[:, fixed] = _DO_NOT_USE
    dq[:, fixed & (kinds == 1)] |= _DEAD
    dq[:, fixed & (kinds == 2)] |= _HOT
    extra = rng_bad.random(model_star.shape) < _BADPIX_INT_FRAC
    dq[extra] |= _DO_NOT_USE
    nfix = int(fixed.sum())
    garb_fixed = _garbage(rng_bad, np.broadcast_to(kinds[fixed], (nint, nfix)),
                          (nint, nfix))
    ekinds = rng_bad.integers(0, 4, int(extra.sum()))
    garb_extra = _garbage(rng_bad, ekinds, ekinds.size)

    # cosmic-ray deposits are scaled by the noise of the real exposure and
    # added identically to the twin
    err0 = np.sqrt(np.maximum(models[0], 0.0) + _READ_NOISE ** 2)
    deposit = np.zeros(model_star.shape)
    for i, x, y, pix, rel, flagged, strength in events:
        py, px = np.array(pix).T
        deposit[i, py, px] += strength * err0[i, y, x] * np.asarray(rel)
        if flagged:
            dq[i, py, px] |= _DO_NOT_USE | _JUMP_DET
    unflagged = [(i, x, y, pix) for i, x, y, pix, _, flagged, _ in events
                 if not flagged and not dq[i, y, x] & _DO_NOT_USE]

    outs = []
    for model in models:
        var = np.maximum(model, 0.0)
        sci = model + np.sqrt(var) * z1 + _READ_NOISE * z2 + rows + deposit
        err = np.sqrt(var + _READ_NOISE ** 2)
        sci[:, fixed] = garb_fixed
        sci[extra] = garb_extra
        err[np.isnan(sci)] = np.nan
        outs.append((sci.astype(np.float32), err.astype(np.float32), dq.copy()))
    twin = outs[1] if len(outs) > 1 else None
    return outs[0], twin, unflagged


# --------------------------------------------------------------------------
# Main entry point
# --------------------------------------------------------------------------
def simulate_dataset(size="small", *, seed=0, root="demo", nplanets=None):
    """Simulate a JWST/NIRCam-like coronagraphic RDI data set.

    Two science rolls (``ROLL_REF`` = phi and phi + 10 deg) of a star with
    planets, and a 9-point small-grid-dither reference visit of a brighter
    (1.3-3x) planet-free star, all with per-visit target-acquisition errors,
    wavefront drifts, photon/read/row noise, bad pixels and cosmic rays.

    Parameters
    ----------
    size : {"small", "medium", "large"}
        Detector size and integrations per exposure, see :data:`SIZES`
        (64 px x 3, 160 px x 5, 320 px x 10).
    seed : int
        Non-negative random seed; the result is deterministic for a seed.
    root : str
        Prefix of the exposure names.
    nplanets : int or None
        Number of planets (default 4 for "small", 6 otherwise).

    Returns
    -------
    SimDataset
        ``exposures`` (2 science then 9 psf, each sci/err/dq of shape
        (nint, npix, npix)), ``twin`` (planet-free science twins),
        ``offaxis_psf`` (npix, npix), ``truth`` and ``asn`` dictionaries.

    Raises
    ------
    ValueError
        Unknown ``size``, negative ``seed`` or ``nplanets``, or too many
        planets to place without overlap.

    Notes
    -----
    Geometry: ``ROLL_REF`` = phi is the position angle (east of north) of
    the detector +y axis; a planet at separation rho (pixels) and position
    angle theta is at ``x = xstar - rho sin(theta - phi)``,
    ``y = ystar + rho cos(theta - phi)``. The mask centre (nominal star
    position, 0-based) is ``(npix / 2, npix / 2)``, i.e. ``CRPIX = npix/2 + 1``.
    Star and planet images are computed per integration, with that
    integration's wavefront and pointing (planets move with the star);
    ``truth["planets"][k]["xy_roll"]`` uses each exposure's mean star position.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    seed = int(seed)
    if seed < 0:
        raise ValueError("seed must be non-negative")
    npix, nint = SIZES[size]
    if nplanets is None:
        nplanets = 4 if size == "small" else 6
    nplanets = int(nplanets)
    if nplanets < 0:
        raise ValueError("nplanets must be non-negative")

    def stream(tag):
        return np.random.default_rng([seed, tag])

    opt = _get_optics(npix)
    mc = opt.mask_center
    lod = _lod_pix(_WAVE_REF_UM, _D_TEL_M)
    rng_p = stream(_S_POINT)

    # ---- scene: fluxes, rolls, pointing ---------------------------------
    star_peak = float(np.exp(rng_p.uniform(*np.log(_STAR_PEAK_RANGE))))
    ref_ratio = float(rng_p.uniform(*_REF_FLUX_RATIO_RANGE))
    roll1 = float(np.round(rng_p.uniform(0.0, 360.0), 3))
    rolls = [roll1, float((roll1 + _ROLL_DELTA_DEG) % 360.0)]
    roll_ref = float(np.round(rng_p.uniform(0.0, 360.0), 3))

    def ta_offset():
        r = rng_p.uniform(*_TA_RANGE_PIX)
        a = rng_p.uniform(0.0, 2.0 * np.pi)
        return np.array([r * np.cos(a), r * np.sin(a)])

    sci_xy = []
    for _ in rolls:
        ta = ta_offset()
        sci_xy.append(mc + ta + rng_p.normal(0.0, _POINT_JITTER_PIX, (nint, 2)))
    ta_ref = ta_offset()
    ref_xy, dithers = [], []
    for dx, dy in _DITHER_ORDER:
        d = _DITHER_STEP_PIX * np.array([dx, dy], float)
        dithers.append(d)
        pos = mc + ta_ref + d + rng_p.normal(0.0, _DITHER_ERR_PIX, 2)
        ref_xy.append(pos + rng_p.normal(0.0, _POINT_JITTER_PIX, (nint, 2)))

    # ---- wavefronts -----------------------------------------------------
    rng_w = stream(_S_WAVE)
    static = _powerlaw_opd(rng_w, opt, 1, 2.5, _STATIC_WFE_NM)[0]
    pist = rng_w.normal(0.0, _SEGMENT_PISTON_NM, 18)
    static = static + np.where(opt.seg_index >= 0, pist[opt.seg_index], 0.0)
    static = _remove_ptt(opt, static[None])[0]
    ref_base = static + _powerlaw_opd(rng_w, opt, 1, 3.0, _REF_DELTA_WFE_NM)[0]
    sci_opd = _visit_opd(rng_w, opt, static, 2 * nint).reshape(2, nint, opt.npup, opt.npup)
    ref_opd = _visit_opd(rng_w, opt, ref_base, 9 * nint).reshape(9, nint, opt.npup, opt.npup)

    # ---- planets --------------------------------------------------------
    edge_room = min(mc, npix - 1 - mc)
    max_sep_lod = min(13.0, (edge_room - 3.0 * lod - _TA_RANGE_PIX[1] - 0.1) / lod)
    seps, pas = _place_planets(stream(_S_PLANET), nplanets, lod, max_sep_lod, rolls)
    contrasts = _contrasts(nplanets)

    # ---- optics: unocculted PSF and normalisation ----------------------
    unocc = _images(opt, static[None], np.zeros((1, 2)), coron=False)[0]
    norm = star_peak / unocc.max()
    offaxis = (unocc * norm).astype(np.float32)
    tot = sum(w * lw ** 2 for w, lw in zip(opt.weights, opt.lod_w))
    star_flux_total = float(norm * tot * np.sum(np.abs(opt.pupil * opt.lyot) ** 2) / opt.npup ** 2)

    # star, science: per integration
    sci_star = _images(opt, sci_opd.reshape(-1, opt.npup, opt.npup),
                       np.concatenate(sci_xy) - mc, coron=True).reshape(2, nint, npix, npix)
    ref_star = _images(opt, ref_opd.reshape(-1, opt.npup, opt.npup),
                       np.concatenate(ref_xy) - mc, coron=True).reshape(9, nint, npix, npix)

    # planets: per integration (same wavefront and pointing as the star);
    # throughput from the roll-1 mean pointing and mean wavefront
    planet_img = np.zeros((2, nint, npix, npix))
    planet_peak = np.zeros((2, nplanets))
    xy_roll = np.zeros((nplanets, 2, 2))
    throughput = np.zeros(nplanets)
    c = np.asarray(contrasts)
    for r, roll in enumerate(rolls):
        if not nplanets:
            break
        rel = np.array([_rotate_offset(seps[p] * lod, pas[p], roll) for p in range(nplanets)])
        xy_roll[:, r] = sci_xy[r].mean(axis=0) + rel
        offs = (sci_xy[r][:, None, :] + rel[None] - mc).reshape(-1, 2)
        opds = np.repeat(sci_opd[r], nplanets, axis=0)
        cor = _images(opt, opds, offs, coron=True).reshape(nint, nplanets, npix, npix)
        planet_img[r] = norm * np.einsum("p,ipyx->iyx", c, cor)
        planet_peak[r] = norm * c * cor.max(axis=(2, 3)).mean(axis=0)
    if nplanets:
        opds = np.repeat(sci_opd[0].mean(axis=0)[None], nplanets, axis=0)
        offs = xy_roll[:, 0] - mc
        cor = _images(opt, opds, offs, coron=True)
        unc = _images(opt, opds, offs, coron=False)
        throughput = cor.max(axis=(1, 2)) / unc.max(axis=(1, 2))

    # ---- detector ------------------------------------------------------
    rng_n, rng_b, rng_c = stream(_S_NOISE), stream(_S_BADPIX), stream(_S_CR)
    fixed = rng_b.random((npix, npix)) < _BADPIX_FRAC
    kinds = rng_b.integers(0, 4, (npix, npix))
    badmap = (fixed, kinds)

    exposures, twins, cr_truth, exp_truth = [], [], [], []
    t0 = 60400.0
    for r, roll in enumerate(rolls):
        name = f"{root}_sci_roll{r + 1}_calints.fits"
        model = norm * sci_star[r] + _BACKGROUND
        events = _cosmic_rays(rng_c, model.shape)
        pl = planet_img[r] if nplanets else None
        (s, e, q), twin, crs = _detector(model, pl, (rng_n, rng_b), badmap, events)
        hdr = _header("SIM-STAR", _SCI_COORD, roll, nint, False, f"{r + 1:03d}",
                      t0 + 0.05 * r, {"PATTTYPE": "NONE", "XOFFSET": 0.0, "YOFFSET": 0.0})
        wcs = _wcs(mc, _SCI_COORD, roll)
        exposures.append(SimExposure(name, "science", s, e, q, hdr, wcs, sci_xy[r].copy()))
        if twin is None:
            twin = (s.copy(), e.copy(), q.copy())
        twins.append(SimExposure(name.replace("_calints", "_noplanet_calints"), "science",
                                 *twin, dict(hdr, NOPLANET=True), dict(wcs), sci_xy[r].copy()))
        cr_truth += [{"exposure": name, "int": int(i), "x": int(x), "y": int(y),
                      "pixels": [[int(px), int(py)] for py, px in pix]} for i, x, y, pix in crs]
        exp_truth.append({"name": name, "exptype": "science", "roll": roll,
                          "star_xy": sci_xy[r].tolist(), "flux_ratio": 1.0})
    for k in range(9):
        name = f"{root}_ref_dither{k + 1}_calints.fits"
        model = norm * ref_ratio * ref_star[k] + _BACKGROUND
        events = _cosmic_rays(rng_c, model.shape)
        (s, e, q), _, crs = _detector(model, None, (rng_n, rng_b), badmap, events)
        extra = {"PATTTYPE": "9-POINT-GRID", "PATT_NUM": k + 1, "NUMDTHPT": 9,
                 "XOFFSET": float(dithers[k][0] * _PIXSCALE_ARCSEC),
                 "YOFFSET": float(dithers[k][1] * _PIXSCALE_ARCSEC)}
        hdr = _header("SIM-REF", _REF_COORD, roll_ref, nint, True, "003",
                      t0 + 0.2 + 0.02 * k, extra)
        exposures.append(SimExposure(name, "psf", s, e, q, hdr, _wcs(mc, _REF_COORD, roll_ref),
                                     ref_xy[k].copy()))
        cr_truth += [{"exposure": name, "int": int(i), "x": int(x), "y": int(y),
                      "pixels": [[int(px), int(py)] for py, px in pix]} for i, x, y, pix in crs]
        exp_truth.append({"name": name, "exptype": "psf", "roll": roll_ref,
                          "star_xy": ref_xy[k].tolist(), "flux_ratio": ref_ratio,
                          "dither_pix": dithers[k].tolist()})

    # ---- truth and association -----------------------------------------
    planets = []
    for p in range(nplanets):
        sep_pix = seps[p] * lod
        planets.append({
            "sep_pix": float(sep_pix), "sep_lod": float(seps[p]),
            "sep_arcsec": float(sep_pix * _PIXSCALE_ARCSEC), "pa_deg": float(pas[p]),
            "contrast": float(contrasts[p]), "flux_total": float(contrasts[p] * star_flux_total),
            "peak_offaxis": float(contrasts[p] * star_peak), "throughput": float(throughput[p]),
            "peak_roll": [float(v) for v in planet_peak[:, p]],
            "xy_north_up": [float(v) for v in _rotate_offset(sep_pix, pas[p], 0.0)],
            "xy_roll": xy_roll[p].tolist(),
        })
    truth = {
        "size": size, "seed": seed, "npix": int(npix), "nints": int(nint),
        "lambda_over_d_pix": float(lod), "pixel_scale_arcsec": _PIXSCALE_ARCSEC,
        "wavelength_um": _WAVE_REF_UM, "wavelengths_um": list(_WAVES_UM),
        "telescope_diameter_m": _D_TEL_M,
        "star_peak": star_peak, "star_flux_total": star_flux_total,
        "mask_center": [float(mc), float(mc)],
        "mask_sigma_pix": float(_MASK_SIGMA_LOD * lod),
        "mask_hwhm_lod": float(_MASK_SIGMA_LOD * np.sqrt(-2.0 * np.log(1.0 - np.sqrt(0.5)))),
        "rolls_deg": rolls, "ref_roll_deg": roll_ref, "ref_flux_ratio": ref_ratio,
        "read_noise": _READ_NOISE, "row_noise": _ROW_NOISE, "background": _BACKGROUND,
        "wfe_static_nm": float(_rms(opt, static)),
        "wfe_ref_delta_nm": float(_rms(opt, ref_base - static)),
        "exposures": exp_truth, "planets": planets, "unflagged_cosmic_rays": cr_truth,
    }
    members = [{"exptype": x.exptype, "expname": x.name} for x in exposures]
    asn = {"asn_rule": "CORON", "asn_type": "coron", "asn_id": "c1001", "target": "SIM-STAR",
           "program": "00000",
           "products": [{"prodtype": "coroncmb", "name": f"{root}_nircam_f444w",
                         "members": members}]}
    return SimDataset(exposures=exposures, twin=twins, offaxis_psf=offaxis, truth=truth, asn=asn)
