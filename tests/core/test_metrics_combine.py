import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from coron_cli.core import (
    annular_profile,
    aperture_snr,
    calibrate_error,
    source_regions,
    combine_images,
    contrast_curve,
    north_up,
    snr_image,
    student_t_factor,
)


def test_snr_image_nan_where_err_bad():
    sci = np.array([[2.0, 2.0, 2.0, np.nan]])
    err = np.array([[1.0, 0.0, np.nan, 1.0]])
    out = snr_image(sci, err)
    assert out[0, 0] == 2.0 and np.isnan(out[0, 1:]).all()


def test_annular_sigma_of_known_noise():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 3.0, size=(201, 201))
    r, s, n = annular_profile(img, (100, 100), width=4)
    assert r[0] == 2.0 and (np.diff(r) == 4).all()
    far = n > 400
    assert_allclose(s[far], 3.0, rtol=0.1)
    assert_allclose(np.median(s[far]), 3.0, rtol=0.03)
    assert n.sum() == img.size


def test_annular_profile_whole_pixel_bins():
    img = np.zeros((5, 5))
    img[2, 2] = 1.0
    r, s, n = annular_profile(img, (2, 2), width=1)
    assert n[0] == 5 or n[0] >= 1  # r<1 holds the centre only; bins of <2 pixels are dropped
    assert (s >= 0).all()


def test_student_t_factor_tabulated():
    fpf = stats.norm.sf(5)
    # n = 10 resolution elements: Student-t with 9 degrees of freedom, times sqrt(1 + 1/10)
    assert_allclose(student_t_factor(10), stats.t.isf(fpf, 9) * np.sqrt(1 + 1 / 10))
    assert_allclose(student_t_factor(10.9), student_t_factor(10))  # whole elements
    # it tends to 5 for large n and is much larger close in
    assert_allclose(student_t_factor(1e6), 5.0, rtol=1e-3)
    assert student_t_factor(2 * np.pi * 1) > 15
    assert np.isnan(student_t_factor(1.5))


def test_contrast_curve_scales_with_flux():
    c1 = contrast_curve(np.array([10.0]), np.array([2.0]), star_flux=1e4, fwhm=2)
    c2 = contrast_curve(np.array([10.0]), np.array([2.0]), star_flux=2e4, fwhm=2)
    assert_allclose(c1, 2 * c2)


def test_north_up_moves_source_to_sky_position():
    shape = (61, 61)
    star = (30.3, 29.8)
    rho, theta, phi = 12.0, 40.0, 25.0
    x = star[0] - rho * np.sin(np.deg2rad(theta - phi))
    y = star[1] + rho * np.cos(np.deg2rad(theta - phi))
    yy, xx = np.indices(shape)
    img = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
    out = north_up(img, phi, star)
    c = (30.0, 30.0)
    ex = c[0] - rho * np.sin(np.deg2rad(theta))
    ey = c[1] + rho * np.cos(np.deg2rad(theta))
    w = np.nan_to_num(out)
    cy, cx = (np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum())
    assert abs(cx - ex) < 0.05 and abs(cy - ey) < 0.05


def test_combine_inverse_variance():
    a = np.full((2, 2), 1.0)
    b = np.full((2, 2), 4.0)
    img, var = combine_images(np.stack([a, b]), np.stack([np.full((2, 2), 1.0),
                                                          np.full((2, 2), 3.0)]))
    assert_allclose(img, (1 * 1 + 4 / 3) / (1 + 1 / 3))
    assert_allclose(var, 1 / (1 + 1 / 3))
    nan = np.stack([np.full((2, 2), np.nan), b])
    img, _ = combine_images(nan, np.ones((2, 2, 2)))
    assert_allclose(img, 4.0)


