"""Simulated JWST coronagraphic data sets (NIRCam round mask and bar, MIRI 4QPM).

The simulation is pure numerics (numpy only): it returns arrays and plain
dictionaries, performs no I/O and prints nothing. What is observed, and how,
is an observing set-up (:class:`~coron_cli.sim_setups.Setup`): the
coronagraph, the science rolls, one to three reference stars with their
dither patterns and rolls, the integrations, the sky and the background
exposures. ``setup=None`` gives the ``classic`` set-up, the one coron's
simulator always made (a NIRCam round mask, two science rolls, one reference
star in a 9-point 0.2 px grid, several integrations, a uniform background).

Optics
------
A monochromatic-per-channel Fraunhofer model of a Lyot coronagraph, evaluated
at three wavelengths across the band (NIRCam F444W-like: 4.05, 4.40, 4.75 um;
MIRI F1140C-like: 10.87, 11.40, 11.93 um). The science star has equal weights
over them; each reference star's weights are tilted by a colour mismatch,
``(lambda / lambda_ref) ** -colour``.

1. entrance pupil: 18 hexagonal segments (1.32 m flat to flat, 7 mm gaps) with
   a missing central segment, a 0.74 m secondary obscuration and three struts;
2. static aberrations: a power-law phase screen (PSD ~ f^-2.5, ~30 nm RMS)
   plus segment pistons (~10 nm RMS); tip/tilt are removed from every map so
   that the star position is fully described by the pointing;
3. wavefront drift: each reference star's visits add their own low-order
   aberration (4 nm RMS in the classic set-up, 2-6 nm otherwise; a second
   visit of the same star adds 1 nm more), and every integration adds
   ~0.5 nm RMS plus a ~1 nm linear trend across its visit;
4. the focal-plane mask, centred on the nominal star position (the mask
   centre); source offsets are applied as pupil tilts before the mask:

   - ``nircam-round``: amplitude ``t(r) = 1 - exp(-r^2 / (2 sigma^2))``,
     sigma = 1.75 lambda_ref/D (intensity half-transmission radius
     ~2.7 lambda/D), applied semi-analytically (Soummer et al. 2007): the
     Lyot-plane field is the pupil field minus the inverse transform of the
     focal field times ``1 - t``, which only needs the focal field on a small
     grid around the mask;
   - ``nircam-bar``: the same profile across the bar (along y), with
     ``sigma(x) = sigma_star * (1 + 0.06 * x_arcsec)`` growing linearly
     along it; ``1 - t`` is compact across the bar only, so the focal grid is
     a strip as long as the detector field (plus margins) along the bar,
     sampled at 0.25 lambda/W across it and 0.5 lambda/W along it (W the
     pupil array's width; 1 - t varies slowly along the bar);
   - ``miri-4qpm``: a four-quadrant phase mask, phase ``phi = pi *
     11.4 um / lambda`` in two opposite quadrants. Its transmission is
     ``a + b sign(x) sign(y)`` with ``a = (1 + exp(i phi)) / 2`` and
     ``b = (1 - exp(i phi)) / 2``; multiplying the focal field by
     ``sign(x)`` is a Hilbert transform of the pupil field along x, so the
     Lyot-plane field is ``a E - b R E R^T`` with the discrete Hilbert
     kernel ``R[k, j] = 2 / (pi (k - j))`` for odd ``k - j`` (0 otherwise):
     the whole focal plane up to the pupil sampling's Nyquist angle, for
     four real matrix products per wavelength;
5. an undersized Lyot stop: NIRCam, outer radius 2.45 m, inner 1.15 m,
   0.40 m struts (50 % of the pupil area); MIRI, 2.90 m, 0.95 m and 0.25 m;
6. the detector image, point-sampled at 0.063 arcsec/pixel (NIRCam, about
   2.2 pixels per lambda/D at 4.4 um for D = 6.5 m) or 0.11 arcsec/pixel
   (MIRI, about 3.3 pixels per lambda/D at 11.4 um).

All Fourier transforms are matrix Fourier transforms (MFT).

Transmission map (``SimExposure.psfmask``, JWST ``PSFMASK``-like): the
intensity transmission for a point source at each pixel, 1 = unobstructed.
For the amplitude masks it is ``|t|^2`` at the pixel; for the 4QPM (whose
``|t| = 1``) it is the Lyot-stop throughput of a source at distance d from
one quadrant boundary, computed with the same optics, ``T1(d)``, taken as
``T1(x - xc) * T1(y - yc)``: a cross of low transmission through the star.
NIRCam set-ups may also see the edge of a neighbouring mask in the bottom
corners (near-zero transmission there).

Detector
--------
Counts (DN) per integration: model = star + planets + sky, the sky being
the set-up's level times its pattern on the detector (the transmission map
for the amplitude masks; for the 4QPM a narrow dip along the vertical
quadrant boundary and a glow along the horizontal one, as in real MIRI
background exposures), plus, in the science only, an optional planar
gradient; data = model + sqrt(model) * z1 + read * z2 +
row offsets (z are standard normal draws, shared with the planet-free twin),
minus the subtracted sky when the set-up says the sky was already removed.
ERR = sqrt(model + read^2). DO_NOT_USE pixels (a fixed bad-pixel map plus a
few per integration) hold garbage values, and cosmic rays are added, half of
them flagged. (The classic set-up keeps its uniform, unattenuated
background of 10 DN.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import core
from .sim_setups import SETUPS, RefStar, Setup, dither_offsets, draw_setup

__all__ = ["SIZES", "SETUPS", "Setup", "RefStar", "draw_setup", "SimExposure", "SimDataset",
           "simulate_dataset"]

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
_BAR_SLOPE_PER_ARCSEC = 0.06         # relative growth of the bar's sigma along it
_BAR_MIN_SIGMA = 0.3                 # floor of sigma(x) / sigma_star
_BAR_MARGIN_LOD = 4.0                # focal strip beyond the detector field
_BAR_STEP_X = 2                      # along the bar, 1 - t varies slowly: coarser sampling

_STATIC_WFE_NM = 30.0
_SEGMENT_PISTON_NM = 10.0
_REF_DELTA_WFE_NM = 4.0
_REF_WFE_RANGE_NM = (2.0, 6.0)
_REVISIT_WFE_NM = 1.0
_VISIT_TREND_WFE_NM = 1.0
_INT_JITTER_WFE_NM = 0.5

_TA_RANGE_PIX = (0.05, 0.30)
_POINT_JITTER_PIX = 0.007
_DITHER_ERR_PIX = 0.005              # classic set-up
_DITHER_ERR_MAS = 2.0                # other set-ups, per axis
_REF_ROLL_DELTA_DEG = 10.0           # between the two visits of a reference star

_STAR_PEAK_RANGE = (2.0e6, 6.0e6)
_REF_FLUX_RATIO_RANGE = (1.3, 3.0)
_REF_FLUX_LOGRANGE = (0.25, 4.0)
_READ_NOISE = 12.0
_ROW_NOISE = 3.0
_BACKGROUND = 10.0
_SKY_RANGE_READ = {"NIRCAM": (0.5, 2.0), "MIRI": (300.0, 2000.0)}
_SKY_RESIDUAL = {"science": (-0.01, 0.03), "psf": (-0.02, 0.15)}
_BKG_OFFSET_ARCSEC = ((6.0, 6.2), (-7.0, -6.0))
# MIRI 4QPM sky pattern, as in the real HD 106906 background exposures: a
# narrow dip along the vertical quadrant boundary (depth, sigma in pixels)
# and a glow along the horizontal one (amplitude, sigma in pixels)
_MIRI_SKY_DIP = (0.2, 1.6)
_MIRI_SKY_GLOW = (0.12, 2.0)

_BADPIX_FRAC = 0.003
_BADPIX_INT_FRAC = 3.0e-4
_CR_DENSITY = 2.5e-4

_DO_NOT_USE = 1
_JUMP_DET = 4
_DEAD = 1024
_HOT = 2048

_SCI_COORD = (150.0, -30.0)
_REF_COORD = (151.2, -29.4)
_T0_MJD = 60400.0

# random-stream tags (one independent generator per purpose); the first six
# are those of the classic set-up, the others serve the set-ups' new draws
(_S_POINT, _S_WAVE, _S_PLANET, _S_NOISE, _S_BADPIX, _S_CR,
 _S_REFS, _S_WAVE_REF, _S_SKY) = range(9)

# coronagraphs: optics and header keywords
_CORONAGRAPHS = {
    "nircam-round": {
        "instrument": "NIRCAM", "kind": "round", "pixscale": 0.063,
        "waves": _WAVES_UM, "wave_ref": _WAVE_REF_UM,
        "lyot": (_LYOT_ROUT_M, _LYOT_RIN_M, _LYOT_STRUT_WIDTH_M),
        "header": {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCALONG",
                   "MODULE": "A", "CHANNEL": "LONG", "FILTER": "F444W", "PUPIL": "MASKRND",
                   "CORONMSK": "MASKA335R", "EXP_TYPE": "NRC_CORON"},
        "subarray": "SUB320A335R"},
    "nircam-bar": {
        "instrument": "NIRCAM", "kind": "bar", "pixscale": 0.063,
        "waves": _WAVES_UM, "wave_ref": _WAVE_REF_UM,
        "lyot": (_LYOT_ROUT_M, _LYOT_RIN_M, _LYOT_STRUT_WIDTH_M),
        "header": {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCALONG",
                   "MODULE": "A", "CHANNEL": "LONG", "FILTER": "F444W", "PUPIL": "MASKBAR",
                   "CORONMSK": "MASKALWB", "EXP_TYPE": "NRC_CORON"},
        "subarray": "SUB320ALWB"},
    "miri-4qpm": {
        "instrument": "MIRI", "kind": "4qpm", "pixscale": 0.11,
        "waves": (10.87, 11.40, 11.93), "wave_ref": 11.40,
        "lyot": (2.90, 0.95, 0.25),
        "header": {"TELESCOP": "JWST", "INSTRUME": "MIRI", "DETECTOR": "MIRIMAGE",
                   "FILTER": "F1140C", "CORONMSK": "4QPM_1140", "EXP_TYPE": "MIR_4QPM"},
        "subarray": "MASK1140"},
}


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
        ``"science"``, ``"psf"`` or ``"background"``.
    sci : numpy.ndarray
        float32, shape (nint, ny, nx): counts (DN) per integration.
    err : numpy.ndarray
        float32, shape (nint, ny, nx): 1-sigma noise, ``sqrt(model + read^2)``
        (NaN where ``sci`` is NaN).
    dq : numpy.ndarray
        uint32, shape (nint, ny, nx): data quality; bit 1 = DO_NOT_USE.
    header : dict
        Primary-header keywords (TARGNAME, INSTRUME, FILTER, CORONMSK,
        ROLL_REF, NINTS, EXP_TYPE, IS_PSF, BUNIT, PATTTYPE, XOFFSET, ...).
    wcs : dict
        SCI-header celestial WCS keywords (CTYPE, CUNIT, CRPIX, CRVAL, CD).
    star_xy : numpy.ndarray
        float64, shape (nint, 2): true star position (x, y) per integration,
        0-based pixel coordinates (NaN for background exposures).
    psfmask : numpy.ndarray or None
        float32, shape (ny, nx): the coronagraph's transmission map on the
        exposure's pixel grid (intensity transmission of a point source at
        each pixel, 1 = unobstructed), as JWST's ``PSFMASK``.
    """

    name: str
    exptype: str
    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    header: dict
    wcs: dict
    star_xy: np.ndarray
    psfmask: np.ndarray | None = None


