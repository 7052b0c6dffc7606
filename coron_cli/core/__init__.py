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
robust       robust noise: 1.4826 times the median absolute deviation

Private helpers: ``_geometry`` (pixel radii, disk kernels, the parabola
through three samples of a peak), ``_sharpness_table`` (precomputed
point-source sharpness bounds).

Importing this package loads none of its submodules (nor scipy): every
name below is imported from its submodule on first use (PEP 562), e.g.
``core.klip_subtract`` loads :mod:`~coron_cli.core.klip` only. Within the
submodules, ``scipy.signal`` and ``scipy.stats`` are imported by the
functions that need them.
"""

import importlib

# every public name, by the submodule that defines it
_EXPORTS = {
    "background": ("background_decision", "combine_backgrounds", "sky_level"),
    "badpix": ("DO_NOT_USE", "OUTLIER", "bad_pixel_mask", "find_outliers",
               "repair_bad_pixels", "restore_source_pixels", "sharpness_bound"),
    "combine": ("combine_images", "mean_frames", "north_up", "position_angle", "sky_offsets"),
    "inject": ("inject_sources", "injection_grid", "psf_center", "psf_envelope", "psf_flux",
               "source_ratios"),
    "klip": ("annulus_fit_zones", "annulus_zones", "klip_subtract", "noise_weights",
             "roll_groups"),
    "metrics": ("annular_mean", "annular_profile", "aperture_snr", "aperture_sums",
                "calibrate_error", "contrast_curve", "extended_parts", "find_candidates", "refine_peaks",
                "snr_image", "snr_map_mawet", "source_footprints", "source_regions",
                "student_t_factor", "value_at"),
    "optics": ("airy_pixels", "diffraction_fwhm_pix", "filter_wavelength_um"),
    "registration": ("align_references", "apply_gain", "bound_shifts", "dither_groups",
                     "dither_model_shifts", "dither_positions", "fit_offsets", "shift_dq",
                     "shift_gain", "shift_images", "shift_stack", "shift_variance"),
    "robust": ("frame_noise", "nanmedian", "robust_sigma"),
    "stack": ("stack_cubes",),
}

_SUBMODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_SUBMODULE_OF)


def __getattr__(name):
    """Import a public name (or a submodule) on first access (PEP 562)."""
    module = _SUBMODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    elif name in _EXPORTS:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_EXPORTS))