def test_calibrate_error_matches_residual_noise():
    rng = np.random.default_rng(5)
    res = rng.normal(0, 3.0, size=(101, 101))
    err = np.ones_like(res)
    out = calibrate_error(res, err, (50, 50), width=4)
    z = res / out
    assert_allclose(np.std(z[np.hypot(*np.indices(res.shape) - 50) > 5]), 1.0, atol=0.05)
    # an error that is already right is not inflated noticeably
    out2 = calibrate_error(res, np.full_like(res, 3.0), (50, 50), width=4)
    assert np.median(out2) < 3.3


def _airy_like(shape, x0, y0, peak, lod=2.2):
    """A point source with a core, a first ring and an r**-3 halo."""
    yy, xx = np.indices(shape, dtype=np.float64)
    r = np.hypot(xx - x0, yy - y0) / lod
    core = np.exp(-r ** 2 / (2 * 0.45 ** 2))
    ring = 0.0175 * np.exp(-(r - 1.63) ** 2 / (2 * 0.2 ** 2))
    halo = np.where(r > 1.3, 0.076 / np.maximum(r, 1.3) ** 3, 0.0)
    return peak * (core + ring + halo)


def test_calibrate_error_not_inflated_by_bright_companions():
    # two bright companions at nearly the same radius fill part of the annuli
    rng = np.random.default_rng(11)
    shape, c = (121, 121), (60.0, 60.0)
    res = rng.normal(0, 2.0, shape)
    res += _airy_like(shape, 72.0, 62.0, 600.0) + _airy_like(shape, 50.0, 67.0, 250.0)
    err = np.ones(shape)
    naive = calibrate_error(res, err, c, sources=None)
    out = calibrate_error(res, err, c)
    r = np.hypot(*(np.indices(shape) - 60.0))
    ring = (r > 10) & (r < 14)
    # the true noise is 2: the planets inflate the naive error (by 16 %; the 3-sigma
    # clip keeps their cores out, not their rings and halo)
    assert np.median(naive[ring]) > 2.2
    assert_allclose(np.median(out[ring]), 2.0, rtol=0.15)
    # far from them nothing changes
    assert_allclose(out[r > 30], naive[r > 30], rtol=1e-6)


def test_calibrate_error_on_pure_noise_ignores_the_source_search():
    rng = np.random.default_rng(12)
    res = rng.normal(0, 3.0, (3, 81, 81))
    a = calibrate_error(res, np.ones_like(res), (40, 40))
    b = calibrate_error(res, np.ones_like(res), (40, 40), sources=None)
    assert_allclose(a, b)


def test_calibrate_error_counts_a_negative_speckle_as_noise():
    # a lone negative region is a residual speckle, not a source: it stays in the
    # statistics (a positive one of the same size is left out)
    rng = np.random.default_rng(16)
    shape, c = (81, 81), (40.0, 40.0)
    yy, xx = np.indices(shape)
    blob = 9.0 * np.exp(-((xx - 52.0) ** 2 + (yy - 40.0) ** 2) / (2 * 1.5 ** 2))
    res = rng.normal(0, 1.0, shape)
    err = np.ones(shape)
    neg = calibrate_error(res - blob, err, c)
    assert_allclose(neg, calibrate_error(res - blob, err, c, sources=None))
    pos = calibrate_error(res + blob, err, c)
    ring = np.abs(np.hypot(xx - 40.0, yy - 40.0) - 12.0) < 1.0
    assert np.median(neg[ring]) > np.median(pos[ring])


def test_calibrate_error_deflates_an_error_that_is_too_large():
    rng = np.random.default_rng(13)
    res = rng.normal(0, 1.0, (101, 101))
    out = calibrate_error(res, np.full(res.shape, 2.0), (50, 50), width=4, deflate=True)
    r = np.hypot(*(np.indices(res.shape) - 50))
    assert_allclose(np.median(out[r > 8]), 1.0, rtol=0.05)
    # without deflate the error is only ever increased
    assert (calibrate_error(res, np.full(res.shape, 2.0), (50, 50)) >= 2.0).all()


