"""core.select at speed: the stack shifted at once (shift_to) and the region's vectors
computed without the shifted frames (region_vectors), against analytic cases and
against scipy.ndimage.shift frame by frame (what shift_to computed before)."""

import numpy as np
import pytest
from scipy import ndimage

from coron_cli.core.select import (
    correlate,
    normalise,
    region_mask,
    region_scores,
    region_vectors,
    shift_to,
)


def ndimage_reference(frames, star, target):
    """Frame by frame, float64: ndimage.shift of the frame with its bad pixels 0, NaN
    where the shifted bad-pixel map (outside: 1) is above 1e-9."""
    dx, dy = target[0] - star[0], target[1] - star[1]
    out = []
    for f in np.asarray(frames, np.float64):
        bad = ~np.isfinite(f)
        moved = ndimage.shift(np.where(bad, 0.0, f), (dy, dx), order=1, mode="constant",
                              cval=0.0, prefilter=False)
        holes = ndimage.shift(bad.astype(np.float64), (dy, dx), order=1, mode="constant",
                              cval=1.0, prefilter=False)
        moved[holes > 1e-9] = np.nan
        out.append(moved)
    return np.array(out)


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(5)
    f = rng.normal(10.0, 3.0, size=(6, 37, 45)).astype(np.float32)
    f[rng.random(f.shape) < 0.01] = np.nan
    f[2, 10, 11] = np.inf
    return f


SHIFTS = [(0.3, -0.2), (-1.75, 2.5), (4.2, -3.9), (0.0, 0.6), (-0.45, 0.0), (1.0, -2.0),
          (44.5, 0.2), (50.0, 0.0), (-0.9999999, 1e-12)]


@pytest.mark.parametrize("d", SHIFTS)
def test_the_stack_moves_as_ndimage_moves_each_frame(stack, d):
    star = (20.0, 18.0)
    target = (star[0] + d[0], star[1] + d[1])
    got = shift_to(stack, star, target)
    ref = ndimage_reference(stack, star, target)
    assert got.dtype == np.float64 and got.shape == stack.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    # pixels ~10: rounding, and (the last shift) a fraction of 1e-12 taken as none
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("d", SHIFTS[:4])
def test_the_stack_at_once_equals_frame_by_frame(stack, d):
    star, target = (20.0, 18.0), (20.0 + d[0], 18.0 + d[1])
    whole = shift_to(stack, star, target)
    each = np.array([shift_to(f, star, target) for f in stack])
    np.testing.assert_array_equal(whole, each)


def test_an_integer_shift_moves_pixels_exactly():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3, 20, 24))
    f[1, 5, 7] = np.nan
    out = shift_to(f, (10.0, 10.0), (13.0, 8.0))          # dx = +3, dy = -2
    np.testing.assert_array_equal(out[:, :-2, 3:], f[:, 2:, :-3])
    assert np.isnan(out[1, 3, 10])                          # the NaN moved with its pixel
    assert np.isnan(out[:, -2:, :]).all() and np.isnan(out[:, :, :3]).all()
    assert np.isfinite(out[:, :-2, 3:]).sum() == f[:, 2:, :-3].size - 1


def test_a_plane_is_moved_exactly():
    """Bilinear interpolation is exact on a plane: a x + b y + c moved by (dx, dy) is
    a (x - dx) + b (y - dy) + c wherever the source is inside the frame."""
    y, x = np.indices((30, 40), dtype=np.float64)
    a, b, c = 0.7, -1.3, 5.0
    plane = a * x + b * y + c
    dx, dy = 2.35, -1.6
    out = shift_to(np.stack([plane, 2 * plane]), (0.0, 0.0), (dx, dy))
    inside = (x - dx >= 0) & (x - dx <= 39) & (y - dy >= 0) & (y - dy <= 29)
    expect = a * (x - dx) + b * (y - dy) + c
    np.testing.assert_allclose(out[0][inside], expect[inside], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[1][inside], 2 * expect[inside], rtol=0, atol=1e-12)
    assert np.isnan(out[:, ~inside]).all()


def test_float32_frames_give_the_float64_result(stack):
    star, target = (20.0, 18.0), (20.37, 17.71)
    np.testing.assert_array_equal(shift_to(stack, star, target),
                                  shift_to(stack.astype(np.float64), star, target))


def test_inputs_are_not_modified(stack):
    before = stack.copy()
    shift_to(stack, (20.0, 18.0), (20.5, 18.5))
    region_vectors(stack, (20.0, 18.0), (20.5, 18.5), region_mask(stack.shape, (20, 18), 2))
    np.testing.assert_array_equal(stack, before)


def test_no_shift_is_a_copy_and_other_orders_use_the_spline(stack):
    same = shift_to(stack, (3.0, 4.0), (3.0, 4.0))
    np.testing.assert_array_equal(same, stack.astype(np.float64))
    assert not np.shares_memory(same, stack)
    f = np.zeros((1, 21, 21))
    f[0, 10, 10] = 1.0
    cubic = shift_to(f, (10.0, 10.0), (12.0, 9.0), order=3)
    assert cubic[0, 9, 12] == pytest.approx(4 / 6 * 4 / 6)   # the B-spline at 0, no prefilter


@pytest.mark.parametrize("d", SHIFTS)
def test_region_vectors_are_normalise_of_shift_to(stack, d):
    star = (20.0, 18.0)
    target = (star[0] + d[0], star[1] + d[1])
    region = region_mask(stack.shape, target, inner=3.0, outer=25.0)   # partly outside
    got = region_vectors(stack, star, target, region)
    ref = normalise(shift_to(stack, star, target), region)
    assert got.shape == ref.shape == (stack.shape[0], region.sum())
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)
    norms = np.linalg.norm(got, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-12) | (norms == 0))


@pytest.mark.parametrize("d", SHIFTS)
def test_region_scores_are_the_scores_of_region_vectors(stack, d):
    star = (20.0, 18.0)
    target = (star[0] + d[0], star[1] + d[1])
    region = region_mask(stack.shape, target, inner=3.0, outer=25.0)
    rng = np.random.default_rng(2)
    science = normalise(rng.normal(size=(3,) + stack.shape[1:]), region)
    got = region_scores(stack, star, target, region, science)
    ref = correlate(science, region_vectors(stack, star, target, region))
    assert got.shape == (stack.shape[0], 3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)
    one = region_scores(stack[4], star, target, region, science[0])
    np.testing.assert_allclose(one, ref[4:5, :1], rtol=0, atol=1e-14)
    assert region_scores(stack[:0], star, target, region, science).shape == (0, 3)