@dataclass
class SimDataset:
    """A simulated coronagraphic RDI data set.

    Attributes
    ----------
    exposures : list of SimExposure
        The science exposures (one per roll), then the reference (psf)
        exposures visit by visit, then the background exposures (science
        backgrounds first).
    twin : list of SimExposure
        Planet-free twins of the science exposures, with the same noise,
        bad pixels and cosmic rays.
    offaxis_psf : numpy.ndarray
        float32, shape (ny, nx): unocculted PSF of the science star (no focal
        mask, same Lyot stop), centred at the mask centre; peak = star peak.
    truth : dict
        JSON-serialisable ground truth.
    asn : dict
        JSON-serialisable association (science, psf and background members).
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
    """Cached, seed-independent optical model for one detector size and coronagraph."""

    npix: int
    npup: int
    kind: str                   # "round", "bar" or "4qpm"
    center: tuple               # (x, y) mask centre = nominal star position, 0-based pixels
    pixscale: float
    lod_ref: float              # lambda_ref / D in pixels
    sigma: float                # mask sigma at the star (pixels); NaN for the 4QPM
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
    gmask: np.ndarray           # round: (m, m); bar: (my, mx) 1 - t on the mask grid
    am: tuple                   # per wavelength (m, npup) forward MFT to the mask grid (y)
    bm: tuple                   # per wavelength (npup, m) inverse MFT from the mask grid (y)
    amx: tuple                  # bar: per wavelength forward MFT along x (else = am)
    bmx: tuple                  # bar: per wavelength inverse MFT along x (else = bm)
    fourq: tuple                # 4QPM: per wavelength (a, b); else ()
    hilbert: np.ndarray | None  # 4QPM: (npup, npup) discrete Hilbert kernel R
    ad: tuple                   # per wavelength (npix, npup) forward MFT to the detector rows (y)
    adx: tuple                  # per wavelength (npix, npup) forward MFT to the columns (x)
    edge: tuple                 # 4QPM: (d_pix, T1) one-boundary throughput profile; else ()


def _lod_pix(wave_um, diameter_m, pixscale=_PIXSCALE_ARCSEC):
    """lambda/D in detector pixels."""
    return wave_um * 1e-6 / diameter_m * _ARCSEC_PER_RAD / pixscale


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


def _pupil_masks(x, y, lyot_stop=(_LYOT_ROUT_M, _LYOT_RIN_M, _LYOT_STRUT_WIDTH_M)):
    """Boolean entrance-pupil and Lyot-stop masks at coordinates ``x, y`` (m).

    Parameters
    ----------
    x, y : numpy.ndarray
        Coordinates in metres, same shape.
    lyot_stop : tuple of float
        Outer radius, inner radius and strut width of the Lyot stop (m).

    Returns
    -------
    pupil, lyot : numpy.ndarray of bool
        Same shape as ``x``.
    """
    rout, rin, strut = lyot_stop
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
    lyot = (r <= rout) & (r >= rin)
    for ang in np.radians(_STRUT_ANGLES_DEG):
        along = x * np.cos(ang) + y * np.sin(ang)
        across = np.abs(-x * np.sin(ang) + y * np.cos(ang))
        pupil &= ~((along > 0) & (across < 0.5 * _STRUT_WIDTH_M))
        lyot &= ~((along > 0) & (across < 0.5 * strut))
    return pupil, lyot


def _npup(npix):
    return _PUPIL_SAMPLES.get(npix, max(96, int(np.ceil(0.6 * npix / 16.0)) * 16))


@lru_cache(maxsize=4)
def _pupil_arrays(npup, lyot_stop):
    """Pupil, Lyot stop, segment map and piston/tip/tilt projector (read-only)."""
    dx = _PUPIL_WIDTH_M / npup
    u = (np.arange(npup) - (npup - 1) / 2.0) / npup          # units of the width
    s = _SUPERSAMPLE
    sub = (np.arange(npup * s) - (npup * s - 1) / 2.0) * dx / s
    xs, ys = np.meshgrid(sub, sub)
    p, ly = _pupil_masks(xs, ys, lyot_stop)
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
    for a in (pupil, lyot, seg_index, weight, ptt_proj, basis, u):
        a.setflags(write=False)
    return u, pupil, lyot, seg_index, weight, ptt_proj, basis


def _hilbert_kernel(n):
    """Discrete Hilbert kernel: ``R[k, j] = 2 / (pi (k - j))`` for odd ``k - j``, else 0.

    Multiplying a band-limited focal field by ``sign(xi)`` is, on the pupil
    samples, ``E -> i E R^T`` along that axis (the focal plane integrated up
    to the sampling's Nyquist angle).
    """
    k = np.arange(n)
    d = k[:, None] - k[None, :]
    odd = (d % 2) != 0
    return np.where(odd, 2.0 / (np.pi * np.where(odd, d, 1)), 0.0)


def _bar_sigma(sigma_star, dx_pix, pixscale):
    """Bar sigma (pixels) at ``dx_pix`` pixels from the star along the bar."""
    rel = 1.0 + _BAR_SLOPE_PER_ARCSEC * np.asarray(dx_pix, float) * pixscale
    return sigma_star * np.maximum(rel, _BAR_MIN_SIGMA)


@lru_cache(maxsize=8)
def _get_optics(npix, coronagraph="nircam-round", shift_x=0):
    """Build (once per set of arguments) the pupil, Lyot stop, mask and MFT matrices.

    Parameters
    ----------
    npix : int
        Detector pixels per side.
    coronagraph : str
        A key of ``_CORONAGRAPHS``.
    shift_x : int
        Nominal star position minus the frame centre along x (pixels; the bar
        set-ups place the star off the frame centre along the bar).
    """
    spec = _CORONAGRAPHS[coronagraph]
    kind, scale, waves = spec["kind"], spec["pixscale"], spec["waves"]
    npup = _npup(npix)
    u, pupil, lyot, seg_index, weight, ptt_proj, basis = _pupil_arrays(npup, spec["lyot"])

    mask_center = npix / 2.0
    cx, cy = mask_center + shift_x, mask_center
    lod_ref = _lod_pix(spec["wave_ref"], _D_TEL_M, scale)
    sigma = _MASK_SIGMA_LOD * lod_ref
    step = _MASK_STEP_LOD * min(_lod_pix(w, _PUPIL_WIDTH_M, scale) for w in waves)
    lod_w = [_lod_pix(w, _PUPIL_WIDTH_M, scale) for w in waves]

    gmask = np.zeros((0, 0))
    am, bm, amx, bmx, fourq, hilbert = [], [], [], [], [], None
    if kind == "round":
        m = 2 * int(np.ceil(_MASK_HALF_EXTENT_SIGMA * sigma / step)) + 1
        xm = (np.arange(m) - (m - 1) / 2.0) * step
        gmask = np.exp(-(xm[:, None] ** 2 + xm[None, :] ** 2) / (2.0 * sigma ** 2))
        for lw in lod_w:
            am.append(np.exp(-2j * np.pi * np.outer(xm, u) / lw) / npup)
            bm.append(np.exp(2j * np.pi * np.outer(u, xm) / lw) * (step / lw))
        amx, bmx = am, bm
    elif kind == "bar":
        x0 = -(cx + _BAR_MARGIN_LOD * lod_ref)
        x1 = (npix - 1 - cx) + _BAR_MARGIN_LOD * lod_ref
        step_x = _BAR_STEP_X * step
        mx = int(np.ceil((x1 - x0) / step_x)) + 1
        xm = x0 + np.arange(mx) * step_x
        sig_x = _bar_sigma(sigma, xm, scale)
        my = 2 * int(np.ceil(_MASK_HALF_EXTENT_SIGMA * sig_x.max() / step)) + 1
        ym = (np.arange(my) - (my - 1) / 2.0) * step
        gmask = np.exp(-ym[:, None] ** 2 / (2.0 * sig_x[None, :] ** 2))
        for lw in lod_w:
            am.append(np.exp(-2j * np.pi * np.outer(ym, u) / lw) / npup)
            bm.append(np.exp(2j * np.pi * np.outer(u, ym) / lw) * (step / lw))
            amx.append(np.exp(-2j * np.pi * np.outer(xm, u) / lw) / npup)
            bmx.append(np.exp(2j * np.pi * np.outer(u, xm) / lw) * (step_x / lw))
    elif kind == "4qpm":
        hilbert = _hilbert_kernel(npup)
        for w in waves:
            phi = np.pi * spec["wave_ref"] / w
            fourq.append(((1.0 + np.exp(1j * phi)) / 2.0, (1.0 - np.exp(1j * phi)) / 2.0))
        sigma = float("nan")
    else:  # pragma: no cover - guarded by Setup.validate
        raise ValueError(f"unknown mask kind {kind!r}")

    ad, adx = [], []
    for lw in lod_w:
        ad.append(np.exp(-2j * np.pi * np.outer(np.arange(npix) - cy, u) / lw) / npup)
        if cx == cy:
            adx.append(ad[-1])
        else:
            adx.append(np.exp(-2j * np.pi * np.outer(np.arange(npix) - cx, u) / lw) / npup)

    arrays = [gmask, *am, *bm, *amx, *bmx, *ad, *adx] + ([hilbert] if hilbert is not None else [])
    for a in arrays:
        a.setflags(write=False)
    opt = _Optics(npix=npix, npup=npup, kind=kind, center=(float(cx), float(cy)),
                  pixscale=scale, lod_ref=float(lod_ref), sigma=float(sigma), pupil=pupil,
                  lyot=lyot, seg_index=seg_index, weight=weight, ptt_proj=ptt_proj,
                  ptt_basis=basis, u=u, lod_w=tuple(lod_w),
                  waves_nm=tuple(1e3 * w for w in waves), weights=_WAVE_WEIGHTS, gmask=gmask,
                  am=tuple(am), bm=tuple(bm), amx=tuple(amx), bmx=tuple(bmx),
                  fourq=tuple(fourq), hilbert=hilbert, ad=tuple(ad), adx=tuple(adx), edge=())
    if kind == "4qpm":
        d, t = _fourq_edge_profile(opt)
        d.setflags(write=False)
        t.setflags(write=False)
        object.__setattr__(opt, "edge", (d, t))
    return opt


def _apply_mask(opt, iw, e):
    """Lyot-plane field (before the stop) of pupil fields ``e`` (B, npup, npup) at channel ``iw``.

    Updates and returns ``e`` (a work array owned by the caller).
    """
    if opt.kind == "4qpm":
        a, b = opt.fourq[iw]
        r = opt.hilbert
        flipped = (r @ e.real @ r.T) + 1j * (r @ e.imag @ r.T)
        e *= a
        e -= b * flipped
        return e
    am, bm = opt.am[iw], opt.bm[iw]
    amx, bmx = opt.amx[iw], opt.bmx[iw]
    f = am @ e @ amx.T
    f *= opt.gmask
    e -= bm @ f @ bmx.T
    return e


def _images(opt, opd, offsets, coron, chunk=16, weights=None):
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
    weights : sequence of float, optional
        Weight of each wavelength (default: the science star's, equal).

    Returns
    -------
    numpy.ndarray
        float64, shape (B, npix, npix), un-normalised intensity.
    """
    w = opt.weights if weights is None else tuple(weights)
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
                e = _apply_mask(opt, iw, e)
            e *= opt.lyot
            d = opt.ad[iw] @ e @ opt.adx[iw].T
            out[s0:s1] += w[iw] * (d.real ** 2 + d.imag ** 2)
    return out


def _fourq_edge_profile(opt):
    """Lyot-stop throughput of a source at distance d from one 4QPM quadrant boundary.

    The boundary is ``x = 0`` with transmission ``a + b sign(x)`` (the other
    boundary far away); the throughput is the Lyot-stop flux with the mask
    over that without, averaged over the band with the science weights.

    Returns
    -------
    d_pix, t : numpy.ndarray
        Distances (pixels, increasing from 0) and throughputs.
    """
    lod = opt.lod_ref
    d = lod * np.concatenate([np.arange(0.0, 3.0, 0.1), np.arange(3.0, 15.01, 0.5)])
    r = opt.hilbert
    ly2 = opt.lyot ** 2
    t = np.zeros(d.size)
    for iw in range(len(opt.waves_nm)):
        a, b = opt.fourq[iw]
        k = 2.0 * np.pi * opt.u / opt.lod_w[iw]
        e = opt.pupil[None] * np.exp(1j * d[:, None, None] * k[None, None, :])
        flipped = (e.real @ r.T) + 1j * (e.imag @ r.T)       # sign(x) along x: i E R^T
        el = a * e + 1j * b * flipped
        ref = np.sum(ly2 * opt.pupil ** 2)
        t += opt.weights[iw] * np.sum(ly2 * (el.real ** 2 + el.imag ** 2), axis=(1, 2)) / ref
    # the sampled pupil gives ~1e-3 excursions above 1 far from the boundary
    return d, np.clip(t, 0.0, 1.0)


def _neighbour_map(npix):
    """Transmission of a neighbouring NIRCam mask's edge in the bottom corners (1 elsewhere)."""
    yy, xx = np.mgrid[:npix, :npix].astype(float)

    def edge(v, lo, hi):
        return 0.5 * (np.tanh((v - lo) / 1.0) - np.tanh((v - hi) / 1.0))

    left = edge(xx, -10.0, 0.09 * npix) * edge(yy, 0.05 * npix, 0.30 * npix)
    right = edge(xx, 0.84 * npix, npix + 10.0) * edge(yy, 0.05 * npix, 0.30 * npix)
    return np.clip(1.0 - left - right, 0.0, 1.0)


def _transmission_map(opt, neighbour=False):
    """The set-up's transmission map (float64, (npix, npix)), see the module notes."""
    n = opt.npix
    cx, cy = opt.center
    yy, xx = np.mgrid[:n, :n].astype(float)
    if opt.kind == "round":
        t = 1.0 - np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * opt.sigma ** 2))
        out = t ** 2
    elif opt.kind == "bar":
        s = _bar_sigma(opt.sigma, xx - cx, opt.pixscale)
        out = (1.0 - np.exp(-(yy - cy) ** 2 / (2.0 * s ** 2))) ** 2
    else:
        d, t = opt.edge
        out = (np.interp(np.abs(xx - cx), d, t) * np.interp(np.abs(yy - cy), d, t))
    if neighbour:
        out = out * _neighbour_map(n)
    return out