def test_source_regions_disks_grow_with_brightness():
    shape = (101, 101)
    faint = _airy_like(shape, 30.0, 50.0, 8.0)
    bright = _airy_like(shape, 70.0, 50.0, 800.0)
    m = source_regions(faint + bright, 5.0)
    yy, xx = np.indices(shape)
    assert m[50, 30] and m[50, 70] and not m[10, 10]
    area_faint = m[(xx < 50)].sum()
    area_bright = m[(xx >= 50)].sum()
    assert area_bright > 3 * area_faint
    # negative sources too; nothing on a map below the threshold
    assert source_regions(-(faint + bright), 5.0).sum() == m.sum()
    assert not source_regions(np.full(shape, 4.9), 5.0).any()
    # one mask per image plane
    both = source_regions(np.stack([faint, np.zeros(shape)]), 5.0)
    assert both[0].any() and not both[1].any()


def test_source_regions_tight_for_the_fit():
    shape = (101, 101)
    star = (2.0, 98.0)                  # far: the half-way limit plays no part at first
    bright = _airy_like(shape, 62.0, 50.0, 400.0)
    alone = source_regions(bright, 5.0, center=star)
    # a broad lobe of the bright source's halo is part of it, not a source of its own
    yy, xx = np.indices(shape)
    lobe = 6.0 * np.exp(-((xx - 53.0) ** 2 + (yy - 50.0) ** 2) / (2 * 1.5 ** 2))
    assert source_regions(bright + lobe, 5.0, center=star).sum() == alone.sum()
    assert source_regions(bright + lobe, 5.0).sum() > source_regions(bright, 5.0).sum()
    # a faint isolated peak far away still is one, with a core no wider than the brightest's
    faint = 7.0 * np.exp(-((xx - 20.0) ** 2 + (yy - 80.0) ** 2) / (2 * 2.5 ** 2))
    both = source_regions(bright + faint, 5.0, center=star)
    assert both[80, 20] and np.hypot(xx - 20.0, yy - 80.0)[both & ~alone].max() < 5.0
    # the disk of a source 12 px from the star stops half-way to it
    assert source_regions(bright, 5.0)[50, 50] and alone[50, 50]
    near = source_regions(bright, 5.0, center=(50.0, 50.0))
    assert near[50, 62] and not near[50, 50] and not near[50, 55]
    assert np.hypot(xx - 62.0, yy - 50.0)[near].max() <= 6.0 + 1e-9


def test_aperture_snr_of_injected_source():
    rng = np.random.default_rng(2)
    img = rng.normal(0, 1, (81, 81))
    yy, xx = np.indices(img.shape)
    img += 8 * np.exp(-((xx - 55) ** 2 + (yy - 40) ** 2) / (2 * 1.0 ** 2))
    snr, flux = aperture_snr(img, [[55, 40]], (40, 40), fwhm=2.5)
    assert snr[0] > 5 and flux[0] > 0
    snr0, _ = aperture_snr(img, [[40, 60]], (40, 40), fwhm=2.5)
    assert abs(snr0[0]) < 4


def test_grouped_median_matches_numpy_across_scales():
    from coron_cli.core.metrics import _grouped_median, _grouped_robust_std

    rng = np.random.default_rng(14)
    g = rng.integers(0, 6, 5000)
    # groups whose values differ by 15 orders of magnitude, with ties and outliers
    v = rng.standard_normal(g.size) * 10.0 ** (3 * g - 6)
    v[::7] = 0.0
    v[::101] *= 1e9
    for k in range(6):
        sel = g == k
        want = np.median(v[sel])
        assert _grouped_median(v, g, 7)[k] == want
        mad = 1.4826 * np.median(np.abs(v[sel] - want))
        assert _grouped_robust_std(v, g, 7)[k] == pytest.approx(mad, rel=1e-12)
    assert np.isnan(_grouped_median(v, g, 7)[6])


