"""The outlier (cosmic-ray) search never flags a point source, and still finds cosmic rays.

Point sources are pixel-integrated Airy patterns (the diffraction limit) of FWHM 1.6-1.85 px
(NIRCam long wave) and 3.3 px (MIRI at 11 um), their brightest pixel 10 to 10,000 times the
noise, at random sub-pixel positions, on a flat sky or on the steep halo of a star. Cosmic
rays are single pixels or 2-3 pixel tracks added to white noise of sigma 1.
"""

import numpy as np
import pytest

from coron_cli.core import (
    airy_pixels,
    diffraction_fwhm_pix,
    filter_wavelength_um,
    find_outliers,
    repair_bad_pixels,
    restore_source_pixels,
    sharpness_bound,
)

NIRCAM, MIRI = 1.85, 3.3          # FWHM (pixels): F356W at 0.063"/px, F1140C at 0.11"/px
PEAKS = (10.0, 100.0, 1e3, 1e4)   # brightest pixel of a source, in units of the noise


def scene(shape, sources, fwhm):
    """Noiseless image of point sources ``(y, x, peak)``; ``peak`` is the brightest pixel."""
    yy, xx = np.indices(shape, dtype=np.float64)
    img = np.zeros(shape)
    for y, x, peak in sources:
        psf = airy_pixels(fwhm, np.stack([yy - y, xx - x], axis=-1), oversample=5)
        brightest = airy_pixels(fwhm, np.array([y - round(y), x - round(x)]), oversample=5)
        img += peak * psf / brightest          # also for a source beyond the frame's edge
    return img


def halo(shape, fwhm, height=2e4, centre=None):
    """The steep, smooth halo of a star: a Moffat profile of core radius 2 FWHM."""
    cy, cx = centre if centre is not None else ((shape[0] - 1) / 2 + 0.3, (shape[1] - 1) / 2 - 0.2)
    yy, xx = np.indices(shape, dtype=np.float64)
    r = np.hypot(yy - cy, xx - cx)
    return height * (1.0 + (r / (2.0 * fwhm)) ** 2) ** -1.5


def random_sources(rng, shape, peaks, margin=6, spacing=10.0):
    """Sources at random positions (at least `spacing` apart) with the given peaks."""
    out = []
    while len(out) < len(peaks):
        y, x = rng.uniform(margin, shape[0] - margin), rng.uniform(margin, shape[1] - margin)
        if all(np.hypot(y - a, x - b) >= spacing for a, b, _ in out):
            out.append((y, x, peaks[len(out)]))
    return out


def noisy(rng, img, nint=1):
    cube = np.repeat(np.asarray(img, np.float64)[None], nint, axis=0)
    return cube + rng.normal(0.0, 1.0, cube.shape)


def hits(cube, fwhm, **kw):
    return find_outliers(cube, err=np.ones_like(cube), psf_fwhm=fwhm, **kw)


def cosmic_grid(rng, shape, step=9, margin=5):
    """Well separated positions on a jittered grid (one cosmic ray each)."""
    return [(y + int(rng.integers(-2, 3)), x + int(rng.integers(-2, 3)))
            for y in range(margin + 2, shape[0] - margin - 2, step)
            for x in range(margin + 2, shape[1] - margin - 2, step)]


# --------------------------------------------------------------------------
# filter names and diffraction widths
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name,wave", [
    ("F356W", 3.56), ("F1140C", 11.40), ("F182M", 1.82), ("F444W", 4.44), ("F2300C", 23.00),
    ("F210M", 2.10), ("F070W", 0.70), ("F1065C", 10.65), ("F150W2", 1.50), ("F2550WR", 25.50),
    ("F405N", 4.05), (" f335m ", 3.35),
])
def test_filter_wavelength_from_name(name, wave):
    assert filter_wavelength_um(name) == pytest.approx(wave)


@pytest.mark.parametrize("name", ["CLEAR", "OPAQUE", "F070LP", "FND", "F444W;F405N", "", "F35W",
                                  "F35600W", None, 356, "WLP8"])
def test_filter_wavelength_unknown_is_none(name):
    assert filter_wavelength_um(name) is None