def _sky_pattern(opt, tmap, neighbour=None):
    """Relative sky level on the detector (1 = unattenuated), float64 (npix, npix).

    Amplitude masks attenuate the sky as a point source (the transmission
    map). Behind the MIRI 4QPM the real background exposures show instead a
    narrow, shallow dip along the vertical quadrant boundary and a glow
    along the horizontal one (``_MIRI_SKY_DIP``, ``_MIRI_SKY_GLOW``).
    """
    if opt.kind != "4qpm":
        return tmap
    n = opt.npix
    cx, cy = opt.center
    yy, xx = np.mgrid[:n, :n].astype(float)
    (dip, sx), (glow, sy) = _MIRI_SKY_DIP, _MIRI_SKY_GLOW
    out = ((1.0 - dip * np.exp(-(xx - cx) ** 2 / (2.0 * sx ** 2)))
           * (1.0 + glow * np.exp(-(yy - cy) ** 2 / (2.0 * sy ** 2))))
    return out if neighbour is None else out * neighbour


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
def _contrasts(n):
    if n <= 0:
        return []
    if n == 1:
        return [1e-3]
    return [float(f"{c:.3g}") for c in np.geomspace(1e-3, 1e-5, n)]


def _place_planets(rng, n, lod, max_sep_lod, rolls, accept=None):
    """Draw planet separations (lambda/D) and position angles (deg).

    The brightest planet is at 5-6 lambda/D; the others are spread over
    [4, max_sep_lod] with separation increasing as contrast decreases.
    Planets are at least 3 lambda/D apart (and, when possible, also from the
    other planets' positions in the other roll). ``accept``, when given, is
    called with the offsets (list per roll of (dx, dy) per planet) and may
    reject a layout (e.g. a planet behind a bar); it draws nothing.
    """
    if n == 0:
        return [], []
    edges = np.linspace(4.0, max_sep_lod, max(n, 2))
    golden = 137.50776
    min_d = 3.0 * lod
    for attempt in range(4000):
        cross = attempt < 2000 and len(rolls) > 1
        seps = [rng.uniform(5.0, 6.0)]
        seps += [rng.uniform(edges[k], edges[k + 1]) for k in range(n - 1)]
        base = rng.uniform(0.0, 360.0)
        jit = 0.4 * min(360.0 / n, golden) / 2.0
        pas = [(base + k * golden + rng.uniform(-jit, jit)) % 360.0 for k in range(n)]
        pos = [[core.sky_offsets(s * lod, p, r) for s, p in zip(seps, pas)] for r in rolls]
        ok = True
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                if np.hypot(*(pos[0][i] - pos[0][j])) < min_d:
                    ok = False
                if cross and np.hypot(*(pos[0][i] - pos[1][j])) < min_d:
                    ok = False
        if ok and accept is not None:
            ok = bool(accept(pos))
        if ok:
            return [float(s) for s in seps], [float(p) for p in pas]
    raise ValueError(f"cannot place {n} planets without overlap; use fewer planets")


