"""Background numerics: combined background frames, the subtract-or-not decision, the sky."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from coron_cli import core
from tests.helpers import gaussian_psf


def test_combine_backgrounds_median_and_noise():
    rng = np.random.default_rng(1)
    frames = 10.0 + rng.normal(0, 1.0, (5, 20, 20))
    frames[2, 5, 5] = 1e4                              # a cosmic ray in one frame
    sky, err, n = core.combine_backgrounds(frames, np.ones_like(frames))
    assert abs(sky[5, 5] - 10.0) < 3.0
    assert (n == 5).all()
    assert_allclose(err, np.sqrt(np.pi / 2) / np.sqrt(5))
    pair, perr, _ = core.combine_backgrounds(frames[[1, 2]], np.ones((2, 20, 20)))
    assert pair[5, 5] == frames[1, 5, 5]               # the lower of a discrepant pair
    assert_allclose(pair[0, 0], frames[1:3, 0, 0].mean())

@pytest.mark.parametrize("mode,keyword,sci_sky,bkg_sky,expect", [
    ("auto", None, 14.0, 14.5, True),
    ("auto", "COMPLETE", 14.0, 14.5, False),
    ("auto", None, 0.1, 14.6, False),                  # removed already, no keyword
    ("auto", None, 0.1, 0.05, True),                   # a background too faint to tell
    ("subtract", "COMPLETE", 0.1, 14.6, True),
    ("off", None, 14.0, 14.5, False),
])
def test_background_decision(mode, keyword, sci_sky, bkg_sky, expect):
    sub, why = core.background_decision(mode, keyword=keyword, science_sky=sci_sky,
                                        background_sky=bkg_sky, background_noise=0.2)
    assert sub is expect and why

def test_sky_level_ignores_the_star():
    img = 3.0 + 1e4 * gaussian_psf((64, 64), 31.5, 31.5, sigma=3.0, halo=0)
    assert abs(core.sky_level(img, center=(31.5, 31.5)) - 3.0) < 1e-3
