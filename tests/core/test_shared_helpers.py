"""The helpers shared across core: the parabola vertex of a peak and the robust sigma."""

import warnings

import numpy as np
import pytest

from coron_cli.core import psf_center, refine_peaks, robust_sigma
from coron_cli.core._geometry import parabola_vertex

# ---------------------------------------------------------------------------
# parabola_vertex
# ---------------------------------------------------------------------------

def _samples(x0, a=-2.0, b=5.0):
    """A parabola a (x - x0)**2 + b sampled at x = -1, 0, 1."""
    return tuple(a * (x - x0) ** 2 + b for x in (-1.0, 0.0, 1.0))


@pytest.mark.parametrize("x0", [-0.5, -0.37, -0.1, 0.0, 0.02, 0.25, 0.4999])
def test_vertex_of_a_sampled_parabola(x0):
    assert float(parabola_vertex(*_samples(x0))) == pytest.approx(x0, abs=1e-12)


def test_vertex_on_arrays_is_elementwise():
    x0 = np.linspace(-0.5, 0.5, 101)
    a = -np.linspace(0.1, 10.0, 101)
    lo, c, hi = _samples(x0, a=a, b=np.linspace(-3, 3, 101))
    got = parabola_vertex(lo, c, hi)
    assert got.shape == (101,)
    np.testing.assert_allclose(got, x0, rtol=0, atol=1e-12)
    # broadcasting: one centre against many neighbours
    assert parabola_vertex(np.zeros(3), 1.0, np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_vertex_beyond_half_a_pixel_is_clipped():
    assert parabola_vertex(*_samples(0.8)) == 0.5
    assert parabola_vertex(*_samples(-3.0)) == -0.5


@pytest.mark.parametrize("lo, c, hi", [
    (1.0, 1.0, 1.0),          # flat
    (0.0, 1.0, 2.0),          # straight line
    (1.0, 0.0, 1.0),          # a minimum
    (np.nan, 1.0, 0.0),       # missing neighbour
    (0.0, 1.0, -np.inf),      # masked neighbour
    (0.0, np.nan, 0.0),       # missing centre
])
def test_vertex_is_zero_without_a_maximum(lo, c, hi):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parabola_vertex(lo, c, hi) == 0.0


def test_vertex_keeps_single_precision():
    lo, c, hi = (np.float32(v) for v in _samples(0.3))
    got = parabola_vertex(lo, c, hi)
    assert got.dtype == np.float32 and got == pytest.approx(0.3, abs=1e-6)


def test_psf_center_and_refine_peaks_use_the_vertex():
    # a Gaussian is a parabola in log: its centre comes out exact
    y, x = np.indices((21, 21), dtype=np.float64)
    xc, yc = 10.3, 9.8
    psf = np.exp(-((x - xc) ** 2 + (y - yc) ** 2) / (2 * 1.7 ** 2))
    assert psf_center(psf) == pytest.approx((xc, yc), abs=1e-12)
    # a paraboloid sampled on pixels: its vertex comes out exact
    img = 100.0 - (x - xc) ** 2 - 2 * (y - yc) ** 2
    np.testing.assert_allclose(refine_peaks(img, [[9, 11]], radius=2), [[xc, yc]], atol=1e-12)


# ---------------------------------------------------------------------------
# robust_sigma
# ---------------------------------------------------------------------------

def test_robust_sigma_of_known_values():
    # median 3, absolute deviations 2 1 0 1 97 -> MAD 1
    assert robust_sigma([1, 2, 3, 4, 100]) == pytest.approx(1.4826, rel=1e-15)
    assert robust_sigma([1.0, np.nan, 2, 3, np.inf, 4, -np.inf, 100]) == pytest.approx(1.4826)
    assert isinstance(robust_sigma([1.0, 2.0]), float)


def test_robust_sigma_of_few_values():
    assert robust_sigma([7.0]) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(robust_sigma([]))
        assert np.isnan(robust_sigma([np.nan, np.inf]))


def test_robust_sigma_of_gaussian_noise():
    rng = np.random.default_rng(3)
    v = rng.normal(5.0, 3.0, size=200_000)
    # the MAD estimate has a relative standard error of about 1.1 / sqrt(n) = 0.25 %
    assert robust_sigma(v) == pytest.approx(3.0, rel=0.01)
    # a few per cent of outliers barely move it
    v[:5000] = 1e6
    assert robust_sigma(v) == pytest.approx(3.0, rel=0.05)


def test_robust_sigma_per_frame_with_missing_pixels():
    rng = np.random.default_rng(4)
    scale = np.array([1.0, 2.0, 0.5, 1.0])
    cube = rng.normal(size=(4, 300, 200)) * scale[:, None, None]
    cube[rng.random(cube.shape) < 0.3] = np.nan
    cube[1, 5, 5] = np.inf
    cube[3] = np.nan                     # a frame with no valid pixel
    cube[2, :, :] = np.nan
    cube[2, 0, :5] = [1.0, 2.0, 3.0, 4.0, 100.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = robust_sigma(cube, axis=(1, 2))
    assert got.shape == (4,) and got.dtype == np.float64
    assert got[:2] == pytest.approx(scale[:2], rel=0.02)
    assert got[2] == pytest.approx(1.4826) and np.isnan(got[3])
    # each frame as a whole (axis=None) gives the same numbers
    np.testing.assert_array_equal(got, [robust_sigma(frame) for frame in cube])


def test_robust_sigma_along_one_axis():
    a = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, np.nan], [4.0, 40.0], [100.0, 50.0]])
    got = robust_sigma(a, axis=0)
    assert got == pytest.approx([robust_sigma(a[:, 0]), robust_sigma(a[:, 1])], rel=1e-15)
    assert got[0] == pytest.approx(1.4826)
    assert robust_sigma(a, axis=1).shape == (5,)


def test_harness_robust_std_is_robust_sigma():
    from coron_cli._harness import robust_std

    v = np.random.default_rng(5).normal(size=101)
    assert robust_std(v) == robust_sigma(v)
    assert np.isnan(robust_std([1.0, np.nan]))   # fewer than two finite values