def _cd_matrix(roll_deg, pixscale=_PIXSCALE_ARCSEC):
    scale = pixscale / 3600.0
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    return {"CD1_1": float(-scale * c), "CD1_2": float(scale * s),
            "CD2_1": float(scale * s), "CD2_2": float(scale * c)}


def _wcs(center, coord, roll_deg, pixscale=_PIXSCALE_ARCSEC):
    """SCI-header WCS; ``center`` is the (x, y) mask centre (0-based)."""
    w = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
         "CRPIX1": float(center[0] + 1.0), "CRPIX2": float(center[1] + 1.0),
         "CRVAL1": float(coord[0]), "CRVAL2": float(coord[1]), "RADESYS": "ICRS"}
    w.update(_cd_matrix(roll_deg, pixscale))
    return w


def _header(targname, coord, roll, nint, is_psf, observtn, expstart, extra, base=None,
            program="00000", pixscale=_PIXSCALE_ARCSEC, subarray="SIMULATED"):
    base = _CORONAGRAPHS["nircam-round"]["header"] if base is None else base
    h = dict(base)
    h.update({"IS_PSF": bool(is_psf), "TARGNAME": targname,
              "RA_TARG": float(coord[0]), "DEC_TARG": float(coord[1]), "ROLL_REF": float(roll),
              "NINTS": int(nint), "NGROUPS": 10, "BUNIT": "DN", "PROGRAM": program,
              "OBSERVTN": observtn, "EXPSTART": float(expstart), "PIXSCALE": pixscale,
              "SUBARRAY": subarray, "ORIGIN": "coron simulate"})
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


