"""Numerics of the high-level products: the Student-t factor, the Mawet SNR map, injection."""

import time

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import special, stats

from coron_cli import core
from tests.helpers import gaussian


# ---------------------------------------------------------------- Student-t factor

@pytest.mark.parametrize("n", [3, 5, 10, 20, 100, 1000])
def test_student_t_factor_matches_scipy(n):
    fpf = stats.norm.sf(5.0)
    assert_allclose(core.student_t_factor(n), stats.t.isf(fpf, n - 1) * np.sqrt(1 + 1 / n),
                    rtol=1e-12)

def test_student_t_factor_hard_numbers():
    # the false-positive fraction of a Gaussian 5 sigma
    fpf = 0.5 * special.erfc(5 / np.sqrt(2))
    assert_allclose(fpf, 2.866515718791939e-07, rtol=1e-12)
    # n = 10 resolution elements: tau is the Student-t quantile with 9 degrees of freedom;
    # its tail, written with the regularised incomplete beta function (not scipy.stats),
    # sf(t, nu) = I_{nu / (nu + t^2)}(nu / 2, 1 / 2) / 2, is the fpf at tau = 12.42202
    tau = 12.4220240627
    assert_allclose(0.5 * special.betainc(4.5, 0.5, 9 / (9 + tau ** 2)), fpf, rtol=1e-8)
    assert_allclose(core.student_t_factor(10), tau * np.sqrt(1.1), rtol=1e-9)
    assert_allclose(core.student_t_factor(10), 13.0283287, rtol=1e-7)
    # whole elements only; 1 element has no degree of freedom; large n gives 5 sigma
    assert core.student_t_factor(10.99) == core.student_t_factor(10)
    assert np.isnan(core.student_t_factor(1.9))
    assert_allclose(core.student_t_factor(1e7), 5.0, rtol=1e-5)
    # the contrast curve uses n = 2 pi r / fwhm
    c = core.contrast_curve(np.array([10.0]), np.array([3.0]), star_flux=1e4, fwhm=2 * np.pi)
    assert_allclose(c, 13.0283287 * 3.0 / 1e4, rtol=1e-7)


# ---------------------------------------------------------------- injection

def test_inject_sources_subpixel():
    psf = gaussian((31, 31), 15.0, 15.0, 1.6)
    pos = np.array([[[10.3, 40.7], [50.55, 12.25]]])
    out = core.inject_sources((60, 70), psf, pos, [[2.0, 0.5]], center=(15.0, 15.0))
    expect = 2.0 * gaussian((60, 70), 10.3, 40.7, 1.6) + 0.5 * gaussian((60, 70), 50.55,
                                                                          12.25, 1.6)
    assert_allclose(out[0], expect, atol=2e-4)


# ---------------------------------------------------------------- Mawet SNR map

def test_mawet_map_vectorised_and_agrees_with_aperture_snr():
    from scipy import ndimage

    rng = np.random.default_rng(11)
    img = ndimage.gaussian_filter(rng.normal(0, 1, (320, 320)), 1.0)
    center = (160.3, 159.7)
    pos = np.array([[180.0, 170.0], [100.0, 150.0], [160.0, 200.0], [200.0, 120.0]])
    for x, y in pos:
        img += 1.5 * gaussian(img.shape, x, y, 1.0)
    before = img.copy()
    t0 = time.perf_counter()
    m = core.snr_map_mawet(img, center, fwhm=2.2)
    assert time.perf_counter() - t0 < 10  # about 0.2 s: no loop over pixels
    assert np.array_equal(img, before)
    assert m.shape == img.shape and m.dtype == np.float32
    for k, (x, y) in enumerate(pos):
        ref, _ = core.aperture_snr(img, pos[k:k + 1], center, fwhm=2.2,
                                   avoid=np.delete(pos, k, axis=0))
        assert m[int(y), int(x)] == pytest.approx(ref[0], rel=0.1)
    # pure noise has unit spread; the core (fewer than 3 elements) is NaN
    assert 0.9 < np.nanstd(m) < 1.1
    assert np.isnan(m[160, 160])
