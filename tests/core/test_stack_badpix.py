import numpy as np
import pytest

from coron_cli.core import bad_pixel_mask, find_outliers, repair_bad_pixels, stack_cubes


def test_stack_order_shape_and_index():
    a = np.zeros((2, 4, 5))
    b = np.ones((3, 4, 5))
    out, idx = stack_cubes([a, b])
    assert out.shape == (5, 4, 5)
    assert (out[:2] == 0).all() and (out[2:] == 1).all()
    assert idx.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]]


def test_stack_rejects_different_frames():
    with pytest.raises(ValueError, match="frames"):
        stack_cubes([np.zeros((1, 4, 5)), np.zeros((1, 5, 5))])


def test_bad_mask_from_dq_and_nan():
    data = np.ones((1, 3, 3))
    data[0, 0, 0] = np.nan
    dq = np.zeros((1, 3, 3), np.uint32)
    dq[0, 1, 1] = 1
    dq[0, 2, 2] = 4
    bad = bad_pixel_mask(data, dq)
    assert bad.sum() == 2 and bad[0, 0, 0] and bad[0, 1, 1]


def test_repair_across_frames_of_a_group_at_a_star_peak():
    yy, xx = np.indices((21, 21))
    star = 1000.0 * np.exp(-((xx - 10.2) ** 2 + (yy - 9.9) ** 2) / (2 * 1.1 ** 2))
    flux = np.array([1.0, 1.3, 0.8, 2.0])
    cube = flux[:, None, None] * star[None]
    bad = np.zeros(cube.shape, bool)
    bad[1, 10, 10] = True               # the peak of frame 1
    bad[3, 3, 4] = True
    bad[2, :, 0] = True                 # a column
    garbage = cube.copy()
    garbage[bad] = 1e7
    fixed = repair_bad_pixels(garbage, bad, groups=[0, 0, 0, 0])
    np.testing.assert_allclose(fixed, cube, rtol=1e-5, atol=1e-6)
    # from the neighbours alone the peak comes out far too low
    spatial = repair_bad_pixels(garbage, bad)
    assert spatial[1, 10, 10] < 0.9 * cube[1, 10, 10]
    # a pixel bad in every frame of its group falls back to its neighbours; groups apart
    bad2 = np.zeros(cube.shape, bool)
    bad2[:2, 10, 10] = True
    out = repair_bad_pixels(np.where(bad2, 1e7, cube), bad2, groups=[0, 0, 1, 1])
    ring8 = np.delete(cube[0, 9:12, 9:12].ravel(), 4)
    np.testing.assert_allclose(out[0, 10, 10], np.median(ring8), rtol=1e-6)


def test_repair_uses_good_neighbours_median():
    img = np.arange(25, dtype=np.float64).reshape(1, 5, 5)
    bad = np.zeros_like(img, bool)
    bad[0, 2, 2] = True
    src = img.copy()
    src[0, 2, 2] = 1e9
    out = repair_bad_pixels(src, bad)
    assert out[0, 2, 2] == pytest.approx(12.0)
    assert src[0, 2, 2] == 1e9  # input untouched
    big = np.ones((1, 20, 20))
    badb = np.zeros_like(big, bool)
    badb[0, 5:12, 5:12] = True
    assert np.allclose(repair_bad_pixels(big * np.where(badb, np.nan, 1), badb), 1.0)


def test_outliers_found_across_integrations():
    rng = np.random.default_rng(0)
    cube = rng.normal(100, 1, size=(4, 30, 30))
    cube[2, 10, 11] += 500
    hit = find_outliers(cube, err=np.ones_like(cube))
    assert hit[2, 10, 11] and hit.sum() == 1


def test_outliers_found_in_single_frame_but_not_star_core():
    from tests.helpers import gaussian_psf

    rng = np.random.default_rng(1)
    img = 5000 * gaussian_psf((40, 40), 20.3, 19.6, sigma=1.2) + rng.normal(0, 1, (40, 40))
    img[5, 30] += 300
    hit = find_outliers(img[None], err=np.ones((1, 40, 40)))
    assert hit[0, 5, 30]
    assert not hit[0, 17:23, 17:23].any()


@pytest.mark.parametrize("axis", [0, 1, (1, 2), (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_nanmedian_equals_numpy_bit_for_bit(axis, keepdims):
    """The sort-based median of short reductions is numpy's, NaN and all-NaN slices
    included (even and odd counts)."""
    import warnings

    from coron_cli.core import nanmedian

    rng = np.random.default_rng(11)
    v = rng.normal(size=(7, 6, 5))
    v[rng.random(v.shape) < 0.2] = np.nan
    v[:, 0, 0] = np.nan
    v[0, :, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(v, axis=axis, keepdims=keepdims)
    got = nanmedian(v, axis, keepdims=keepdims)
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)
