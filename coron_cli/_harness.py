"""Shared machinery of ``make panel`` and ``make realcheck``: runs, fake companions, measures.

One implementation of everything the two measuring tools have in common:

- running the pipeline quietly with a set of options, and classical RDI from a
  run's aligned references (:func:`run_pipeline`, :func:`classical_rdi_i2d`);
- classic KLIP written plainly in float64 (:func:`classic_klip`), the yardstick of
  ``benchmarks/bench.py`` and of the tests of :func:`coron_cli.core.klip_subtract`;
- the geometry of an exposure (star, roll, pixel scale, wavelength, transmission
  map) and sky-to-detector offsets (:func:`exposure_geometry`, :func:`sky_offsets`);
- fake companions for real data: a pixel-integrated Airy model of a 6.5 m
  telescope (:func:`airy_image`), their placement away from disks, known
  companions, edges and the coronagraph's low-transmission regions
  (:func:`place_fakes`), and a copy of a real data set with them injected into the
  science exposures (:func:`prepare_real_set`);
- the measures: the aperture t-test SNR of Mawet et al. 2014 at known positions
  (:func:`companion_snr`), robust annular noise (:func:`local_noise`), and the
  registration error against a simulation's truth (:func:`registration_error`).

Nothing here tunes anything; inputs (the real data, the products) are only read.
"""

import contextlib
import json
import logging
import os
import time
import warnings

import numpy as np

from . import core

__all__ = [
    "DIAMETER_M",
    "REAL_SETS",
    "FAKE_PEAK_SIGMA",
    "FAKE_BASE_PA",
    "quiet",
    "read_members",
    "reference_count",
    "find_product",
    "run_pipeline",
    "classical_rdi_i2d",
    "classic_klip",
    "filter_wavelength_um",
    "lambda_over_d_pix",
    "exposure_geometry",
    "psfmask_path",
    "read_transmission",
    "sky_offsets",
    "position_angle",
    "airy_image",
    "inject_fakes",
    "sector_mask",
    "near_mask",
    "local_noise",
    "robust_std",
    "wedge_points",
    "place_fakes",
    "find_real_sets",
    "prepare_real_set",
    "companion_snr",
    "registration_error",
    "shift_stats",
    "to_json",
]

#: Telescope diameter of the injected diffraction model (m).
DIAMETER_M = 6.5

#: Peak of an injected fake in the combined image, in units of the local residual noise.
FAKE_PEAK_SIGMA = 6.0

#: Position angle (deg) from which the fakes are placed (:func:`place_fakes`).
FAKE_BASE_PA = 20.0

#: What is known of the real data sets (README of the data folder), by folder name.
#: ``disk_pa``: position angles (deg east of north) of an edge-on disk's two sides;
#: ``known``: companions that are really there (name, separation arcsec, PA deg).
REAL_SETS = {
    "aumic-f356w": {"disk_pa": (128.5, 308.5), "known": ()},
    "hd106906-miri": {"disk_pa": (), "known": (("HD 106906 b", 7.1, 307.0),)},
}

# fakes: separations (lambda/D), placement rules
_FAKE_SEPS_LOD = (3.5, 4.5, 5.7, 7.2, 9.1, 11.5, 14.5, 18.3, 22.0, 25.0)
_FAKE_DISK_CLEARANCE_DEG = 25.0    # fakes keep this far (PA) from a disk's sides
_NOISE_WEDGE_DEG = 15.0            # disk wedge left out of noise and reference apertures
_FAKE_MIN_DIST_LOD = 4.0           # fakes keep this far from each other and known sources
_FAKE_EDGE_LOD = 3.0               # and from the frame edges
_FAKE_MIN_REL_T = 0.85             # transmission >= this x 90th percentile of its ring
_GOLDEN_DEG = 137.50776

log = logging.getLogger("coron")


# ---------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def quiet():
    """Within: coron's log only shows errors and warnings are ignored (the tables are the
    output); both are restored on the way out."""
    logger = logging.getLogger("coron")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_members(asn_path):
    """Every member of an association's first product, backgrounds included.

    Returns
    -------
    dict
        'asn' (the parsed JSON), 'asn_id', 'name' (product name), 'members': list of
        (exptype lower-case, absolute path, expname as written).
    """
    with open(asn_path) as fh:
        data = json.load(fh)
    folder = os.path.dirname(os.path.abspath(asn_path))
    prod = data["products"][0]
    members = []
    for m in prod["members"]:
        name = m["expname"]
        path = name if os.path.isabs(name) else os.path.join(folder, name)
        members.append((str(m.get("exptype", "")).lower(), path, name))
    return {"asn": data, "asn_id": data.get("asn_id"), "name": prod["name"],
            "members": members}


def reference_count(asn_path):
    """Number of reference slices (integrations of all psf members) of an association."""
    from astropy.io import fits

    n = 0
    for kind, path, _ in read_members(asn_path)["members"]:
        if kind != "psf":
            continue
        with fits.open(path) as h:
            hdu = h["SCI"] if "SCI" in h else h[0]
            shape = hdu.shape
        n += shape[0] if len(shape) == 3 else 1
    return n