def test_diffraction_fwhm_known_values():
    # 1.029 lambda / D: F356W on NIRCam long wave, F1140C on MIRI, F210M on NIRCam short wave
    assert diffraction_fwhm_pix(3.56, 0.063) == pytest.approx(1.845, abs=0.002)
    assert diffraction_fwhm_pix(11.40, 0.11) == pytest.approx(3.384, abs=0.002)
    assert diffraction_fwhm_pix(2.10, 0.031) == pytest.approx(2.212, abs=0.002)
    # scales with lambda / (D * pixel)
    assert diffraction_fwhm_pix(4.0, 0.1, diameter_m=2.4) == pytest.approx(
        diffraction_fwhm_pix(2.0, 0.1, diameter_m=1.2))
    for args in [(0.0, 0.063), (3.56, -1.0), (np.nan, 0.063), (3.56, 0.063, 0.0)]:
        with pytest.raises(ValueError):
            diffraction_fwhm_pix(*args)


def test_airy_pixels_fwhm_and_integral():
    # finely sampled, the pattern is half its peak at FWHM / 2 and its first zero at 1.22 lambda/D
    fwhm = 2.0
    r = np.array([[0.0, 0.0], [0.0, fwhm / 2], [0.0, 1.22 * fwhm / 1.029]])
    vals = airy_pixels(fwhm, r / 1.0, oversample=1)
    np.testing.assert_allclose(vals, [1.0, 0.5, 0.0], atol=2e-3)
    # pixel integration broadens: the centred pixel's mean is below the peak
    assert airy_pixels(fwhm, np.zeros(2), oversample=15) < 1.0
    # the energy over a large grid is that of an Airy pattern: 4 (lambda/D)^2 / pi
    yy, xx = np.indices((121, 121)) - 60.0
    total = airy_pixels(fwhm, np.stack([yy, xx], -1), oversample=3).sum()
    assert total == pytest.approx(4 * (fwhm / 1.029) ** 2 / np.pi, rel=0.01)


# --------------------------------------------------------------------------
# the bound
# --------------------------------------------------------------------------

def test_bound_is_above_a_centred_source_and_falls_with_the_fwhm():
    nir, mir = sharpness_bound(NIRCAM), sharpness_bound(MIRI)
    assert nir.fwhm == pytest.approx(0.85 * NIRCAM, abs=0.01)
    # a source centred on a pixel at the nominal FWHM: edges 0.48, corners 0.21 of the peak
    yy, xx = np.mgrid[-2:3, -2:3].astype(float)
    psf = airy_pixels(NIRCAM, np.stack([yy, xx], -1), oversample=21)
    ring = np.sort(np.concatenate([psf[0], psf[4], psf[1:4, 0], psf[1:4, 4]]))
    b = ring[:8].mean()
    e0, s = psf[2, 2] - b, np.delete(psf[1:4, 1:4].ravel(), 4).mean() - b
    assert psf[2, 3] / psf[2, 2] == pytest.approx(0.48, abs=0.01)
    assert psf[3, 3] / psf[2, 2] == pytest.approx(0.21, abs=0.01)
    assert e0 / s < nir.ratio[0] / 1.3        # the margin: 30 % below the bound
    assert nir.ratio[1] > nir.ratio[0] > mir.ratio[0] > 1.0
    assert sharpness_bound(None).ratio[0] > nir.ratio[0]   # the default is the sharpest
    assert all(0.0 <= v < 0.05 for row in nir.envelope + mir.envelope for v in row)
    with pytest.raises(ValueError, match="psf_fwhm"):
        sharpness_bound(-1.0)


# --------------------------------------------------------------------------
# one integration: sources are never flagged
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
@pytest.mark.parametrize("background", ["flat", "halo"])
def test_point_sources_never_flagged_in_one_integration(fwhm, background):
    rng = np.random.default_rng(7 if background == "flat" else 8)
    shape = (64, 64)
    sky = halo(shape, fwhm) if background == "halo" else np.full(shape, 3.0)
    for _ in range(4):
        sources = random_sources(rng, shape, PEAKS)
        cube = noisy(rng, sky + scene(shape, sources, fwhm))
        assert not hits(cube, fwhm).any()


