"""Science properties pinned at the small simulation size (fast)."""

import numpy as np
import pytest

from coron_cli.evaluate import evaluate


@pytest.fixture(scope="module")
def science(tmp_path_factory):
    return evaluate("small", seed=0, outdir=str(tmp_path_factory.mktemp("science")))


def test_planet_free_twin_has_no_false_alarm(science):
    assert science["twin"]["n_false"] == 0
    assert science["twin"]["max_abs_snr"] < 5


def test_twin_snr_is_calibrated_in_every_annulus(science):
    stds = np.array([s for _, s in science["twin"]["annuli"]])
    assert stds.size >= 5
    assert np.all(np.abs(stds - 1.0) <= 0.15), stds


def test_planets_once_at_true_sky_position(science):
    bright = [p for p in science["planets"] if p["contrast"] >= 1e-4]
    assert bright
    for p in bright:
        assert p["astrometry_px"] <= 0.3


def test_bright_planets_detected_and_combination_deepens(science):
    for p in science["planets"]:
        if p["contrast"] >= 1e-4:
            assert p["coron_i2d"][0] >= 5
            # the combined image is deeper than either roll alone
            assert p["coron_i2d"][0] > max(r[0] for r in p["coron_roll"])


def test_coron_beats_classical_rdi_close_to_the_star(science):
    # inside 7 lambda/D residual speckles, not photons, limit both methods
    close = [p for p in science["planets"] if p["sep_lod"] < 7 and p["contrast"] >= 1e-4]
    assert close
    for p in close:
        assert p["coron_i2d"][0] > p["crdi_i2d"][0]
        # and not through the error estimate alone: the twin's residual itself is lower
        assert p["coron_noise"] < 0.9 * p["crdi_noise"]


def test_registration_error_is_reported(science):
    r = science["registration"]
    assert 0 <= r["rms_px"] < 0.2
    assert 0 <= r["scale_rms"] < 0.1


def test_make_science_leaves_no_temporary_folder(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "coron_cli.evaluate", "--size", "small"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "registration vs truth" in r.stdout
    assert os.listdir(tmp_path) == []


def test_calibrated_curve_matches_injected_planets(tmp_path):
    """Small-size version of ``python -m coron_cli.evaluate --contrast-check aperture``."""
    from coron_cli.evaluate import contrast_check

    res = contrast_check("small", 0, str(tmp_path), truncate=[50], n_pa=4,
                         groups_lod=((3.0, 8.0), (5.0, 10.0)))
    ratios = np.array([r["ratio"] for r in res["rows"]])
    assert len(ratios) == 4
    assert (np.abs(ratios - 1) < 0.35).all(), ratios
    assert abs(np.median(ratios) - 1) < 0.2, ratios