def find_product(folder, suffix, contains=""):
    """Path of the first (sorted) file in `folder` ending in `suffix`; FileNotFoundError."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(suffix) and contains in name:
            return os.path.join(folder, name)
    raise FileNotFoundError(f"no *{suffix} in {folder}")


def run_pipeline(asn_path, outdir, options):
    """``run_association`` of an association into a fresh folder.

    `options` are the flat option names of ``coron3 run``
    (:meth:`coron_cli.steps.PipelineConfig.from_options`), plus ``mask`` and
    ``offaxis_psf`` (arrays).

    Returns
    -------
    dict
        'seconds' (wall time), 'i2d' (path), 'outdir', 'summary' (what
        run_association returned).
    """
    from .pipeline import run_association
    from .steps import PipelineConfig

    options = dict(options)
    data = {k: options.pop(k) for k in ("mask", "offaxis_psf") if k in options}
    config = PipelineConfig.from_options(**options)
    os.makedirs(outdir, exist_ok=True)
    t0 = time.perf_counter()
    summary = run_association(asn_path, outdir, config, **data)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "i2d": find_product(outdir, "_i2d.fits"), "outdir": outdir,
            "summary": summary}


def classical_rdi_i2d(asn_path, run_dir):
    """Classical RDI of an association, from a run's aligned references.

    The scaled mean of the aligned references (the run's ``_psfalign``
    products) is subtracted from every science exposure
    (:func:`coron_cli.evaluate.classical_rdi`) and the exposures are combined
    north-up (:func:`coron_cli.steps.combine_step`). Where the run subtracted
    background exposures from the science (BKGSUB in the psfalign header),
    the science is taken the same way (:func:`coron_cli.steps.background_step`).

    Returns
    -------
    Product
        The combined image (i2d-like).
    """
    from . import steps
    from .asn import read_asn
    from .evaluate import classical_rdi
    from .products import exposure_root, read_product

    asn = read_asn(asn_path)
    prod = asn.products[0]
    subs, bkg_sci = [], None
    for sci_path in prod.science:
        root = exposure_root(sci_path) + (f"_{asn.asn_id}" if asn.asn_id else "")
        ali = read_product(os.path.join(run_dir, f"{root}_psfalign.fits"), ndims=(3, 4))
        sci = read_product(sci_path)
        if ali.primary.get("BKGSUB") and getattr(prod, "background", None):
            if bkg_sci is None:
                bkg_sci = steps.match_backgrounds(
                    [read_product(p) for p in prod.background],
                    [read_product(p) for p in prod.science],
                    [read_product(p) for p in prod.psf])[0]
            sci, _ = steps.background_step(sci, bkg_sci, steps.BackgroundConfig(
                mode=str(ali.primary.get("BKGMODE", "auto"))))
        subs.append(classical_rdi(sci, ali))
        del ali
    return steps.combine_step(subs)


def classic_klip(science, references, truncations, *, fit_mask=None):
    """Classic KLIP (Soummer, Pueyo & Larkin 2012) written plainly in float64.

    The reference implementation that coron's :func:`coron_cli.core.klip_subtract`
    is measured against (``benchmarks/bench.py``, ``tests/core/test_klip.py``),
    JWST-style: per integration, centre the references and the target (on
    their means over the fit pixels), eigendecompose ``R R^T`` (over the fit
    pixels), build the KL basis ``Z = V^T R / sqrt(lam)`` explicitly, then for
    every truncation K project the target's fit pixels on ``Z[:K]`` and
    subtract the projection from every pixel (Python loops over integrations
    and truncations). Modes whose eigenvalue is within round-off of zero are
    dropped, so a truncation beyond them keeps all the others.

    Parameters
    ----------
    science : ndarray of shape (nint, ny, nx)
    references : ndarray of shape (nint, nref, ny, nx)
    truncations : sequence of int
    fit_mask : ndarray of shape (ny, nx) of bool, optional
        Pixels the centring, the basis and the projection use (default: all).

    Returns
    -------
    ndarray of shape (ntrunc, nint, ny * nx), float64
        The residuals.
    """
    nint, nref, ny, nx = references.shape
    out = np.empty((len(truncations), nint, ny * nx))
    eps = np.finfo(np.float64).eps
    f = None if fit_mask is None else np.asarray(fit_mask, dtype=bool).ravel()
    for i in range(nint):
        R = references[i].reshape(nref, -1).astype(np.float64)
        t = science[i].reshape(-1).astype(np.float64)
        if f is None:
            R -= R.mean(axis=1, keepdims=True)
            t -= t.mean()
            Rf, tf = R, t
        else:
            R -= R[:, f].mean(axis=1, keepdims=True)
            t -= t[f].mean()
            Rf, tf = R[:, f], t[f]
        C = Rf @ Rf.T
        lam, V = np.linalg.eigh(C)
        lam, V = lam[::-1], V[:, ::-1]
        good = lam > max(lam[0], np.finfo(float).tiny) * nref * eps * 10
        lam, V = lam[good], V[:, good]
        Z = (V.T @ R) / np.sqrt(lam)[:, None]
        Zf = Z if f is None else Z[:, f]
        for k, K in enumerate(truncations):
            n = min(K, Z.shape[0])
            out[k, i] = t - (Zf[:n] @ tf) @ Z[:n]
    return out


# ---------------------------------------------------------------------------
# geometry and the injected model
# ---------------------------------------------------------------------------
def filter_wavelength_um(name):
    """Wavelength (um) of a JWST filter name: 'F356W' -> 3.56, 'F1140C' -> 11.4.

    :func:`coron_cli.core.optics.filter_wavelength_um`, which reads the digits
    of the name as the wavelength in hundredths of a micron.

    Raises
    ------
    ValueError
        A name that is not a band-pass filter's.
    """
    from .core.optics import filter_wavelength_um as wavelength

    wave = wavelength(name)
    if wave is None:
        raise ValueError(f"cannot read a wavelength from the filter name {name!r}")
    return float(wave)


def lambda_over_d_pix(wave_um, scale_arcsec, diameter_m=DIAMETER_M):
    """lambda/D in pixels of `scale_arcsec`."""
    return float(wave_um * 1e-6 / diameter_m * 180.0 / np.pi * 3600.0 / scale_arcsec)


def psfmask_path(exposure_path):
    """The transmission map beside an exposure, or None (:func:`products.psfmask_beside`)."""
    from .products import psfmask_beside

    return psfmask_beside(exposure_path)


def read_transmission(exposure_path, shape):
    """The transmission map beside an exposure, or None when there is none of that shape.

    :func:`coron_cli.products.transmission_for` with ``auto``: the first SCI
    extension (then image) of the frame's `shape` in ``<exposure>_psfmask.fits``.

    Returns
    -------
    ndarray of float64 of shape (ny, nx), or None.
    """
    from .errors import InputError
    from .products import transmission_for

    try:
        return transmission_for("auto", exposure_path, tuple(shape))
    except InputError:
        return None


def exposure_geometry(path):
    """What the injection needs of an exposure.

    Returns
    -------
    dict
        'path', 'shape' (ny, nx), 'nint', 'center' (x, y: the star, from
        :func:`coron_cli.products.star_center`), 'roll' (PA of the detector +y
        axis, :func:`coron_cli.products.roll_angle`), 'scale' (arcsec/pixel), 'filter',
        'transmission' (map or None).
    """
    from astropy.io import fits

    from .products import _clean_header, pixel_scale_arcsec, roll_angle, star_center

    with fits.open(path) as h:
        hdu = h["SCI"] if "SCI" in h else h[0]
        sci_header = _clean_header(hdu.header)
        primary = _clean_header(h[0].header)
        shape = hdu.shape
    frame = tuple(shape[-2:])
    center, _ = star_center(sci_header, frame)
    roll, _ = roll_angle(sci_header, primary)
    return {"path": path, "shape": frame, "nint": shape[0] if len(shape) == 3 else 1,
            "center": (float(center[0]), float(center[1])),
            "roll": 0.0 if roll is None else float(roll),
            "scale": pixel_scale_arcsec(sci_header),
            "filter": primary.get("FILTER", sci_header.get("FILTER")),
            "transmission": read_transmission(path, frame)}


def sky_offsets(sep_pix, pa_deg, roll_deg):
    """Detector offsets (dx, dy) from the star of sources at (separation, PA).

    Parameters
    ----------
    sep_pix, pa_deg : float or ndarray
        Separation (pixels) and position angle (degrees east of north).
    roll_deg : float
        Position angle of the detector +y axis (0 for a north-up image).

    Returns
    -------
    ndarray of shape (..., 2)
        ``dx = -sep sin(pa - roll)``, ``dy = sep cos(pa - roll)`` (east to the
        left of north, the sky's usual parity, as coron's combination assumes).
    """
    a = np.radians(np.asarray(pa_deg, dtype=np.float64) - roll_deg)
    sep = np.asarray(sep_pix, dtype=np.float64)
    return np.stack([-sep * np.sin(a), sep * np.cos(a)], axis=-1)


def position_angle(dx, dy, roll_deg=0.0):
    """Inverse of :func:`sky_offsets`: PA (degrees east of north, [0, 360))."""
    return np.mod(roll_deg + np.degrees(np.arctan2(-np.asarray(dx), np.asarray(dy))), 360.0)


def _airy_stamp(lod_pix, fx, fy, half, oversample):
    """Pixel-integrated Airy pattern (continuous peak 1) on a (2 half + 1)**2 stamp.

    The source is at (half + fx, half + fy) in stamp pixels; every pixel's
    value is the mean of the pattern over oversample**2 points in it
    (:func:`coron_cli.core.optics.airy_pixels`).
    """
    from .core.optics import AIRY_FWHM_LOD, airy_pixels

    g = np.arange(-half, half + 1, dtype=np.float64)
    offsets = np.stack(np.broadcast_arrays((g - fy)[:, None], (g - fx)[None, :]), axis=-1)
    return airy_pixels(AIRY_FWHM_LOD * lod_pix, offsets, oversample=oversample)


def airy_image(shape, positions, amplitudes, lod_pix, *, oversample=5, radius_lod=12.0):
    """Pixel-integrated diffraction patterns of a circular telescope (Airy) at positions.

    Parameters
    ----------
    shape : (ny, nx)
    positions : ndarray of shape (nsrc, 2)
        Source positions (x, y), 0-based pixels.
    amplitudes : ndarray of shape (nsrc,)
        Value of the pixel under a source centred on it: an amplitude ``a``
        puts ``a`` in the pixel of a pixel-centred source.
    lod_pix : float
        lambda/D in pixels.
    oversample : int
        Sub-pixel samples per axis averaged into every pixel.
    radius_lod : float
        Half-size of each source's stamp, in lambda/D (the pattern is cut
        beyond it: 98 % of the flux lies within 12 lambda/D).

    Returns
    -------
    ndarray of float64 of shape (ny, nx)

    Notes
    -----
    The intensity of a point source seen by an unobstructed circular aperture
    of diameter D at wavelength lambda is ``I(r) = (2 J1(x) / x)**2`` with
    ``x = pi r / (lambda / D)``; its integral over the plane is
    ``4 (lambda/D)**2 / pi`` (pixels**2, for a peak of 1) and the fraction
    within r is ``1 - J0(x)**2 - J1(x)**2``. Each pixel holds the mean of I
    over the pixel (`oversample`**2 points), divided by that of a
    pixel-centred source's central pixel.
    """
    ny, nx = (int(v) for v in shape)
    out = np.zeros((ny, nx))
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    amp = np.broadcast_to(np.asarray(amplitudes, dtype=np.float64), (len(pos),))
    half = int(np.ceil(radius_lod * lod_pix)) + 1
    peak = _airy_stamp(lod_pix, 0.0, 0.0, 0, oversample)[0, 0]
    for (x, y), a in zip(pos, amp):
        ix, iy = int(np.rint(x)), int(np.rint(y))
        stamp = _airy_stamp(lod_pix, x - ix, y - iy, half, oversample) * (a / peak)
        x0, y0 = ix - half, iy - half
        sx0, sy0 = max(0, -x0), max(0, -y0)
        dx0, dy0 = max(0, x0), max(0, y0)
        dx1, dy1 = min(nx, ix + half + 1), min(ny, iy + half + 1)
        if dx1 <= dx0 or dy1 <= dy0:
            continue
        out[dy0:dy1, dx0:dx1] += stamp[sy0:sy0 + dy1 - dy0, sx0:sx0 + dx1 - dx0]
    return out


def _transmission_at(tmap, xy):
    """Transmission map interpolated (bilinear) at positions (n, 2); 1 without a map."""
    from scipy import ndimage

    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if tmap is None:
        return np.ones(len(xy))
    t = np.where(np.isfinite(tmap), tmap, 0.0)
    return ndimage.map_coordinates(t, [xy[:, 1], xy[:, 0]], order=1, mode="nearest")


def inject_fakes(geometry, sep_pix, pa_deg, amplitudes, lod_pix):
    """The image of fake companions in one exposure's detector frame.

    Parameters
    ----------
    geometry : dict
        :func:`exposure_geometry` of the exposure (star, roll, transmission map).
    sep_pix, pa_deg : ndarray of shape (nsrc,)
        Sky positions: separation (pixels), position angle (deg east of north).
    amplitudes : ndarray of shape (nsrc,)
        Unattenuated peak (pixel-centred) of every source.
    lod_pix : float
        lambda/D in pixels of the Airy model (:func:`airy_image`).

    Returns
    -------
    image : ndarray of float64 of shape (ny, nx)
        Each source's Airy pattern times its amplitude times the
        transmission map at its position.
    positions : ndarray of shape (nsrc, 2)
        Detector positions (x, y).
    transmission : ndarray of shape (nsrc,)
    """
    pos = np.asarray(geometry["center"]) + sky_offsets(sep_pix, pa_deg, geometry["roll"])
    pos = pos.reshape(-1, 2)
    t = _transmission_at(geometry["transmission"], pos)
    img = airy_image(geometry["shape"], pos, np.asarray(amplitudes, dtype=np.float64) * t,
                     lod_pix)
    return img, pos, t


# ---------------------------------------------------------------------------
# masks and noise in a north-up image
# ---------------------------------------------------------------------------
def sector_mask(shape, center, pas, half_width_deg):
    """True where a pixel's position angle is within `half_width_deg` of one of `pas`.

    For a north-up image (east left); the star's own pixel is included.
    """
    yy, xx = np.indices(shape, dtype=np.float64)
    pa = position_angle(xx - center[0], yy - center[1])
    out = np.zeros(shape, dtype=bool)
    for p in pas:
        d = np.abs((pa - p + 180.0) % 360.0 - 180.0)
        out |= d <= half_width_deg
    return out


def near_mask(shape, points, radius):
    """True within `radius` pixels of any of `points` ((n, 2) x, y)."""
    yy, xx = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape, dtype=bool)
    for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        out |= np.hypot(xx - x, yy - y) <= radius
    return out


def robust_std(values):
    """:func:`coron_cli.core.robust_sigma` of the values, NaN for fewer than two finite ones."""
    v = np.asarray(values, dtype=np.float64)
    if np.count_nonzero(np.isfinite(v)) < 2:
        return float("nan")
    return core.robust_sigma(v)


def local_noise(image, center, radii, *, half_width, exclude=None):
    """Robust noise (:func:`robust_std`) of an image in thin annuli about the star.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
    center : (x, y)
    radii : ndarray of shape (nr,)
        Annulus radii (pixels).
    half_width : float
        Pixels with ``|r - radius| <= half_width`` are used.
    exclude : ndarray of bool of shape (ny, nx), optional
        Pixels left out (disks, known sources).

    Returns
    -------
    ndarray of float64 of shape (nr,)
    """
    img = np.asarray(image, dtype=np.float64)
    yy, xx = np.indices(img.shape, dtype=np.float64)
    r = np.hypot(xx - center[0], yy - center[1])
    ok = np.isfinite(img) if exclude is None else np.isfinite(img) & ~exclude
    return np.array([robust_std(img[ok & (np.abs(r - rad) <= half_width)])
                     for rad in np.atleast_1d(radii)])


def wedge_points(radius, pas, half_width_deg, spacing):
    """Offsets of points along arcs of a circle: the wedges about `pas` (north-up).

    Given to :func:`coron_cli.core.aperture_snr` as sources to avoid, they keep
    the reference apertures of a companion at `radius` out of a disk's wedges.

    Returns
    -------
    ndarray of shape (npt, 2)
    """
    if not len(pas) or radius <= 0:
        return np.zeros((0, 2))
    step = np.degrees(spacing / radius)
    n = int(np.ceil(2 * half_width_deg / step)) + 1
    out = [sky_offsets(radius, p + np.linspace(-half_width_deg, half_width_deg, n), 0.0)
           for p in pas]
    return np.concatenate(out)


# ---------------------------------------------------------------------------
# fake companions for real data
# ---------------------------------------------------------------------------
def place_fakes(seps_pix, lod_pix, geometries, *, disk_pa=(), known=(), base_pa=FAKE_BASE_PA,
                clearance_deg=_FAKE_DISK_CLEARANCE_DEG, min_dist_lod=_FAKE_MIN_DIST_LOD,
                edge_lod=_FAKE_EDGE_LOD, min_rel_t=_FAKE_MIN_REL_T):
    """Sky positions of fake companions, spread in angle and clear of what must be avoided.

    The k-th separation starts at ``base_pa + 137.5 k`` degrees (the golden
    angle) and moves by 5-degree steps until the position keeps
    `clearance_deg` from every `disk_pa`, `min_dist_lod` lambda/D from the
    known sources and the fakes already placed, and lies in every exposure
    at least `edge_lod` lambda/D inside the frame, with a transmission at
    least `min_rel_t` times the 90th percentile of the transmission at that
    separation (off a 4QPM's quadrant edges). A separation whose circle does
    not fit in every frame (the reference apertures of the t-test go all
    round it), or that finds no position, is left out.

    Parameters
    ----------
    seps_pix : ndarray of shape (nsep,)
    lod_pix : float
    geometries : list of dict
        :func:`exposure_geometry` of the science exposures.
    disk_pa : sequence of float
    known : ndarray of shape (nknown, 2)
        Known sources as north-up offsets (dx, dy) from the star.

    Returns
    -------
    list of (sep_pix, pa_deg)
        One per placed separation; deterministic.
    """
    known = np.asarray(known, dtype=np.float64).reshape(-1, 2)
    placed = []
    rings = {}
    for k, sep in enumerate(np.asarray(seps_pix, dtype=np.float64)):
        room = min(min(g["center"][0], g["shape"][1] - 1 - g["center"][0],
                       g["center"][1], g["shape"][0] - 1 - g["center"][1])
                   for g in geometries)
        if sep + edge_lod * lod_pix > room:
            continue
        for j in range(72):
            pa = (base_pa + _GOLDEN_DEG * k + 5.0 * j) % 360.0
            if any(abs((pa - d + 180.0) % 360.0 - 180.0) < clearance_deg for d in disk_pa):
                continue
            off = sky_offsets(sep, pa, 0.0)
            others = np.concatenate([known, np.array([sky_offsets(s, p, 0.0)
                                                      for s, p in placed]).reshape(-1, 2)])
            if len(others) and np.hypot(*(others - off).T).min() < min_dist_lod * lod_pix:
                continue
            if all(_fits_exposure(g, sep, pa, lod_pix, edge_lod, min_rel_t, rings)
                   for g in geometries):
                placed.append((float(sep), float(pa)))
                break
    return placed


def _fits_exposure(geom, sep, pa, lod, edge_lod, min_rel_t, rings):
    ny, nx = geom["shape"]
    x, y = np.asarray(geom["center"]) + sky_offsets(sep, pa, geom["roll"])
    m = edge_lod * lod
    if not (m <= x <= nx - 1 - m and m <= y <= ny - 1 - m):
        return False
    tmap = geom["transmission"]
    if tmap is None:
        return True
    key = (geom["path"], round(float(sep), 3))
    if key not in rings:
        ang = np.radians(np.arange(0.0, 360.0, 1.0))
        ring = np.column_stack([geom["center"][0] + sep * np.cos(ang),
                                geom["center"][1] + sep * np.sin(ang)])
        rings[key] = float(np.percentile(_transmission_at(tmap, ring), 90))
    t = float(_transmission_at(tmap, [(x, y)])[0])
    return t >= max(min_rel_t * rings[key], 0.02)


def find_real_sets(data_dir):
    """Sub-folders of `data_dir` holding an association (``*asn*.json``), sorted.

    Returns
    -------
    list of (name, asn path); empty when `data_dir` is not a folder.
    """
    if not data_dir or not os.path.isdir(data_dir):
        return []
    out = []
    for name in sorted(os.listdir(data_dir)):
        folder = os.path.join(data_dir, name)
        if not os.path.isdir(folder):
            continue
        asns = sorted(f for f in os.listdir(folder) if f.endswith(".json") and "asn" in f)
        if asns:
            out.append((name, os.path.join(folder, asns[0])))
    return out


def _link(src, dst):
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)


def _write_injected(asn_path, workdir, images):
    """A copy of an association in `workdir`: science exposures with `images` added.

    `images` maps a science member's absolute path to the image (ny, nx) added
    to every integration of its SCI. Every other member, and every
    ``_psfmask.fits`` beside a member, is linked (or copied) under the same
    name; the ASN is copied. The originals are only read.

    Returns
    -------
    str
        The new association's path.
    """
    from astropy.io import fits

    info = read_members(asn_path)
    os.makedirs(workdir, exist_ok=True)
    for _, path, _ in info["members"]:
        dst = os.path.join(workdir, os.path.basename(path))
        if os.path.lexists(dst):
            continue
        if path in images:
            with fits.open(path, memmap=False) as h:
                hdu = h["SCI"]
                data = np.asarray(hdu.data)
                hdu.data = (data + images[path].astype(np.float64)).astype(data.dtype)
                h.writeto(dst)
        else:
            _link(path, dst)
        mask = psfmask_path(path)
        if mask is not None:
            mdst = os.path.join(workdir, os.path.basename(mask))
            if not os.path.lexists(mdst):
                _link(mask, mdst)
    data = json.loads(json.dumps(info["asn"]))
    for m in data["products"][0]["members"]:
        m["expname"] = os.path.basename(m["expname"])
    new = os.path.join(workdir, os.path.basename(asn_path))
    with open(new, "w") as fh:
        json.dump(data, fh, indent=1)
    return new


def prepare_real_set(name, asn_path, workdir, plain_options, *, seps_lod=_FAKE_SEPS_LOD,
                     peak_sigma=FAKE_PEAK_SIGMA, base_pa=FAKE_BASE_PA):
    """A real data set with fake companions injected, and where to measure them.

    1. Plain KLIP (`plain_options`) on the data as they are; the robust noise
       of its i2d at every fake's separation (disk wedges and known sources
       left out) sets the fakes' brightness.
    2. Fakes are placed (:func:`place_fakes`, from `base_pa`) at `seps_lod`
       lambda/D; lambda is read from FILTER, the pixel scale from the WCS.
    3. Every fake's unattenuated peak is ``peak_sigma`` times that noise over
       its mean transmission in the science exposures, so that in the
       combined image it peaks near ``peak_sigma`` times the noise; in every
       exposure it is an Airy pattern (:func:`airy_image`) times the
       exposure's transmission at its position.
    4. The science exposures are written to ``workdir/data`` with the fakes
       added, beside links to the other members and the transmission maps,
       with a copy of the association.

    Returns
    -------
    dict (JSON-able)
        'name', 'asn' (the injected copy), 'asn_original', 'lod' (pixels),
        'wave_um', 'scale', 'disk_pa', 'companions' (list of dict: name, kind
        'fake' or 'known', sep_lod, sep_pix, pa, offset (north-up dx, dy),
        avoid (extra offsets kept out of its reference apertures), amplitude,
        noise, transmission per exposure, detector (x, y) per exposure),
        'exposures' (science paths of the copy), 'calib_dir', 'calib_seconds'.
    """
    from .asn import read_asn
    from .products import read_product, star_center

    conf = REAL_SETS.get(name, {"disk_pa": (), "known": ()})
    asn = read_asn(asn_path)
    sci_paths = list(asn.products[0].science)
    geoms = [exposure_geometry(p) for p in sci_paths]
    g0 = geoms[0]
    if not g0["scale"]:
        raise ValueError(f"{sci_paths[0]}: no pixel scale in the WCS")
    wave = filter_wavelength_um(g0["filter"])
    lod = lambda_over_d_pix(wave, g0["scale"])
    calib_dir = os.path.join(workdir, "calib_plain")
    calib = run_pipeline(asn_path, calib_dir, plain_options)
    i2d = read_product(calib["i2d"], ndims=(2,))
    center, _ = star_center(i2d.sci_header, i2d.sci.shape)
    img = np.asarray(i2d.sci, dtype=np.float64)
    # known companions: the brightest pixel near the expected place, in the plain image
    known = []
    for kname, sep_as, pa in conf["known"]:
        guess = np.asarray(center) + sky_offsets(sep_as / g0["scale"], pa, 0.0)
        xy = core.refine_peaks(img, guess[None], radius=1.5 * lod)[0]
        off = xy - np.asarray(center)
        known.append({"name": kname, "kind": "known", "offset": off.tolist(),
                      "sep_pix": float(np.hypot(*off)), "pa": float(position_angle(*off))})
    known_off = np.array([k["offset"] for k in known]).reshape(-1, 2)
    excl = sector_mask(img.shape, center, conf["disk_pa"], _NOISE_WEDGE_DEG)
    excl |= near_mask(img.shape, np.asarray(center) + known_off, 3.0 * lod)
    seps = np.asarray(seps_lod, dtype=np.float64) * lod
    placed = place_fakes(seps, lod, geoms, disk_pa=conf["disk_pa"], known=known_off,
                         base_pa=base_pa)
    companions = []
    if placed:
        sep_p = np.array([s for s, _ in placed])
        pa_p = np.array([p for _, p in placed])
        noise = local_noise(img, center, sep_p, half_width=max(1.0, 0.5 * lod), exclude=excl)
        pos = [np.asarray(g["center"]) + sky_offsets(sep_p, pa_p, g["roll"]) for g in geoms]
        trans = [_transmission_at(g["transmission"], xy) for g, xy in zip(geoms, pos)]
        amp = peak_sigma * noise / np.maximum(np.mean(trans, axis=0), 1e-3)
        images = {g["path"]: inject_fakes(g, sep_p, pa_p, amp, lod)[0] for g in geoms}
        for k in range(len(sep_p)):
            companions.append({
                "name": f"f{k + 1}", "kind": "fake", "sep_pix": float(sep_p[k]),
                "sep_lod": float(sep_p[k] / lod), "pa": float(pa_p[k]),
                "offset": sky_offsets(sep_p[k], pa_p[k], 0.0).tolist(),
                "amplitude": float(amp[k]), "noise": float(noise[k]),
                "transmission": [float(t[k]) for t in trans],
                "detector": [xy[k].tolist() for xy in pos]})
    else:
        images = {}
    for k in known:
        k["sep_lod"] = k["sep_pix"] / lod
        k["detector"] = [(np.asarray(g["center"]) + sky_offsets(k["sep_pix"], k["pa"],
                                                               g["roll"])).tolist()
                         for g in geoms]
    companions += known
    for c in companions:
        others = [k["offset"] for k in known if k is not c]
        c["avoid"] = np.concatenate([wedge_points(c["sep_pix"], conf["disk_pa"],
                                                  _NOISE_WEDGE_DEG, 0.5 * lod),
                                     np.array(others).reshape(-1, 2)]).tolist()
    data_dir = os.path.join(workdir, "data")
    new_asn = _write_injected(asn_path, data_dir, images)
    return {"name": name, "asn": new_asn, "asn_original": asn_path, "lod": lod,
            "wave_um": wave, "scale": g0["scale"], "disk_pa": list(conf["disk_pa"]),
            "companions": companions,
            "exposures": [os.path.join(data_dir, os.path.basename(p)) for p in sci_paths],
            "calib_dir": calib_dir, "calib_seconds": calib["seconds"]}


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------
def companion_snr(image, center, offsets, fwhm, *, avoid=None):
    """Aperture t-test SNR (Mawet et al. 2014) of companions at known positions.

    Parameters
    ----------
    image : ndarray of shape (ny, nx)
        North-up combined image.
    center : (x, y)
        The star in it.
    offsets : ndarray of shape (n, 2)
        Companions' (dx, dy) from the star.
    fwhm : float
        Aperture diameter (pixels), lambda/D.
    avoid : list of ndarray of shape (m_k, 2), optional
        Per companion, further offsets (a disk's wedge, known sources) whose
        neighbourhood is kept out of its reference apertures; the other
        companions always are.

    Returns
    -------
    ndarray of float64 of shape (n,)
        :func:`coron_cli.core.aperture_snr`; NaN where it cannot be measured.
    """
    off = np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    pos = np.asarray(center, dtype=np.float64) + off
    out = np.full(len(pos), np.nan)
    for k in range(len(pos)):
        av = [np.delete(pos, k, axis=0)]
        if avoid is not None and len(avoid[k]):
            av.append(np.asarray(center) + np.asarray(avoid[k], dtype=np.float64).reshape(-1, 2))
        snr, _ = core.aperture_snr(image, pos[k:k + 1], center, fwhm=fwhm,
                                   avoid=np.concatenate(av))
        out[k] = snr[0]
    return out


def _shift_table(path):
    from astropy.table import Table

    sh = Table.read(path, hdu="SHIFTS")
    keep = np.ones(len(sh), dtype=bool)
    for col in ("accepted", "used"):
        if col in sh.colnames:
            keep &= np.asarray(sh[col]).astype(bool)
    return sh, keep


def _methods(sh, keep):
    if "method" not in sh.colnames:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(sh["method"])[keep]]


def shift_stats(outdir):
    """A run's applied shifts without a truth: largest |shift| (px) and pairs per method.

    Returns
    -------
    dict
        'max_shift_px' (NaN without psfalign products), 'methods'.
    """
    best, how = np.nan, []
    for name in sorted(os.listdir(outdir)):
        if name.endswith("_psfalign.fits"):
            sh, keep = _shift_table(os.path.join(outdir, name))
            how += _methods(sh, keep)
            if keep.any():
                m = float(np.hypot(np.asarray(sh["dx"]), np.asarray(sh["dy"]))[keep].max())
                best = m if not np.isfinite(best) else max(best, m)
    return {"max_shift_px": best, "methods": {m: how.count(m) for m in sorted(set(how))}}


def registration_error(outdir, truth, *, asn_id="c1001"):
    """Measured against true offsets over all (science integration, reference) pairs.

    Like :func:`coron_cli.evaluate.registration_error`, for any number of
    reference stars: every reference exposure's true star positions and flux
    ratio come from the truth's entry for that exposure (``flux_ratio``, else
    the truth's ``ref_flux_ratio``). Rows of SHIFTS with a false ``accepted``
    (or ``used``) column, when there is one, are left out.

    Returns
    -------
    dict
        'rms_px' (RMS of |measured - true| offset), 'max_err_px', 'max_shift_px'
        (largest |offset| applied), 'bias_x', 'bias_y', 'scale_rms' (RMS
        relative flux-scale error), 'npairs', 'methods' (pairs per SHIFTS
        method: dither, fourier, header...); NaN without psfalign products.
    """
    exps = {e["name"]: e for e in truth["exposures"]}
    stack_path = find_product(outdir, "_psfstack.fits")
    from astropy.table import Table

    refs = Table.read(stack_path, hdu="REFS")
    rxy = np.array([exps[str(f)]["star_xy"][int(i)]
                    for f, i in zip(refs["file"], refs["integration"])], dtype=np.float64)
    default_ratio = truth.get("ref_flux_ratio", 1.0)
    rfl = np.array([exps[str(f)].get("flux_ratio", default_ratio) for f in refs["file"]],
                   dtype=np.float64)
    ex, ey, es, sh_all, how = [], [], [], [], []
    for name, e in exps.items():
        if e["exptype"] != "science":
            continue
        stem = name.replace("_calints.fits", "")
        path = os.path.join(outdir, f"{stem}_{asn_id}_psfalign.fits" if asn_id
                            else f"{stem}_psfalign.fits")
        if not os.path.exists(path):
            continue
        sh, keep = _shift_table(path)
        sxy = np.asarray(e["star_xy"], dtype=np.float64)
        i, j = np.asarray(sh["sci_int"])[keep], np.asarray(sh["ref"])[keep]
        dx, dy = np.asarray(sh["dx"])[keep], np.asarray(sh["dy"])[keep]
        ex.append(dx - (sxy[i, 0] - rxy[j, 0]))
        ey.append(dy - (sxy[i, 1] - rxy[j, 1]))
        es.append(np.asarray(sh["scale"])[keep] * rfl[j] - 1.0)
        sh_all.append(np.hypot(dx, dy))
        how += _methods(sh, keep)
    if not ex:
        nan = float("nan")
        return {"rms_px": nan, "max_err_px": nan, "max_shift_px": nan, "bias_x": nan,
                "bias_y": nan, "scale_rms": nan, "npairs": 0, "methods": {}}
    ex, ey, es, sh_all = map(np.concatenate, (ex, ey, es, sh_all))
    err = np.hypot(ex, ey)
    return {"rms_px": float(np.sqrt(np.mean(err ** 2))), "max_err_px": float(err.max()),
            "max_shift_px": float(sh_all.max()), "bias_x": float(ex.mean()),
            "bias_y": float(ey.mean()), "scale_rms": float(np.sqrt(np.mean(es ** 2))),
            "npairs": int(err.size), "methods": {m: how.count(m) for m in sorted(set(how))}}


def to_json(obj):
    """A copy of nested dicts/lists with numpy scalars as Python ones and NaN/inf as None."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj
