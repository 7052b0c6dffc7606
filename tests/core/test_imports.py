"""coron_cli.core imports its submodules lazily and scipy.signal / scipy.stats only on use.

These tests compare sets of modules, never import times.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from coron_cli import core
from tests.helpers import modules_loaded

ROOT = Path(__file__).resolve().parents[2]

SUBMODULES = ("background", "badpix", "combine", "inject", "klip", "metrics", "optics",
              "registration", "robust", "stack")

# the public names of coron_cli.core before the imports became lazy, plus robust_sigma
PUBLIC = {
    "DO_NOT_USE", "OUTLIER", "airy_pixels", "align_references", "apply_gain", "annular_mean",
    "annular_profile", "annulus_fit_zones", "annulus_zones", "aperture_snr", "aperture_sums",
    "background_decision", "bad_pixel_mask", "bound_shifts", "calibrate_error", "source_regions",
    "source_footprints", "combine_backgrounds", "combine_images", "dither_groups",
    "dither_model_shifts", "diffraction_fwhm_pix", "dither_positions", "contrast_curve",
    "find_candidates", "filter_wavelength_um", "find_outliers", "inject_sources",
    "injection_grid", "fit_offsets", "klip_subtract", "noise_weights", "roll_groups", "extended_parts",
    "north_up", "psf_center",
    "psf_envelope", "psf_flux", "refine_peaks", "repair_bad_pixels", "restore_source_pixels",
    "sharpness_bound", "shift_gain", "shift_images", "shift_stack", "shift_variance", "sky_level",
    "snr_image", "snr_map_mawet", "source_ratios", "stack_cubes", "student_t_factor", "value_at",
    "robust_sigma", "nanmedian",
    # moved from the steps (issue 13): numerics on arrays belong in core
    "frame_noise", "mean_frames", "position_angle", "shift_dq", "sky_offsets",
}


def _modules_after(statement):
    """Sorted scipy and coron_cli.core modules loaded by `statement` in a fresh Python."""
    return sorted(m for m in modules_loaded(statement, cwd=ROOT)
                  if m.startswith(("scipy", "coron_cli.core")))


def _signal_stats(modules):
    return [m for m in modules if m.startswith(("scipy.signal", "scipy.stats"))]


def test_stacking_and_klip_path_loads_no_scipy_signal_or_stats():
    code = ("import coron_cli.core, coron_cli.core.stack, coron_cli.core.badpix, "
            "coron_cli.core.klip, sys; print(sorted(m for m in sys.modules "
            "if m.startswith('scipy.signal') or m.startswith('scipy.stats')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_importing_core_loads_no_submodule_and_no_scipy():
    mods = _modules_after("import coron_cli.core")
    assert mods == ["coron_cli.core"]


def test_name_loads_only_its_own_submodule():
    mods = _modules_after("from coron_cli import core; core.klip_subtract")
    assert [m for m in mods if m.startswith("coron_cli.core.")] == [
        "coron_cli.core._geometry", "coron_cli.core.klip"]
    assert not [m for m in mods if m.startswith("scipy")]
    mods = _modules_after("from coron_cli.core import robust_sigma")
    assert [m for m in mods if m.startswith("coron_cli.core.")] == ["coron_cli.core.robust"]
    assert not [m for m in mods if m.startswith("scipy")]


def test_every_submodule_imports_without_scipy_signal_or_stats():
    mods = _modules_after("from coron_cli.core import *\n"
                          + "".join(f"import coron_cli.core.{m}\n" for m in SUBMODULES))
    assert {f"coron_cli.core.{m}" for m in SUBMODULES} <= set(mods)
    assert _signal_stats(mods) == []


def test_functions_import_scipy_signal_and_stats_on_use():
    mods = _modules_after("import numpy as np\nfrom coron_cli import core\n"
                          "core.student_t_factor(10)\n"
                          "core.aperture_sums(np.ones((9, 9)), fwhm=2.0)")
    assert "scipy.stats" in mods and "scipy.signal" in mods


def test_public_api_is_unchanged():
    assert set(core.__all__) == PUBLIC
    assert len(core.__all__) == len(PUBLIC)
    for name in core.__all__:
        value = getattr(core, name)
        owner = [m for m in SUBMODULES if name in vars(importlib.import_module(
            f"coron_cli.core.{m}"))]
        assert owner, name
        assert all(getattr(importlib.import_module(f"coron_cli.core.{m}"), name) is value
                   for m in owner)
    assert core.DO_NOT_USE == 1 and core.OUTLIER == 16
    assert set(core.__all__) | set(SUBMODULES) <= set(dir(core))


def test_submodules_and_private_names_stay_reachable():
    from coron_cli.core.metrics import _disk, _radius, _vertex  # noqa: F401 (old names)

    for m in SUBMODULES:
        assert getattr(core, m) is importlib.import_module(f"coron_cli.core.{m}")
    assert core.metrics._disk(1.5).sum() == 9
    assert _radius((3, 3), (1, 1))[0, 0] == pytest.approx(2 ** 0.5)


def test_star_import_and_unknown_names():
    ns = {}
    exec("from coron_cli.core import *", ns)
    assert PUBLIC <= set(ns)
    with pytest.raises(AttributeError, match="no_such_name"):
        core.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from coron_cli.core import no_such_name", {})
