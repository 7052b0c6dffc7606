"""core.select: the region, the shift, Pearson scores against analytic cases, the ranking."""

import numpy as np
import pytest

from coron_cli.core.select import (
    correlate,
    largest_radius,
    normalise,
    rank_frames,
    region_mask,
    shift_to,
)
from tests.helpers import gaussian_psf


def test_region_is_the_annulus_about_the_star():
    m = region_mask((32, 32), (15.5, 15.5), inner=4, outer=None)
    assert largest_radius((32, 32), (15.5, 15.5)) == 16.0
    y, x = np.indices((32, 32))
    r = np.hypot(x - 15.5, y - 15.5)
    np.testing.assert_array_equal(m, (r >= 4) & (r <= 16))
    assert not m[15, 15] and m[15, 2] and not m[0, 0]


def test_pearson_against_analytic_cases():
    rng = np.random.default_rng(1)
    sci = gaussian_psf((32, 32), 16, 16) + 0.1 * rng.normal(size=(32, 32))
    region = region_mask(sci.shape, (16, 16), inner=3)
    s = normalise(sci, region)
    frames = np.array([sci, -sci, 3 * sci + 7, rng.normal(size=(32, 32))])
    scores = correlate(s, normalise(frames, region))[:, 0]
    assert scores[0] == pytest.approx(1.0, abs=1e-12)
    assert scores[1] == pytest.approx(-1.0, abs=1e-12)
    assert scores[2] == pytest.approx(1.0, abs=1e-12)      # gain and offset do not count
    assert abs(scores[3]) < 0.15                            # noise: ~1/sqrt(npix)
    ref = np.corrcoef(sci[region], frames[3][region])[0, 1]
    assert scores[3] == pytest.approx(ref, abs=1e-12)       # exactly numpy's Pearson


def test_constant_and_nan_frames():
    region = region_mask((16, 16), (8, 8), inner=2)
    v = normalise(np.array([np.ones((16, 16)), np.full((16, 16), np.nan)]), region)
    assert np.all(v == 0)
    f = gaussian_psf((16, 16), 8, 8)
    f[3, 3] = np.nan
    assert np.all(np.isfinite(normalise(f, region)))


def test_integer_shift_is_exact_and_subpixel_matches():
    f = gaussian_psf((32, 32), 14, 15)
    moved = shift_to(f, (14, 15), (16, 16))
    np.testing.assert_allclose(moved[2:-2, 2:-2], gaussian_psf((32, 32), 16, 16)[2:-2, 2:-2],
                               atol=1e-12)
    assert np.isnan(moved[0, 5]) and np.isnan(moved[5, 1]) and np.isfinite(moved[1, 2])
    region = region_mask((32, 32), (16, 16), inner=3, outer=12)
    sub = shift_to(gaussian_psf((32, 32), 15.6, 16.3, sigma=3), (15.6, 16.3), (16, 16))
    score = correlate(normalise(gaussian_psf((32, 32), 16, 16, sigma=3), region),
                      normalise(sub, region))[0, 0]
    assert score > 0.99


def test_ranking_is_by_score_then_name_then_integration():
    scores = np.array([[0.5], [0.9], [0.5], [np.nan], [0.5]])
    names = ["b", "a", "a", "a", "a"]
    ints = [0, 0, 2, 1, 1]
    order = rank_frames(scores, names, ints)[0]
    assert list(order) == [1, 4, 2, 0, 3]


def test_blank_spikes_takes_cosmic_rays_never_a_point_source():
    """Single-pixel hits well above the noise are blanked; pure noise, and point sources
    as sharp as JWST samples them (1.3 px FWHM, centred on a pixel or between two), are
    not, however bright; flagged (NaN) pixels stay NaN."""
    from coron_cli.core.select import blank_spikes

    rng = np.random.default_rng(8)
    noise = rng.normal(size=(6, 64, 64)).astype(np.float32)
    assert blank_spikes(noise.copy()) == 0
    y, x = np.indices((64, 64))
    for cx in (31.0, 31.5):
        for peak in (1e2, 1e5):
            sigma = 1.3 / 2.3548
            img = (peak * np.exp(-((x - cx) ** 2 + (y - 31) ** 2) / (2 * sigma ** 2))
                   + rng.normal(size=(64, 64))).astype(np.float32)[None]
            assert blank_spikes(img) == 0, (cx, peak)
    hit = noise.copy()
    hit[2, 20, 20] += 100.0
    hit[4, 40, 41] += 40.0
    hit[1, 10, 10] = np.nan
    assert blank_spikes(hit) == 2
    assert np.isnan(hit[2, 20, 20]) and np.isnan(hit[4, 40, 41]) and np.isnan(hit[1, 10, 10])
    assert np.isfinite(hit).sum() == hit.size - 3