@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
def test_bright_sources_at_every_subpixel_phase(fwhm):
    rng = np.random.default_rng(9)
    phases = [0.0, 0.25, 0.5]
    shape = (96, 96)
    sources = [(16 + 30 * i + py, 16 + 30 * j + px, 1e4)
               for i, py in enumerate(phases) for j, px in enumerate(phases)]
    cube = noisy(rng, scene(shape, sources, fwhm))
    assert not hits(cube, fwhm).any()


def test_a_disk_and_a_companion_on_its_ridge_are_not_flagged():
    # an edge-on disk is a line of point sources; a companion sits on it
    rng = np.random.default_rng(10)
    shape = (64, 64)
    t = np.linspace(-25, 25, 120)
    ridge = [(32 + 0.6 * u, 32 + 0.8 * u, 40.0) for u in t]
    img = scene(shape, ridge + [(38.3, 39.6, 300.0), (20.1, 17.9, 3000.0)], NIRCAM)
    assert not hits(noisy(rng, img), NIRCAM).any()


def test_a_companion_whose_peak_pixel_is_bad_keeps_its_other_pixels():
    rng = np.random.default_rng(11)
    shape = (48, 48)
    cube = noisy(rng, scene(shape, [(24.2, 23.8, 1e4)], NIRCAM))
    bad = np.zeros(cube.shape, bool)
    bad[0, 24, 24] = True
    bad[0, 23, 23] = True       # and a second bad pixel beside it
    hit = find_outliers(cube, bad, err=np.ones_like(cube), psf_fwhm=NIRCAM)
    assert not hit.any()


def test_sources_at_the_frame_edge_are_not_flagged():
    rng = np.random.default_rng(12)
    shape = (40, 40)
    sources = [(0.3, 12.0, 1e4), (39.6, 25.4, 1e3), (13.5, 0.9, 1e4), (27.0, 38.7, 1e4),
               (-1.5, 30.0, 1e4), (1.2, 1.4, 3e3)]
    cube = noisy(rng, scene(shape, sources, NIRCAM))
    assert not hits(cube, NIRCAM).any()


@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
def test_sources_beyond_the_frame_edge_are_not_flagged(fwhm):
    # only their wings and rings reach the frame
    rng = np.random.default_rng(14)
    shape = (48, 48)
    for t in (0.7, 3.0, 8.0, 20.0):
        sources = [(20.3, -t, 1e5), (47 + t, 30.6, 1e5)]
        cube = noisy(rng, scene(shape, sources, fwhm))
        assert not hits(cube, fwhm).any()
    # while hits well inside are still found
    cube[0, 24, 24] += 100.0
    assert hits(cube, fwhm)[0, 24, 24]


def test_default_fwhm_is_the_sharpest_and_safe():
    rng = np.random.default_rng(13)
    shape = (64, 64)
    cube = noisy(rng, scene(shape, random_sources(rng, shape, PEAKS), NIRCAM))
    assert not find_outliers(cube, err=np.ones_like(cube)).any()
    cube[0, 5, 50] += 200.0
    assert find_outliers(cube, err=np.ones_like(cube))[0, 5, 50]


# --------------------------------------------------------------------------
# one integration: cosmic rays are found
# --------------------------------------------------------------------------