def test_grouped_clipped_std_is_a_std_that_ignores_outliers():
    from coron_cli.core.metrics import _grouped_clipped_std, _grouped_robust_std

    rng = np.random.default_rng(15)
    n = 20000
    g = np.repeat(np.arange(3), n)
    gauss = rng.standard_normal(n) * 2.0
    gauss[::50] = 1e3                                  # 2 % wild outliers
    heavy = rng.standard_t(5, n)                       # std sqrt(5/3) = 1.29
    scaled = rng.standard_normal(n) * 1e-6
    v = np.concatenate([gauss, heavy, scaled])
    s = _grouped_clipped_std(v, g, 3)[0]
    assert s[0] == pytest.approx(2.0, rel=0.02)       # the outliers do not count
    assert s[2] == pytest.approx(1e-6, rel=0.02)
    # a heavy-tailed distribution: nearer its std than the MAD, which sees only the core
    mad = _grouped_robust_std(v, g, 3)[1]
    true = np.sqrt(5.0 / 3.0)
    assert mad < s[1] < true and abs(s[1] - true) < 0.7 * abs(mad - true)


def test_grouped_spread_sees_a_negative_tail_but_not_a_positive_one():
    from coron_cli.core.metrics import _grouped_clipped_std, _grouped_spread

    rng = np.random.default_rng(17)
    n = 4000
    base = rng.standard_normal((3, n))
    base[1, ::25] = -4.5                         # a heavy tail of speckle, both ways
    base[1, 12::25] = +4.5
    base[2, ::25] = +4.5                         # a positive tail only (like source light)
    v = base.ravel()
    g = np.repeat(np.arange(3), n)
    s, _ = _grouped_spread(v, g, 3)
    s3, _ = _grouped_clipped_std(v, g, 3)
    assert s[0] == pytest.approx(s3[0])          # plain noise: the clipped std
    assert s[0] == pytest.approx(1.0, rel=0.05)
    assert s[1] > 1.15 * s3[1]                    # seen on the negative side: noise
    assert s[1] == pytest.approx(np.std(base[1]), rel=0.15)
    assert s[2] == pytest.approx(s3[2])          # a positive tail may be a source


def test_calibrate_error_survives_sources_everywhere():
    """A constant offset of several sigma over the whole frame makes every pixel a
    'source'; the calibration must still return an error (it crashed with IndexError)."""
    from coron_cli.core import calibrate_error

    rng = np.random.default_rng(0)
    res = 4.0 + rng.normal(0, 1, (40, 40))
    out = calibrate_error(res, np.ones((40, 40)), (20, 20))
    assert out.shape == (40, 40) and np.isfinite(out).all() and (out >= 1).all()


def test_source_footprints_cover_an_extended_source_and_not_noise():
    from coron_cli.core import source_footprints

    rng = np.random.default_rng(4)
    z = rng.normal(0, 1, (80, 80))
    assert not source_footprints(z, 5.0, low=2.0, smooth=1.0).any()
    y, x = np.indices(z.shape)
    # an edge-on "disk" through the star at (40, 40): a line of significance 3, peaking at 8
    along = (x - 40) * np.cos(0.5) + (y - 40) * np.sin(0.5)
    across = -(x - 40) * np.sin(0.5) + (y - 40) * np.cos(0.5)
    disk = np.where(np.abs(along) < 30, 3.0 + 5.0 * np.exp(-((along - 12) / 3) ** 2), 0) \
        * np.exp(-0.5 * (across / 1.5) ** 2)
    fp = source_footprints(z + disk, 5.0, low=2.0, smooth=1.0, inner=6.0, center=(40, 40))
    on = (np.abs(across) < 1) & (np.abs(along) > 8) & (np.abs(along) < 26)
    assert fp[on].mean() > 0.9
    assert not fp[np.hypot(x - 40, y - 40) < 6].any()
    assert fp.sum() < 0.2 * fp.size