def test_blank_outliers_takes_tracks_of_several_pixels_never_a_source():
    """Cosmic-ray tracks of two and three pixels in one of two integrations (the middle
    of the three fainter than its ends, as in the simulator's library) are blanked
    whole; noise, and a diffraction-limited source present in both integrations (as
    bright as the tracks), are not; NaN pixels stay NaN."""
    from coron_cli.core.select import blank_outliers

    rng = np.random.default_rng(11)
    y, x = np.indices((64, 64))
    sigma = 2.3 / 2.3548
    src = 5e4 * np.exp(-((x - 40.3) ** 2 + (y - 22.0) ** 2) / (2 * sigma ** 2))
    frames = (src + 20.0 + rng.normal(0.0, 5.0, (2, 64, 64))).astype(np.float32)
    clean = frames.copy()
    assert blank_outliers(clean.copy(), psf_fwhm=2.3) == 0
    frames[1, 50, 10:13] += [62744.0, 11347.0, 31153.0]     # three pixels, middle faintest
    frames[0, 12, 30:32] += [26446.0, 100371.0]             # two pixels
    frames[0, 5, 5] = np.nan
    n = blank_outliers(frames, psf_fwhm=2.3)
    assert n == 5
    assert np.isnan(frames[1, 50, 10:13]).all() and np.isnan(frames[0, 12, 30:32]).all()
    assert np.isnan(frames[0, 5, 5])
    assert np.isfinite(frames).sum() == frames.size - 6
    # the source is untouched
    np.testing.assert_array_equal(frames[:, 15:30, 33:48], clean[:, 15:30, 33:48])


def test_noise_fraction_and_its_correction_against_analytic_cases():
    """Integrations of one PSF with independent noise of sigma: the noise fraction is
    sigma^2 / (var PSF + sigma^2) over the region, the raw Pearson score against the
    noiseless PSF is sqrt(1 - fraction) (here ~0.7) and the corrected one is 1 (to the
    estimate's noise); one frame gives no estimate (NaN) and keeps its score."""
    from coron_cli.core.select import disattenuate, region_scores

    rng = np.random.default_rng(5)
    psf = gaussian_psf((48, 48), 24.0, 24.0, sigma=6.0)
    region = region_mask(psf.shape, (24.0, 24.0), inner=2.0, outer=22.0)
    var_psf = np.var(psf[region], ddof=1)
    sigma = np.sqrt(var_psf)                          # half the frames' variance: noise
    frames = psf + sigma * rng.normal(size=(12, 48, 48))
    science = normalise(psf, region)
    raw, frac = region_scores(frames, (24.0, 24.0), (24.0, 24.0), region, science,
                              noise=True)
    expect = sigma ** 2 / (var_psf + sigma ** 2)
    np.testing.assert_allclose(np.mean(frac), expect, rtol=0.03)
    np.testing.assert_allclose(frac, expect, rtol=0.1)
    np.testing.assert_allclose(raw[:, 0], np.sqrt(1.0 - expect), atol=0.03)
    assert raw.max() < 0.76
    fixed = disattenuate(raw, frac)
    np.testing.assert_allclose(fixed[:, 0], 1.0, atol=0.04)
    # the scores are those without noise=True
    np.testing.assert_array_equal(region_scores(frames, (24.0, 24.0), (24.0, 24.0), region,
                                                science), raw)
    one, f1 = region_scores(frames[:1], (24.0, 24.0), (24.0, 24.0), region, science,
                            noise=True)
    assert np.isnan(f1).all()
    np.testing.assert_array_equal(disattenuate(one, f1), one)


def test_disattenuate_divides_by_the_noiseless_share_clipped():
    from coron_cli.core.select import disattenuate

    got = disattenuate(np.array([[0.5, 0.25], [0.4, -0.2], [0.3, 0.3], [0.1, 0.1]]),
                       np.array([0.75, 0.0, np.nan, 0.99]))
    np.testing.assert_allclose(got, [[1.0, 0.5], [0.4, -0.2], [0.3, 0.3],
                                     [0.1 * np.sqrt(20.0), 0.1 * np.sqrt(20.0)]])
    assert disattenuate(np.array([0.5]), np.array([-0.1]))[0] == 0.5   # below 0: none


def test_source_mask_marks_what_differs_between_rolls_not_the_star():
    """Two rolls of one star (the same PSF, independent noise of sigma) with a companion
    that turns between them: the pixels about the companion in each roll are marked
    (its core and halo above 5 sigma, grown by 2 px: within 7 px), the star's PSF and
    the noise nowhere; one exposure marks nothing."""
    from coron_cli.core.select import source_mask

    rng = np.random.default_rng(2)
    star = 1e4 * gaussian_psf((64, 64), 32.0, 32.0, sigma=3.0)
    sigma = np.full((2, 64, 64), 1.0)
    comp = [(44.0, 32.0), (32.0, 44.0)]
    means = np.array([star + 50.0 * gaussian_psf((64, 64), cx, cy, sigma=1.0)
                      + rng.normal(0.0, 1.0, (64, 64)) for cx, cy in comp])
    mask = source_mask(means, sigma)
    y, x = np.indices((64, 64))
    near = np.zeros((64, 64), bool)
    for cx, cy in comp:
        near |= np.hypot(x - cx, y - cy) <= 7.0
    assert mask[32, 44] and mask[44, 32]
    assert not (mask & ~near).any()
    assert 20 <= mask.sum() <= 150
    assert not source_mask(means[:1], sigma[:1]).any()
    # noise alone marks nothing
    flat = star + rng.normal(0.0, 1.0, (2, 64, 64))
    assert not source_mask(flat, sigma).any()