# Required detection rates of single-pixel hits on a flat sky (noise 1, nsigma 6). The test
# must exceed ~6 sigma_T plus the background's low bias: sigma_T = 2.2 (NIRCam) or 1.3 (MIRI)
# from the noise of the pixel, of its neighbours (times the bound R) and of the background,
# so hits are found half of the time at ~17 sigma at NIRCam sampling and ~8 sigma at MIRI's.
# 20 sigma hits must be found 90 % of the time at NIRCam sampling (measured 91-96 %) and
# always from 30 sigma; every one at MIRI sampling.
@pytest.mark.parametrize("fwhm,amp,rate", [
    (NIRCAM, 20.0, 0.90), (NIRCAM, 30.0, 1.0), (NIRCAM, 100.0, 1.0), (NIRCAM, 1e3, 1.0),
    (NIRCAM, 1e4, 1.0), (MIRI, 20.0, 1.0), (MIRI, 1e4, 1.0),
])
def test_single_pixel_cosmic_rays_are_found(fwhm, amp, rate):
    rng = np.random.default_rng(int(amp) + int(10 * fwhm))
    shape = (64, 64)
    found, false = [], 0
    for _ in range(3):
        cube = noisy(rng, np.zeros(shape))
        pos = cosmic_grid(rng, shape)
        for y, x in pos:
            cube[0, y, x] += amp
        hit = hits(cube, fwhm)[0]
        found += [hit[p] for p in pos]
        truth = np.zeros(shape, bool)
        truth[tuple(np.array(pos).T)] = True
        false += int((hit & ~truth).sum())
    assert np.mean(found) >= rate
    assert false == 0


STEPS = [(0, 1), (1, 0), (1, 1), (1, -1)]


