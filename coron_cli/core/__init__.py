"""Pure numerics on arrays: no I/O, no printing, inputs never modified.

Submodules
----------
stack        concatenation of reference cubes
badpix       bad-pixel masks, outlier (cosmic-ray) detection and repair
registration sub-pixel offset and flux-scale fitting, Fourier shifts
klip         Karhunen-Loeve image projection (KLIP) PSF subtraction
combine      rotation to north-up and inverse-variance combination
metrics      SNR images, annular noise, contrast and aperture SNR
"""

from .badpix import DO_NOT_USE, OUTLIER, bad_pixel_mask, find_outliers, repair_bad_pixels
from .combine import combine_images, north_up
from .klip import klip_subtract, annulus_zones
from .metrics import (
    annular_profile,
    aperture_snr,
    calibrate_error,
    contrast_curve,
    snr_image,
    student_t_factor,
)
from .registration import align_references, dither_positions, fit_offsets, shift_images
from .stack import stack_cubes

__all__ = [
    "DO_NOT_USE",
    "OUTLIER",
    "align_references",
    "annular_profile",
    "annulus_zones",
    "aperture_snr",
    "bad_pixel_mask",
    "calibrate_error",
    "combine_images",
    "dither_positions",
    "contrast_curve",
    "find_outliers",
    "fit_offsets",
    "klip_subtract",
    "north_up",
    "repair_bad_pixels",
    "shift_images",
    "snr_image",
    "stack_cubes",
    "student_t_factor",
]