def test_sky_offsets_and_position_angle_are_inverse():
    from coron_cli import core

    # north up (roll 0): PA 0 is +y, PA 90 (east) is -x
    assert np.allclose(core.sky_offsets(2.0, 0.0, 0.0), [0.0, 2.0])
    assert np.allclose(core.sky_offsets(2.0, 90.0, 0.0), [-2.0, 0.0])
    # the detector's +y axis at 30 deg east of north: a source at PA 30 lies along +y
    assert np.allclose(core.sky_offsets(3.0, 30.0, 30.0), [0.0, 3.0])
    rng = np.random.default_rng(2)
    sep, pa, roll = rng.uniform(1, 50, 20), rng.uniform(0, 360, 20), rng.uniform(-180, 180)
    dx, dy = core.sky_offsets(sep, pa, roll).T
    assert np.allclose(np.hypot(dx, dy), sep)
    back = core.position_angle(dx, dy, roll)
    assert np.allclose((back - pa + 180) % 360 - 180, 0, atol=1e-9)
    assert ((back >= 0) & (back < 360)).all()


def test_mean_frames_is_the_mean_and_the_variance_of_the_mean():
    from coron_cli import core

    sci = np.array([[[1.0, 2.0]], [[3.0, np.nan]], [[5.0, 6.0]]])
    err = np.array([[[1.0, 2.0]], [[1.0, 2.0]], [[1.0, 0.0]]])   # ERR 0: left out
    img, var = core.mean_frames(sci, err)
    assert np.allclose(img, [[3.0, 2.0]]) and np.allclose(var, [[3.0 / 9.0, 4.0]])
    img, var = core.mean_frames(np.full((2, 1, 1), np.nan), np.ones((2, 1, 1)))
    assert np.isnan(img).all() and np.isnan(var).all()


def test_frame_noise_of_white_noise_on_a_smooth_scene():
    from coron_cli import core

    rng = np.random.default_rng(4)
    y, x = np.indices((128, 128))
    scene = 20.0 * np.exp(-((x - 64) ** 2 + (y - 64) ** 2) / 5000.0)   # smooth halo
    cube = np.stack([scene + rng.normal(0, s, scene.shape) for s in (1.0, 3.0)])
    noise = core.frame_noise(cube)
    assert noise.shape == cube.shape and noise.dtype == np.float32
    assert np.allclose(noise[:, 0, 0], [1.0, 3.0], rtol=0.05)
    assert (core.frame_noise(np.zeros((1, 4, 4))) == 1).all()      # no estimate: 1


def test_a_covered_annulus_blends_smoothly_into_its_neighbours():
    """Where the sources' disks cover an annulus, its excess comes from its neighbours;
    one pixel more or less under a disk moves it by a step, never by a switch (a
    one-pixel change once moved the i2d's ERR at a planet by 16 %)."""
    from coron_cli.core.metrics import _blend_covered

    counts = np.full(9, 200)
    masked = np.array([5.0, 5, 5, 5, 50, 5, 5, 5, 5])   # the middle annulus measures 50
    excess = np.full(9, 999.0)
    out = []
    for k in range(30, 71):                           # the sources leave 15 % to 35 % of it
        kept = np.full(9, 200)
        kept[4] = k
        out.append(_blend_covered(excess, masked, kept, counts)[4])
    out = np.array(out)
    assert out[0] == pytest.approx(5.0) and out[-1] == pytest.approx(50.0)
    assert np.all(np.diff(out) >= 0) and np.abs(np.diff(out)).max() <= 0.05 * 45 + 1e-9
    # annuli the sources leave alone keep their own value; a tiny one keeps `excess`
    assert np.allclose(_blend_covered(excess, masked, counts.copy(), counts), masked)
    kept = counts.copy()
    kept[0], counts2 = 3, counts.copy()
    counts2[0] = 5
    assert _blend_covered(excess, masked, kept, counts2)[0] == 999.0