# Tracks: the fainter pixel of a 2-pixel track is 30-100 % of the brighter, the middle of a
# 3-pixel track the brightest (a track through a pixel leaves most charge there). With the
# faintest pixel >= 30 sigma every pixel is found at NIRCam and MIRI sampling.
@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
@pytest.mark.parametrize("size", [2, 3])
def test_cosmic_ray_tracks_are_found(fwhm, size):
    rng = np.random.default_rng(20 + size)
    shape = (64, 64)
    found = []
    for amp in (100.0, 1e3, 1e4):
        cube = noisy(rng, np.zeros(shape))
        pixels = []
        for y, x in cosmic_grid(rng, shape, step=10):
            dy, dx = STEPS[int(rng.integers(4))]
            rel = rng.uniform(0.3, 1.0, size)
            rel[size // 2] = 1.0
            for k in range(size):
                p = (y + k * dy, x + k * dx)
                cube[0][p] += amp * rel[k]
                pixels.append(p)
        hit = hits(cube, fwhm)[0]
        found += [hit[p] for p in pixels]
        truth = np.zeros(shape, bool)
        truth[tuple(np.array(pixels).T)] = True
        assert not (hit & ~truth).any()
    assert np.mean(found) >= 0.99


def test_cosmic_rays_on_a_halo_are_found_where_it_is_gentle():
    # the background is the faintest half of the ring, below the pixel on a slope: the
    # sensitivity falls with the slope (by about (R0 - 1) * 1.5 * slope)
    rng = np.random.default_rng(30)
    shape = (96, 96)
    sky = halo(shape, NIRCAM)
    slope = np.hypot(*np.gradient(sky))
    cube = noisy(rng, sky)
    pos = cosmic_grid(rng, shape)
    for y, x in pos:
        cube[0, y, x] += 100.0
    hit = hits(cube, NIRCAM)[0]
    gentle = [hit[p] for p in pos if slope[p] < 10.0]
    assert len(gentle) > 50 and all(gentle)
    truth = np.zeros(shape, bool)
    truth[tuple(np.array(pos).T)] = True
    assert not (hit & ~truth).any()


# --------------------------------------------------------------------------
# two and more integrations
# --------------------------------------------------------------------------

def jittered(rng, shape, sources, fwhm, nint, jitter):
    frames = []
    for _ in range(nint):
        dy, dx = rng.normal(0.0, jitter, 2)
        frames.append(scene(shape, [(y + dy, x + dx, p) for y, x, p in sources], fwhm))
    return np.stack(frames) + rng.normal(0.0, 1.0, (nint,) + shape)


@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
@pytest.mark.parametrize("jitter", [0.0, 0.05, 0.2, 0.5])
def test_two_integrations_sources_with_jitter_not_flagged(fwhm, jitter):
    rng = np.random.default_rng(40)
    shape = (48, 48)
    for _ in range(2):
        cube = jittered(rng, shape, random_sources(rng, shape, PEAKS), fwhm, 2, jitter)
        assert not hits(cube, fwhm).any()


@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
def test_two_integrations_cosmic_rays_found_in_the_right_one(fwhm):
    rng = np.random.default_rng(41)
    shape = (64, 64)
    sources = random_sources(rng, shape, PEAKS)
    cube = jittered(rng, shape, sources, fwhm, 2, 0.02)
    pos = [p for p in cosmic_grid(rng, shape, step=13)
           if min(np.hypot(p[0] - y, p[1] - x) for y, x, _ in sources) > 8]
    for i, (y, x) in enumerate(pos):
        cube[i % 2, y, x] += 50.0
    hit = hits(cube, fwhm)
    for i, (y, x) in enumerate(pos):
        assert hit[i % 2, y, x] and not hit[1 - i % 2, y, x]
    assert hit.sum() == len(pos)
    # a hit on a companion's core, four times its peak, is sharper than any source
    cube[1, int(round(sources[2][0])), int(round(sources[2][1]))] += 4e3
    assert hits(cube, fwhm)[1, int(round(sources[2][0])), int(round(sources[2][1]))]


@pytest.mark.parametrize("nint", [3, 5])
@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
def test_several_integrations_consistent_sources_never_flagged(nint, fwhm):
    # JWST's pointing holds to a few mas within an exposure: 0.05 px rms is generous
    rng = np.random.default_rng(50 + nint)
    shape = (48, 48)
    for background in ("flat", "halo"):
        sky = halo(shape, fwhm) if background == "halo" else 0.0
        cube = jittered(rng, shape, random_sources(rng, shape, PEAKS), fwhm, nint, 0.05) + sky
        assert not hits(cube, fwhm).any()


@pytest.mark.parametrize("nint", [3, 5])
def test_several_integrations_cosmic_rays_found_also_on_a_companion(nint):
    rng = np.random.default_rng(60 + nint)
    shape = (48, 48)
    sources = random_sources(rng, shape, PEAKS)
    cube = jittered(rng, shape, sources, NIRCAM, nint, 0.02)
    truth = np.zeros(cube.shape, bool)
    for k, (y, x) in enumerate(cosmic_grid(rng, shape, step=11)):
        cube[k % nint, y, x] += 20.0 + 100.0 * k
        truth[k % nint, y, x] = True
    # on the core of the 1000-sigma companion, as bright as its peak (changes below 6 rel = 18 %
    # of the local peak, and jitter, are tolerated): the integrations decide
    y, x = int(round(sources[2][0])), int(round(sources[2][1]))
    cube[1, y, x] += 1000.0
    truth[1, y, x] = True
    hit = hits(cube, NIRCAM)
    np.testing.assert_array_equal(hit, truth)


def test_where_integrations_cannot_decide_the_single_frame_test_is_used():
    rng = np.random.default_rng(70)
    shape = (40, 40)
    cube = jittered(rng, shape, [(20.3, 19.6, 1e4)], NIRCAM, 3, 0.02)
    bad = np.zeros(cube.shape, bool)
    # a cosmic ray where one integration is bad (pair rule) and where two are (single)
    cube[0, 8, 8] += 300.0
    bad[2, 8, 8] = True
    cube[2, 30, 30] += 300.0
    bad[0:2, 30, 30] = True
    # the companion's core bad in two integrations: its good value is not flagged
    bad[0:2, 20, 20] = True
    hit = find_outliers(cube, bad, err=np.ones_like(cube), psf_fwhm=NIRCAM)
    assert hit[0, 8, 8] and hit[2, 30, 30]
    assert hit.sum() == 2


# --------------------------------------------------------------------------
# contract: inputs, dtypes, the old call, giving values back
# --------------------------------------------------------------------------

def test_inputs_unchanged_and_old_call_works():
    rng = np.random.default_rng(80)
    shape = (32, 32)
    cube = noisy(rng, scene(shape, [(15.2, 16.7, 500.0)], NIRCAM), nint=2).astype(np.float32)
    cube[1, 5, 5] += 400.0
    err = np.ones_like(cube)
    bad = np.zeros(cube.shape, bool)
    bad[0, 3, 3] = True
    cube[0, 3, 3] = np.nan
    copies = [a.copy() for a in (cube, err, bad)]
    hit = find_outliers(cube, bad, err=err)            # the call the pipeline makes
    for a, c in zip((cube, err, bad), copies):
        np.testing.assert_array_equal(a, c)
    assert hit.dtype == bool and hit.shape == cube.shape
    assert hit[1, 5, 5] and not hit[bad].any()
    with pytest.raises(ValueError, match="3-D"):
        find_outliers(cube[0])
    with pytest.raises(ValueError, match="psf_fwhm"):
        find_outliers(cube, psf_fwhm=0.0)


def test_restore_source_pixels_gives_back_outliers_on_sources():
    original = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6)
    outliers = np.zeros(original.shape, bool)
    outliers[0, 1, 1] = outliers[1, 4, 4] = outliers[1, 2, 3] = True
    repaired = repair_bad_pixels(original + 1000 * outliers, outliers)
    sources = np.zeros((6, 6), bool)
    sources[4:, 4:] = True                              # one mask for all integrations
    values, kept = restore_source_pixels(repaired, original, outliers, sources)
    assert values[1, 4, 4] == original[1, 4, 4]
    np.testing.assert_array_equal(values[~(outliers & sources[None])],
                                  repaired[~(outliers & sources[None])])
    np.testing.assert_array_equal(kept, outliers & ~sources[None])
    assert values.dtype == repaired.dtype
    with pytest.raises(ValueError, match="same shape"):
        restore_source_pixels(repaired, original[:1], outliers, sources)