def _detector(model_star, model_planet, rngs, badmap, events, subtract=None):
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
    subtract : numpy.ndarray or None
        (ny, nx) or (nint, ny, nx): a level removed from the data after the
        noise (a sky already subtracted); ERR keeps its noise.

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
        if subtract is not None:
            sci = sci - subtract
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
def _resolve_setup(setup, seed):
    """The Setup for ``setup`` (None, a name of SETUPS, "random" or a Setup)."""
    if setup is None:
        return SETUPS["classic"]
    if isinstance(setup, Setup):
        return setup
    if isinstance(setup, str):
        if setup == "random":
            return draw_setup(seed)
        if setup in SETUPS:
            return SETUPS[setup]
        raise ValueError(f"unknown set-up {setup!r}; expected None, 'random', a Setup or one "
                         f"of {sorted(SETUPS)}")
    raise ValueError(f"setup must be None, a name or a Setup, not {type(setup).__name__}")


def _ta_offset(rng):
    """A target-acquisition error (pixels): uniform radius in _TA_RANGE_PIX, uniform angle."""
    r = rng.uniform(*_TA_RANGE_PIX)
    a = rng.uniform(0.0, 2.0 * np.pi)
    return np.array([r * np.cos(a), r * np.sin(a)])


def _colour_weights(opt, colour):
    """Wavelength weights of a star whose colour differs from the science star's by ``colour``."""
    if not colour:
        return None
    waves = np.asarray(opt.waves_nm)
    ref = waves[len(waves) // 2]
    w = np.asarray(opt.weights) * (waves / ref) ** (-float(colour))
    return tuple(float(v) for v in w / w.sum())


def _ref_name(root, j, nref, v, nrolls, k, npts):
    name = f"{root}_ref" + (str(j + 1) if nref > 1 else "")
    if nrolls > 1:
        name += f"_roll{v + 1}"
    if npts > 1:
        name += f"_dither{k + 1}"
    return name + "_calints.fits"


def simulate_dataset(size="small", *, seed=0, root="demo", nplanets=None, setup=None):
    """Simulate a JWST coronagraphic RDI data set.

    Science exposures (one per roll) of a star with planets, and reference
    stars observed in their own visits, all with per-visit
    target-acquisition errors, wavefront drifts, photon/read/row noise, bad
    pixels, cosmic rays and a sky; the observing set-up (coronagraph,
    rolls, reference stars and their dithers, integrations, backgrounds)
    is ``setup``.

    Parameters
    ----------
    size : {"small", "medium", "large"}
        Detector size and default integrations per exposure, see
        :data:`SIZES` (64 px x 3, 160 px x 5, 320 px x 10).
    seed : int
        Non-negative random seed; the result is deterministic for a seed.
    root : str
        Prefix of the exposure names.
    nplanets : int or None
        Number of planets (default 4 for "small", 6 otherwise).
    setup : None, str or Setup
        The observing set-up: None for the classic one (two science rolls, a
        9-point 0.2 px grid dither of one reference, NIRCam round mask; the
        arrays are exactly those this function always produced), a name of
        :data:`SETUPS`, ``"random"`` (:func:`draw_setup` of ``seed``), or a
        :class:`Setup`.

    Returns
    -------
    SimDataset
        ``exposures`` (science, then psf visit by visit, then background
        exposures; sci/err/dq of shape (nint, npix, npix), each with its
        transmission map ``psfmask``), ``twin`` (planet-free science twins),
        ``offaxis_psf`` (npix, npix), ``truth`` and ``asn`` dictionaries.

    Raises
    ------
    ValueError
        Unknown ``size`` or set-up, negative ``seed`` or ``nplanets``, or too
        many planets to place without overlap.

    Notes
    -----
    Geometry: ``ROLL_REF`` = phi is the position angle (east of north) of
    the detector +y axis; a planet at separation rho (pixels) and position
    angle theta is at ``x = xstar - rho sin(theta - phi)``,
    ``y = ystar + rho cos(theta - phi)``. The mask centre (nominal star
    position, 0-based) is ``truth["mask_center"]``, i.e. ``CRPIX - 1``:
    ``(npix / 2, npix / 2)``, except along x for the bar (the star sits off
    the frame centre along the bar). Star and planet images are computed per
    integration, with that integration's wavefront and pointing (planets
    move with the star); ``truth["planets"][k]["xy_roll"]`` uses each science
    exposure's mean star position.

    A reference exposure's star sits at the mask centre plus its visit's
    target-acquisition error (``truth["exposures"][i]["ta_pix"]``) plus the
    commanded dither displacement ``(XOFFSET - XOFFSET_origin) / pixscale``
    (``commanded_pix``; the MIRI patterns are written from an origin near
    0.2", ``xoffset_origin_arcsec``, that does not move the star) plus a
    small dither error and per-integration jitter.

    Sky: each exposure gets the set-up's level (drawn per visit, then per
    exposure) times the sky pattern (see the module notes); with ``background_subtracted``
    the science and reference exposures have it removed again up to a small
    per-visit residual, while background exposures keep it.
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
    setup = _resolve_setup(setup, seed)
    legacy = setup == SETUPS["classic"]
    if setup.nints is not None:
        nint = int(setup.nints)
    spec = _CORONAGRAPHS[setup.coronagraph]
    instrument = spec["instrument"]

    def stream(tag):
        return np.random.default_rng([seed, tag])

    opt = _get_optics(npix, setup.coronagraph, int(round(setup.bar_offset * npix)))
    cx, cy = opt.center
    mc = np.array([cx, cy])
    lod = opt.lod_ref
    pixscale = opt.pixscale
    tmap = _transmission_map(opt, setup.neighbour_mask)
    neighbour = _neighbour_map(npix) if setup.neighbour_mask else None
    skymap = _sky_pattern(opt, tmap, neighbour)
    rng_p = stream(_S_POINT)

    # ---- scene: fluxes, rolls, science pointing --------------------------
    star_peak = float(np.exp(rng_p.uniform(*np.log(_STAR_PEAK_RANGE))))
    if setup.star_peak is not None:   # drawn all the same: the other draws do not move
        star_peak = float(setup.star_peak)
    ratio_classic = float(rng_p.uniform(*_REF_FLUX_RATIO_RANGE))
    roll1 = float(np.round(rng_p.uniform(0.0, 360.0), 3))
    rolls = [roll1, float((roll1 + setup.roll_delta_deg) % 360.0)][:setup.science_rolls]
    nsci = len(rolls)
    roll_ref_classic = float(np.round(rng_p.uniform(0.0, 360.0), 3))

    sci_xy, sci_ta = [], []
    for _ in rolls:
        ta = _ta_offset(rng_p)
        sci_ta.append(ta)
        sci_xy.append(mc + ta + rng_p.normal(0.0, _POINT_JITTER_PIX, (nint, 2)))

    # ---- reference stars and their visits ---------------------------------
    # the classic set-up draws its one reference from the pointing stream (as
    # it always did); the others draw theirs from their own streams
    rng_r = rng_p if legacy else stream(_S_REFS)
    err_pix = _DITHER_ERR_PIX if legacy else _DITHER_ERR_MAS / 1000.0 / pixscale
    nref = len(setup.refs)
    stars, ref_visits = [], []
    for j, rs in enumerate(setup.refs):
        if legacy:
            ratio, colour, wfe = ratio_classic, 0.0, _REF_DELTA_WFE_NM
            targ, coord = "SIM-REF", _REF_COORD
        else:
            ratio = (float(rs.flux_ratio) if rs.flux_ratio is not None else
                     float(np.exp(stream(_S_REFS + 100 * (j + 1)).uniform(
                         *np.log(_REF_FLUX_LOGRANGE)))))
            colour = (float(rs.colour) if rs.colour is not None else
                      float(rng_r.uniform(-setup.colour_spread, setup.colour_spread)))
            wfe = (float(rs.wfe_nm) if rs.wfe_nm is not None else
                   float(rng_r.uniform(*_REF_WFE_RANGE_NM)))
            targ = f"SIM-REF{j + 1}"
            coord = (_REF_COORD[0] + 0.9 * j, _REF_COORD[1] - 0.6 * j)
        weights = _colour_weights(opt, colour)
        stars.append({"targname": targ, "coord": coord, "flux_ratio": ratio, "colour": colour,
                      "wfe_nm": wfe, "weights": weights, "dither": rs.dither,
                      "nrolls": rs.nrolls})
        pix, hdr_off = dither_offsets(rs.dither, instrument, pixscale)
        for v in range(rs.nrolls):
            if legacy:
                roll = roll_ref_classic
            elif v == 0:
                roll = float(np.round(rng_r.uniform(0.0, 360.0), 3))
            else:
                roll = float((ref_visits[-1]["roll"] + _REF_ROLL_DELTA_DEG) % 360.0)
            ta = _ta_offset(rng_r)
            xy = []
            for k in range(len(pix)):
                pos = mc + ta + pix[k]
                if len(pix) > 1:
                    pos = pos + rng_r.normal(0.0, err_pix, 2)
                xy.append(pos + rng_r.normal(0.0, _POINT_JITTER_PIX, (nint, 2)))
            ref_visits.append({"star": j, "visit": v, "roll": roll, "ta": ta, "pix": pix,
                               "hdr": hdr_off, "xy": xy})

    # ---- wavefronts -----------------------------------------------------
    rng_w = stream(_S_WAVE)
    static = _powerlaw_opd(rng_w, opt, 1, 2.5, _STATIC_WFE_NM)[0]
    pist = rng_w.normal(0.0, _SEGMENT_PISTON_NM, 18)
    static = static + np.where(opt.seg_index >= 0, pist[opt.seg_index], 0.0)
    static = _remove_ptt(opt, static[None])[0]
    if legacy:
        deltas = [_powerlaw_opd(rng_w, opt, 1, 3.0, _REF_DELTA_WFE_NM)[0]]
    sci_opd = _visit_opd(rng_w, opt, static, nsci * nint).reshape(nsci, nint, opt.npup, opt.npup)
    if legacy:
        vis = ref_visits[0]
        vis["opd"] = _visit_opd(rng_w, opt, static + deltas[0], len(vis["pix"]) * nint)
    else:
        rng_wr = stream(_S_WAVE_REF)
        deltas = [_powerlaw_opd(rng_wr, opt, 1, 3.0, s["wfe_nm"])[0] for s in stars]
        for vis in ref_visits:
            base = static + deltas[vis["star"]]
            if vis["visit"] > 0:
                base = base + _powerlaw_opd(rng_wr, opt, 1, 3.0, _REVISIT_WFE_NM)[0]
            vis["opd"] = _visit_opd(rng_wr, opt, base, len(vis["pix"]) * nint)

    # ---- planets --------------------------------------------------------
    edge_room = min(cx, npix - 1 - cx, cy, npix - 1 - cy)
    max_sep_lod = min(13.0, (edge_room - 3.0 * lod - _TA_RANGE_PIX[1] - 0.1) / lod)

    def visible(pos):
        for per_roll in pos:
            for off in per_roll:
                ix, iy = (int(round(v)) for v in mc + off)
                if not (0 <= ix < npix and 0 <= iy < npix) or tmap[iy, ix] < 0.5:
                    return False
        return True

    seps, pas = _place_planets(stream(_S_PLANET), nplanets, lod, max_sep_lod, rolls,
                               accept=None if legacy else visible)
    contrasts = _contrasts(nplanets)

    # ---- optics: unocculted PSF and normalisation ----------------------
    unocc = _images(opt, static[None], np.zeros((1, 2)), coron=False)[0]
    norm = star_peak / unocc.max()
    offaxis = (unocc * norm).astype(np.float32)
    tot = sum(w * lw ** 2 for w, lw in zip(opt.weights, opt.lod_w))
    star_flux_total = float(norm * tot * np.sum(np.abs(opt.pupil * opt.lyot) ** 2) / opt.npup ** 2)

    # star, science: per integration
    sci_star = _images(opt, sci_opd.reshape(-1, opt.npup, opt.npup),
                       np.concatenate(sci_xy) - mc, coron=True).reshape(nsci, nint, npix, npix)
    for vis in ref_visits:
        s = stars[vis["star"]]
        npt = len(vis["pix"])
        img = _images(opt, vis["opd"], np.concatenate(vis["xy"]) - mc, coron=True,
                      weights=s["weights"])
        vis["img"] = img.reshape(npt, nint, npix, npix)
        scale = norm * s["flux_ratio"]
        if s["weights"] is not None:
            scale = scale * tot / sum(w * lw ** 2 for w, lw in zip(s["weights"], opt.lod_w))
        vis["scale"] = scale

    # planets: per integration (same wavefront and pointing as the star);
    # throughput from the roll-1 mean pointing and mean wavefront
    planet_img = np.zeros((nsci, nint, npix, npix))
    planet_peak = np.zeros((nsci, nplanets))
    xy_roll = np.zeros((nplanets, nsci, 2))
    throughput = np.zeros(nplanets)
    c = np.asarray(contrasts)
    for r, roll in enumerate(rolls):
        if not nplanets:
            break
        rel = np.array([core.sky_offsets(seps[p] * lod, pas[p], roll)
                        for p in range(nplanets)])
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
    if neighbour is not None:
        sci_star = sci_star * neighbour
        planet_img = planet_img * neighbour
        for vis in ref_visits:
            vis["img"] = vis["img"] * neighbour

    # ---- sky ------------------------------------------------------------
    rng_s = stream(_S_SKY)
    if legacy:
        sky0, gradient = _BACKGROUND, 0.0
    else:
        lo, hi = _SKY_RANGE_READ[instrument]
        sky0 = (float(setup.sky) if setup.sky is not None else
                float(_READ_NOISE * np.exp(rng_s.uniform(np.log(lo), np.log(hi)))))
        theta = rng_s.uniform(0.0, 2.0 * np.pi)
        yy, xx = np.mgrid[:npix, :npix].astype(float)
        proj = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        gradient = setup.sky_gradient * proj / (proj.max() - proj.min())

    def visit_sky():
        if legacy:
            return _BACKGROUND
        return sky0 * (1.0 + rng_s.normal(0.0, setup.sky_variation))

    def exposure_sky(level):
        if legacy:
            return level
        return float(level * (1.0 + rng_s.normal(0.0, setup.sky_variation / 5.0)))

    def residual(kind):
        if legacy or not setup.background_subtracted:
            return None
        return float(rng_s.uniform(*_SKY_RESIDUAL[kind]))

    def sky_model(level):
        return level if legacy else level * skymap

    # ---- detector ------------------------------------------------------
    rng_n, rng_b, rng_c = stream(_S_NOISE), stream(_S_BADPIX), stream(_S_CR)
    fixed = rng_b.random((npix, npix)) < _BADPIX_FRAC
    kinds = rng_b.integers(0, 4, (npix, npix))
    badmap = (fixed, kinds)

    base_hdr = spec["header"]
    subarray = "SIMULATED" if legacy else spec["subarray"]
    sci_prog = "00000"
    ref_prog = "00001" if setup.separate_ref_program else sci_prog
    bkdsub = ({"S_BKDSUB": "COMPLETE"} if setup.background_subtracted and setup.bkdsub_keyword
              else {})
    psfmask32 = tmap.astype(np.float32)
    exposures, twins, cr_truth, exp_truth = [], [], [], []
    clock = [_T0_MJD]
    obs_counter = [0]

    def next_obs():
        obs_counter[0] += 1
        return f"{obs_counter[0]:03d}"

    def tick(new_visit):
        clock[0] += 0.04 if new_visit else 0.02
        return clock[0]

    def add_cr_truth(name, crs):
        cr_truth.extend({"exposure": name, "int": int(i), "x": int(x), "y": int(y),
                         "pixels": [[int(px), int(py)] for py, px in pix]}
                        for i, x, y, pix in crs)

    def std_extra(extra, bkgd=False, exposure=1):
        if legacy:
            return extra
        out = dict(extra)
        out.setdefault("PATT_NUM", 1)
        out.setdefault("NUMDTHPT", 1)
        out.update({"BKGDTARG": bool(bkgd), "VISIT": "001", "EXPOSURE": str(exposure)})
        if not bkgd:
            out.update(bkdsub)
        return out

    for r, roll in enumerate(rolls):
        name = f"{root}_sci_roll{r + 1}_calints.fits"
        level = exposure_sky(visit_sky())
        resid = residual("science")
        model = norm * sci_star[r] + sky_model(level)
        if not legacy:
            model = model + gradient
        sub = None if resid is None else sky_model(level) * (1.0 - resid)
        events = _cosmic_rays(rng_c, model.shape)
        pl = planet_img[r] if nplanets else None
        (s, e, q), twin, crs = _detector(model, pl, (rng_n, rng_b), badmap, events, sub)
        observtn = next_obs()
        t = _T0_MJD + 0.05 * r if legacy else tick(True)
        hdr = _header("SIM-STAR", _SCI_COORD, roll, nint, False, observtn, t,
                      std_extra({"PATTTYPE": "NONE", "XOFFSET": 0.0, "YOFFSET": 0.0}),
                      base_hdr, sci_prog, pixscale, subarray)
        wcs = _wcs(mc, _SCI_COORD, roll, pixscale)
        exposures.append(SimExposure(name, "science", s, e, q, hdr, wcs, sci_xy[r].copy(),
                                     psfmask32.copy()))
        if twin is None:
            twin = (s.copy(), e.copy(), q.copy())
        twins.append(SimExposure(name.replace("_calints", "_noplanet_calints"), "science",
                                 *twin, dict(hdr, NOPLANET=True), dict(wcs), sci_xy[r].copy(),
                                 psfmask32.copy()))
        add_cr_truth(name, crs)
        exp_truth.append({"name": name, "exptype": "science", "roll": roll,
                          "star_xy": sci_xy[r].tolist(), "flux_ratio": 1.0,
                          "visit": observtn, "ta_pix": sci_ta[r].tolist(),
                          "sky": float(level), "sky_subtracted": 0.0 if sub is None else
                          float(level * (1.0 - resid))})

    ref_sky = []
    for vis in ref_visits:
        j, v = vis["star"], vis["visit"]
        st = stars[j]
        npt = len(vis["pix"])
        observtn = next_obs()
        vlevel = visit_sky()
        ref_sky.append(vlevel)
        resid = residual("psf")
        for k in range(npt):
            name = _ref_name(root, j, nref, v, st["nrolls"], k, npt)
            level = exposure_sky(vlevel)
            model = vis["scale"] * vis["img"][k] + sky_model(level)
            sub = None if resid is None else sky_model(level) * (1.0 - resid)
            events = _cosmic_rays(rng_c, model.shape)
            (s, e, q), _, crs = _detector(model, None, (rng_n, rng_b), badmap, events, sub)
            if legacy:
                extra = {"PATTTYPE": st["dither"], "PATT_NUM": k + 1, "NUMDTHPT": npt,
                         "XOFFSET": float(vis["hdr"][k][0]), "YOFFSET": float(vis["hdr"][k][1])}
                t = _T0_MJD + 0.2 + 0.02 * k
            else:
                extra = std_extra({"PATTTYPE": st["dither"], "PATT_NUM": k + 1,
                                   "NUMDTHPT": npt, "XOFFSET": float(vis["hdr"][k][0]),
                                   "YOFFSET": float(vis["hdr"][k][1])}, exposure=k + 1)
                t = tick(k == 0)
            hdr = _header(st["targname"], st["coord"], vis["roll"], nint, True, observtn, t,
                          extra, base_hdr, ref_prog, pixscale, subarray)
            wcs = _wcs(mc, st["coord"], vis["roll"], pixscale)
            xy = vis["xy"][k]
            exposures.append(SimExposure(name, "psf", s, e, q, hdr, wcs, xy.copy(),
                                         psfmask32.copy()))
            add_cr_truth(name, crs)
            origin = vis["hdr"][0] - vis["pix"][0] * pixscale
            exp_truth.append({"name": name, "exptype": "psf", "roll": vis["roll"],
                              "star_xy": xy.tolist(), "flux_ratio": st["flux_ratio"],
                              "dither_pix": vis["pix"][k].tolist(),
                              "ref_star": j + 1, "visit": observtn, "ta_pix": vis["ta"].tolist(),
                              "commanded_pix": vis["pix"][k].tolist(),
                              "xoffset_origin_arcsec": [float(v) for v in origin],
                              "sky": float(level), "sky_subtracted": 0.0 if sub is None else
                              float(level * (1.0 - resid))})

    # ---- background exposures ------------------------------------------
    bkg_plan = []
    if setup.sci_backgrounds:
        bkg_plan.append(("sci", setup.sci_backgrounds, "SIM-STAR background", _SCI_COORD,
                         sci_prog, rolls[0], None))
    if setup.ref_backgrounds:
        first = ref_visits[0]
        bkg_plan.append(("ref", setup.ref_backgrounds, f"{stars[0]['targname']} background",
                         stars[0]["coord"], ref_prog, first["roll"], ref_sky[0]))
    for tag, count, targ, coord, prog, roll, near in bkg_plan:
        observtn = next_obs()
        vlevel = visit_sky() if near is None else exposure_sky(near)
        for k in range(count):
            name = f"{root}_bkg_{tag}{k + 1}_calints.fits"
            level = exposure_sky(vlevel)
            model = np.broadcast_to(sky_model(level), (nint, npix, npix)).astype(float)
            events = _cosmic_rays(rng_c, model.shape)
            (s, e, q), _, crs = _detector(model, None, (rng_n, rng_b), badmap, events)
            dx, dy = _BKG_OFFSET_ARCSEC[k % 2]
            bcoord = (coord[0] + dx / 3600.0 / np.cos(np.radians(coord[1])),
                      coord[1] + dy / 3600.0)
            extra = std_extra({"PATTTYPE": "BACKGROUND", "PATT_NUM": k + 1, "NUMDTHPT": count,
                               "XOFFSET": float(dx), "YOFFSET": float(dy)}, bkgd=True,
                              exposure=k + 1)
            hdr = _header(targ, bcoord, roll, nint, False, observtn, tick(k == 0), extra,
                          base_hdr, prog, pixscale, subarray)
            exposures.append(SimExposure(name, "background", s, e, q, hdr,
                                         _wcs(mc, bcoord, roll, pixscale),
                                         np.full((nint, 2), np.nan), psfmask32.copy()))
            add_cr_truth(name, crs)
            exp_truth.append({"name": name, "exptype": "background", "roll": roll,
                              "star_xy": None, "flux_ratio": None, "visit": observtn,
                              "background_for": "science" if tag == "sci" else "psf",
                              "sky": float(level), "sky_subtracted": 0.0})

    # ---- truth and association -----------------------------------------
    planets = []
    for p in range(nplanets):
        sep_pix = seps[p] * lod
        planets.append({
            "sep_pix": float(sep_pix), "sep_lod": float(seps[p]),
            "sep_arcsec": float(sep_pix * pixscale), "pa_deg": float(pas[p]),
            "contrast": float(contrasts[p]), "flux_total": float(contrasts[p] * star_flux_total),
            "peak_offaxis": float(contrasts[p] * star_peak), "throughput": float(throughput[p]),
            "peak_roll": [float(v) for v in planet_peak[:, p]],
            "xy_north_up": [float(v) for v in core.sky_offsets(sep_pix, pas[p], 0.0)],
            "xy_roll": xy_roll[p].tolist(),
        })
    round_like = opt.kind in ("round", "bar")
    hwhm = _MASK_SIGMA_LOD * np.sqrt(-2.0 * np.log(1.0 - np.sqrt(0.5)))
    truth = {
        "size": size, "seed": seed, "npix": int(npix), "nints": int(nint),
        "lambda_over_d_pix": float(lod), "pixel_scale_arcsec": pixscale,
        "wavelength_um": spec["wave_ref"], "wavelengths_um": list(spec["waves"]),
        "telescope_diameter_m": _D_TEL_M,
        "star_peak": star_peak, "star_flux_total": star_flux_total,
        "mask_center": [float(cx), float(cy)],
        "mask_sigma_pix": float(opt.sigma) if round_like else None,
        "mask_hwhm_lod": float(hwhm) if round_like else None,
        "rolls_deg": rolls, "ref_roll_deg": ref_visits[0]["roll"],
        "ref_flux_ratio": stars[0]["flux_ratio"],
        "read_noise": _READ_NOISE, "row_noise": _ROW_NOISE, "background": float(sky0),
        "wfe_static_nm": float(_rms(opt, static)),
        "wfe_ref_delta_nm": float(_rms(opt, (static + deltas[0]) - static)),
        "exposures": exp_truth, "planets": planets, "unflagged_cosmic_rays": cr_truth,
        "setup": setup.to_dict(), "instrument": instrument,
        "coronagraph": setup.coronagraph, "filter": base_hdr["FILTER"],
        "star_weights": list(opt.weights),
        "refs": [{"targname": s["targname"], "flux_ratio": s["flux_ratio"],
                  "colour": s["colour"],
                  "weights": list(s["weights"] if s["weights"] is not None else opt.weights),
                  "wfe_delta_nm": float(_rms(opt, d)), "dither": s["dither"],
                  "nrolls": s["nrolls"]} for s, d in zip(stars, deltas)],
        "sky_level": float(sky0), "sky_gradient_pp": float(0.0 if legacy else
                                                          setup.sky_gradient),
        "background_subtracted": bool(setup.background_subtracted),
    }
    if opt.kind == "bar":
        truth["bar"] = {"sigma_star_pix": float(opt.sigma),
                        "slope_per_arcsec": _BAR_SLOPE_PER_ARCSEC,
                        "frame_center_x": float(npix / 2.0)}
    members = [{"exptype": x.exptype, "expname": x.name} for x in exposures]
    prodname = f"{root}_{instrument.lower()}_{base_hdr['FILTER'].lower()}"
    asn = {"asn_rule": "CORON", "asn_type": "coron", "asn_id": "c1001", "target": "SIM-STAR",
           "program": sci_prog,
           "products": [{"prodtype": "coroncmb", "name": prodname, "members": members}]}
    return SimDataset(exposures=exposures, twin=twins, offaxis_psf=offaxis, truth=truth, asn=asn)
