"""Rotation to north-up around missing pixels, and means that leave flagged values out."""

import numpy as np

from coron_cli import core


def _smooth(shape=(64, 64)):
    y, x = np.indices(shape, dtype=np.float64)
    return 100.0 * np.exp(-((x - 30.3) ** 2 + (y - 33.1) ** 2) / 300.0) + 0.2 * x


def test_a_hole_does_not_ring_into_the_valid_pixels():
    img = _smooth()
    holed = img.copy()
    holed[30:32, 28:31] = np.nan
    full = core.north_up(img, 23.0, (31.5, 31.5), order=3)
    out = core.north_up(holed, 23.0, (31.5, 31.5), order=3)
    assert np.isnan(out).sum() >= 6                       # the hole stays a hole
    near = np.isnan(out)
    for _ in range(2):                                    # 2 px around it
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) \
            | np.roll(near, -1, 1)
    far = np.isfinite(out) & ~near & np.isfinite(full)
    # the spline's prefilter is global: what the hole is filled with reaches every pixel;
    # filled from its neighbours it stays below 1e-3 of the image
    assert np.nanmax(np.abs(out[far] - full[far])) < 1e-3 * np.nanmax(img)
    # a zero fill would have rung far more
    zero = core.north_up(np.nan_to_num(holed), 23.0, (31.5, 31.5), order=3)
    assert np.nanmax(np.abs(zero[far] - full[far])) > 10 * np.nanmax(np.abs(out[far] - full[far]))


def test_mean_frames_leaves_bad_values_out():
    sci = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0), np.full((2, 2), 1e6)])
    err = np.ones_like(sci)
    bad = np.zeros(sci.shape, bool)
    bad[2] = True                                          # a flagged but finite frame
    bad[1, 0, 0] = True
    img, var = core.mean_frames(sci, err, bad)
    assert np.allclose(img, [[1.0, 2.0], [2.0, 2.0]])
    assert np.allclose(var, [[1.0, 0.5], [0.5, 0.5]])
    img, _ = core.mean_frames(sci, err, np.ones(sci.shape, bool))
    assert np.isnan(img).all()