# --------------------------------------------------------------------------
# slower: the sharpest NIRCam sampling, sources in pairs
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_sharp_nircam_sampling_sources_never_flagged_and_rays_found():
    fwhm = 1.6
    rng = np.random.default_rng(90)
    shape = (64, 64)
    for background in ("flat", "halo"):
        sky = halo(shape, fwhm) if background == "halo" else 0.0
        for _ in range(3):
            cube = noisy(rng, sky + scene(shape, random_sources(rng, shape, PEAKS), fwhm))
            assert not hits(cube, fwhm).any()
    # at 1.6 px a centred source is sharper: hits are found from ~30 sigma (20 sigma: ~15 %)
    found = []
    for _ in range(3):
        cube = noisy(rng, np.zeros(shape))
        pos = cosmic_grid(rng, shape)
        for y, x in pos:
            cube[0, y, x] += 40.0
        hit = hits(cube, fwhm)[0]
        found += [hit[p] for p in pos]
        assert hit.sum() == sum(hit[p] for p in pos)
    assert np.mean(found) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("fwhm", [NIRCAM, MIRI])
def test_pairs_of_sources_never_flagged(fwhm):
    # a bright source and a fainter one (0.1 % to 100 %) at 0.5 to 12 pixels: the rings of one
    # cross the core of the other
    rng = np.random.default_rng(91)
    shape = (48, 48)
    for _ in range(40):
        q = 10 ** rng.uniform(-3, 0)
        sep, ang = rng.uniform(0.5, 12.0), rng.uniform(0, 2 * np.pi)
        y, x = rng.uniform(4, 44, 2)
        sources = [(y, x, 1e4), (y + sep * np.sin(ang), x + sep * np.cos(ang), 1e4 * q)]
        cube = noisy(rng, scene(shape, sources, fwhm))
        assert not hits(cube, fwhm).any()


@pytest.mark.parametrize("model", [0.8, 1.55, 2.85])
def test_precomputed_sharpness_table_matches_the_computation(model):
    """The table (python -m coron_cli._tables) is what the computation gives on its grid,
    and off the grid its ratio is interpolated on the chord: never below the exact one."""
    from coron_cli.core.badpix import _sharpness_bound, _tabulated_bound

    exact = _sharpness_bound.__wrapped__(model)
    table = _tabulated_bound(model)
    assert np.allclose(table.ratio, exact.ratio, rtol=1e-9)
    assert np.allclose(table.envelope, exact.envelope, rtol=1e-6, atol=1e-12)
    off = round(model + 0.02, 2)
    between = _tabulated_bound(off)
    assert all(a >= b for a, b in zip(between.ratio, _sharpness_bound.__wrapped__(off).ratio))
