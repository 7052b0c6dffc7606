"""Telescope optics: filter wavelengths from their names, diffraction-limited PSF widths."""

import re

import numpy as np
from scipy import special

__all__ = ["AIRY_FWHM_LOD", "JWST_DIAMETER_M", "airy_pixels", "diffraction_fwhm_pix",
           "filter_wavelength_um"]

#: FWHM of the core of the Airy pattern of a filled circular aperture, in lambda/D.
AIRY_FWHM_LOD = 1.0290
#: Diameter of JWST's primary mirror used for its diffraction limit, metres.
JWST_DIAMETER_M = 6.5

_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi
# F + 3 or 4 digits (the wavelength in units of 10 nm) + the band code:
# W, W2 (extra wide), WR (MIRI's redundant F2550WR), M, N, C (MIRI coronagraphic)
_FILTER = re.compile(r"F(\d{3,4})(W2|WR|W|M|N|C)")


def filter_wavelength_um(filter_name):
    """Nominal wavelength of a JWST filter, from its name.

    Parameters
    ----------
    filter_name : str or None
        A ``FILTER`` header value: ``"F356W"``, ``"F1140C"``, ``"F182M"``,
        ``"F150W2"``, ... (case and surrounding blanks do not matter).

    Returns
    -------
    float or None
        Wavelength in microns, or None for a value that is not a band-pass
        filter name (``"CLEAR"``, ``"OPAQUE"``, long-pass ``"F070LP"``,
        combinations, non-strings).

    Notes
    -----
    JWST names its imaging filters by the central wavelength in units of
    10 nm followed by the width class (W wide, M medium, N narrow, C MIRI
    coronagraphic, W2 extra wide): ``F356W`` is 3.56 um, ``F1140C`` 11.40 um.
    The nominal value is what the name says, not the filter's pivot
    wavelength, which differs by up to a few per cent.
    """
    if not isinstance(filter_name, str):
        return None
    m = _FILTER.fullmatch(filter_name.strip().upper())
    if m is None:
        return None
    wave = int(m.group(1)) / 100.0
    return wave if wave > 0 else None


def diffraction_fwhm_pix(wavelength_um, pixel_scale_arcsec, diameter_m=JWST_DIAMETER_M):
    """FWHM of the diffraction-limited PSF core, in pixels.

    Parameters
    ----------
    wavelength_um : float
        Wavelength in microns.
    pixel_scale_arcsec : float
        Pixel size in arcseconds.
    diameter_m : float
        Aperture diameter in metres (JWST: 6.5).

    Returns
    -------
    float
        ``1.029 * lambda / D`` in pixels: the FWHM of the Airy core of a
        filled circular aperture, before integration over the pixels
        (which only broadens it).

    Raises
    ------
    ValueError
        For a non-positive or non-finite argument.
    """
    vals = {"wavelength_um": wavelength_um, "pixel_scale_arcsec": pixel_scale_arcsec,
            "diameter_m": diameter_m}
    for name, v in vals.items():
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    lod_arcsec = wavelength_um * 1e-6 / diameter_m * _ARCSEC_PER_RAD
    return float(AIRY_FWHM_LOD * lod_arcsec / pixel_scale_arcsec)


def airy_pixels(fwhm, offsets, *, oversample=9):
    """Pixel-integrated Airy pattern, for pixels at given offsets from its centre.

    Parameters
    ----------
    fwhm : float
        FWHM of the Airy core in pixels (before pixel integration).
    offsets : ndarray of shape (..., 2)
        (dy, dx) of pixel centres from the centre of the pattern, in pixels.
    oversample : int
        Sub-samples per pixel and axis of the integral (midpoint rule).

    Returns
    -------
    ndarray of shape offsets.shape[:-1]
        Mean of the Airy intensity (1 at its centre) over each pixel.
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    yy = offsets[..., 0, None, None] + sub[:, None]
    xx = offsets[..., 1, None, None] + sub[None, :]
    return _airy_intensity(np.hypot(yy, xx), fwhm).mean(axis=(-2, -1))


def _airy_intensity(r, fwhm):
    """Airy intensity (1 at r = 0) at radii `r` (pixels) for a core FWHM `fwhm` (pixels)."""
    z = np.pi * np.asarray(r, dtype=np.float64) * (AIRY_FWHM_LOD / float(fwhm))
    small = z < 1e-8
    amp = 2.0 * special.j1(z) / np.where(small, 1.0, z)
    return np.where(small, 1.0, amp * amp)
