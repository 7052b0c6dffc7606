"""Pure numerics on arrays: no I/O, no printing, inputs never modified.

Submodules
----------
stack        concatenation of reference cubes
background   sky backgrounds: combination, sky level, whether to subtract
badpix       bad-pixel masks, outlier (cosmic-ray) detection and repair
optics       filter wavelengths, diffraction-limited PSF widths, Airy patterns
registration sub-pixel offset and flux-scale fitting, Fourier shifts
klip         Karhunen-Loeve image projection (KLIP) PSF subtraction
combine      rotation to north-up and inverse-variance combination
inject       fake point sources, injection grids, throughput photometry
metrics      SNR images, annular noise, contrast and aperture SNR
"""

from .background import background_decision, combine_backgrounds, sky_level
from .badpix import (
    DO_NOT_USE,
    OUTLIER,
    bad_pixel_mask,
    find_outliers,
    repair_bad_pixels,
    restore_source_pixels,
    sharpness_bound,
)
from .combine import combine_images, north_up
from .inject import (
    inject_sources,
    injection_grid,
    psf_center,
    psf_envelope,
    psf_flux,
    source_ratios,
)
from .klip import annulus_fit_zones, annulus_zones, klip_subtract, noise_weights
from .metrics import (
    annular_mean,
    annular_profile,
    aperture_snr,
    aperture_sums,
    calibrate_error,
    source_regions,
    contrast_curve,
    find_candidates,
    refine_peaks,
    snr_image,
    snr_map_mawet,
    source_footprints,
    student_t_factor,
    value_at,
)
from .optics import airy_pixels, diffraction_fwhm_pix, filter_wavelength_um
from .registration import (
    align_references,
    apply_gain,
    bound_shifts,
    dither_groups,
    dither_model_shifts,
    dither_positions,
    fit_offsets,
    shift_gain,
    shift_images,
    shift_stack,
    shift_variance,
)
from .stack import stack_cubes

__all__ = [
    "DO_NOT_USE",
    "OUTLIER",
    "airy_pixels",
    "align_references",
    "apply_gain",
    "annular_mean",
    "annular_profile",
    "annulus_fit_zones",
    "annulus_zones",
    "aperture_snr",
    "aperture_sums",
    "background_decision",
    "bad_pixel_mask",
    "bound_shifts",
    "calibrate_error",
    "source_regions",
    "source_footprints",
    "combine_backgrounds",
    "combine_images",
    "dither_groups",
    "dither_model_shifts",
    "diffraction_fwhm_pix",
    "dither_positions",
    "contrast_curve",
    "find_candidates",
    "filter_wavelength_um",
    "find_outliers",
    "inject_sources",
    "injection_grid",
    "fit_offsets",
    "klip_subtract",
    "noise_weights",
    "north_up",
    "psf_center",
    "psf_envelope",
    "psf_flux",
    "refine_peaks",
    "repair_bad_pixels",
    "restore_source_pixels",
    "sharpness_bound",
    "shift_gain",
    "shift_images",
    "shift_stack",
    "shift_variance",
    "sky_level",
    "snr_image",
    "snr_map_mawet",
    "source_ratios",
    "stack_cubes",
    "student_t_factor",
    "value_at",
]
