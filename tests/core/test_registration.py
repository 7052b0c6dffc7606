import numpy as np
import pytest
from numpy.testing import assert_allclose

from coron_cli.core import align_references, fit_offsets, shift_images
from tests.helpers import gaussian_psf

SHAPE = (64, 64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dx,dy", [(0.37, -0.81), (1.9, 2.3), (-0.05, 0.012), (-3.4, 0.6)])
def test_recovers_subpixel_offset_noiseless(dtype, weighted, dx, dy):
    ref = gaussian_psf(SHAPE, 31.3, 32.1)
    tgt = 1.7 * gaussian_psf(SHAPE, 31.3 + dx, 32.1 + dy)
    w = np.ones(SHAPE) if weighted else None
    fx, fy, s = fit_offsets(ref[None].astype(dtype), tgt.astype(dtype), weights=w)
    assert abs(fx[0] - dx) <= 0.01
    assert abs(fy[0] - dy) <= 0.01
    assert_allclose(s[0], 1.7, rtol=1e-3)


def test_unbiased_on_noisy_float32():
    rng = np.random.default_rng(3)
    ref = 1e4 * gaussian_psf(SHAPE, 31.3, 32.1)
    true = rng.uniform(-0.4, 0.4, size=(40, 2))
    refs = np.stack([ref + rng.normal(0, 5, SHAPE) for _ in true]).astype(np.float32)
    tgt = (1e4 * gaussian_psf(SHAPE, 31.3, 32.1) + rng.normal(0, 5, SHAPE)).astype(np.float32)
    # shifting a reference by -true makes the target its +true shift
    refs = np.stack([shift_images(r, -t[0], -t[1]) for r, t in zip(refs, true)]).astype(np.float32)
    fx, fy, _ = fit_offsets(refs, tgt)
    err = np.stack([fx - true[:, 0], fy - true[:, 1]])
    assert np.abs(err.mean(axis=1)).max() < 0.003
    assert np.sqrt((err ** 2).mean()) < 0.01


def test_shift_convention_and_inverse():
    img = gaussian_psf(SHAPE, 30.0, 30.0)
    moved = shift_images(img, 1.0, 2.0)
    assert np.unravel_index(np.argmax(moved), SHAPE) == (32, 31)
    back = shift_images(moved, -1.0, -2.0)
    assert_allclose(back, img, atol=1e-12)


def test_inputs_not_modified():
    ref = gaussian_psf(SHAPE, 31.3, 32.1)[None].astype(np.float32)
    tgt = gaussian_psf(SHAPE, 31.0, 32.0)[None].astype(np.float32)
    r0, t0 = ref.copy(), tgt.copy()
    align_references(ref, tgt)
    assert np.array_equal(ref, r0) and np.array_equal(tgt, t0)


def test_align_references_puts_refs_on_targets():
    refs = np.stack([gaussian_psf(SHAPE, 31 + a, 32 + b) for a, b in [(0.3, 0.1), (-0.2, 0.4)]])
    tg = np.stack([gaussian_psf(SHAPE, 31.1, 31.8), gaussian_psf(SHAPE, 30.7, 32.2)])
    aligned, dx, dy, scale = align_references(refs, tg)
    assert aligned.shape == (2, 2) + SHAPE and aligned.dtype == np.float32
    for i in range(2):
        for j in range(2):
            assert_allclose(aligned[i, j], tg[i], atol=1e-3)
    assert_allclose(dx[0, 0], 0.1 - 0.3, atol=1e-3)
    assert_allclose(scale, 1.0, atol=1e-3)


def _masked_star(shape, cx, cy, mask_c=(31.5, 32.0), sigma=4.0):
    """A star seen through a fixed soft occulter: the image does not move rigidly."""
    y, x = np.indices(shape, dtype=np.float64)
    trans = (1 - np.exp(-((x - mask_c[0]) ** 2 + (y - mask_c[1]) ** 2) / (2 * sigma ** 2))) ** 2
    return trans * gaussian_psf(shape, cx, cy, sigma=2.0)


def test_dither_model_recovers_offsets_where_rigid_fit_is_biased():
    from coron_cli.core import dither_positions

    ta = np.array([0.13, -0.08])                         # unknown acquisition offset
    grid = np.array([[i, j] for j in (-0.2, 0.0, 0.2) for i in (-0.2, 0.0, 0.2)])
    refs = np.stack([2.0 * _masked_star(SHAPE, 31.5 + ta[0] + gx, 32.0 + ta[1] + gy)
                     for gx, gy in grid])
    sci_pos = np.array([[0.21, 0.05], [0.18, 0.09]])     # science star, absolute offsets
    sci = np.stack([_masked_star(SHAPE, 31.5 + px, 32.0 + py) for px, py in sci_pos])
    rp, rs, tp, ts = dither_positions(refs, grid, sci)
    true = sci_pos[:, None, :] - (ta + grid)[None]       # science minus reference centre
    got = tp[:, None, :] - rp[None]
    model_err = np.abs(got - true).max()
    assert model_err < 0.005
    assert_allclose(ts[:, None] / rs[None], 0.5, rtol=0.01)
    # the rigid shift fit is biased on such data: that is why the model exists
    fx, fy, _ = fit_offsets(refs, sci[0])
    assert np.abs(fx - true[0, :, 0]).max() > 3 * model_err


def test_dither_model_needs_two_dimensional_grid():
    from coron_cli.core import dither_positions

    refs = np.stack([gaussian_psf(SHAPE, 31 + d, 32) for d in (-0.2, 0, 0.2)])
    with pytest.raises(ValueError):
        dither_positions(refs, [[-0.2, 0], [0, 0], [0.2, 0]], refs[:1])


def _cross_power(refs, tgt):
    from scipy import fft as sfft

    R = sfft.rfft2(np.asarray(refs, dtype=np.float64))
    return np.conj(R) * sfft.rfft2(np.asarray(tgt, dtype=np.float64))


@pytest.mark.parametrize("shape", [(64, 64), (96, 128), (75, 81)])
def test_initial_shift_matches_full_correlation_for_large_offsets(shape):
    """The coarse-then-window peak search finds the full cross-correlation peak,
    offsets of many pixels included, and so does every fallback."""
    from coron_cli.core.registration import _full_peak, _initial_shift

    ny, nx = shape
    rng = np.random.default_rng(5)
    true = np.column_stack([rng.uniform(-nx / 4, nx / 4, 12), rng.uniform(-ny / 4, ny / 4, 12)])
    true[:3] = [[0.2, -0.3], [5.6, -7.2], [-11.4, 9.1]]
    cx, cy = nx / 2 - 0.3, ny / 2 + 0.4
    tgt = gaussian_psf(shape, cx, cy) + rng.normal(0, 1e-3, shape)
    refs = np.stack([gaussian_psf(shape, cx - a, cy - b) for a, b in true])
    X = _cross_power(refs, tgt)
    fx, fy = _full_peak(X, ny, nx, 1)
    assert np.abs(fx - true[:, 0]).max() < 0.5 and np.abs(fy - true[:, 1]).max() < 0.5
    for kw in ({}, {"half": 1}, {"half": 1, "rounds": 1}, {"rounds": 0}, {"decimate": 1}):
        gx, gy = _initial_shift(X, ny, nx, 1, **kw)
        assert_allclose(gx, fx, atol=1e-9)
        assert_allclose(gy, fy, atol=1e-9)


def test_align_references_large_offsets():
    refs = np.stack([gaussian_psf(SHAPE, 31 + a, 32 + b) for a, b in [(6.3, -4.1), (-9.2, 7.4)]])
    tg = np.stack([gaussian_psf(SHAPE, 31.1, 31.8), gaussian_psf(SHAPE, 30.7, 32.2)])
    aligned, dx, dy, scale = align_references(refs, tg)
    assert_allclose(dx, [[0.1 - 6.3, 0.1 + 9.2], [-0.3 - 6.3, -0.3 + 9.2]], atol=1e-3)
    assert_allclose(dy, [[-0.2 + 4.1, -0.2 - 7.4], [0.2 + 4.1, 0.2 - 7.4]], atol=1e-3)
    assert_allclose(scale, 1.0, atol=1e-3)
    for i in range(2):
        for j in range(2):
            assert_allclose(aligned[i, j], tg[i], atol=1e-3)


def test_single_precision_shift_matches_double():
    """The aligned cube is shifted in complex64: within 1e-6 (relative) of the
    float64 shift."""
    rng = np.random.default_rng(8)
    refs = np.stack([1e4 * gaussian_psf((80, 96), 47 + a, 40 + b) + rng.normal(0, 3, (80, 96))
                     for a, b in rng.uniform(-2, 2, (5, 2))]).astype(np.float32)
    dx = rng.uniform(-3, 3, (3, 5))
    dy = rng.uniform(-3, 3, (3, 5))
    aligned, gx, gy, gs = align_references(refs, refs[:3], shifts=(dx, dy, np.ones((3, 5))))
    assert aligned.dtype == np.float32
    assert np.array_equal(gx, dx) and np.array_equal(gy, dy)
    for i in range(3):
        ref64 = shift_images(refs, dx[i], dy[i])
        rel = np.sqrt(np.mean((aligned[i] - ref64) ** 2) / np.mean(ref64 ** 2))
        assert rel < 1e-6
        assert np.abs(aligned[i] - ref64).max() < 1e-6 * np.abs(ref64).max()


def test_fit_scale_is_that_of_the_final_shift():
    """The flux scale is F(d) / sum c |R|^2 evaluated exactly at the returned shift
    (the fit carries F along its Newton steps instead of re-evaluating it)."""
    from scipy import fft as sfft

    from coron_cli.core.registration import (_freqs, _hermitian_weights, _moments, _power,
                                             _separable)

    rng = np.random.default_rng(2)
    refs = np.stack([gaussian_psf(SHAPE, 31 + a, 32 + b) + rng.normal(0, 1e-3, SHAPE)
                     for a, b in rng.uniform(-1, 1, (6, 2))])
    tgt = 1.3 * gaussian_psf(SHAPE, 31.2, 31.9)
    fx, fy, s = fit_offsets(refs, tgt)
    c = _hermitian_weights(*SHAPE)
    R = sfft.rfft2(refs)
    ky, kx = _freqs(*SHAPE)
    re, _ = _moments(np.conj(R) * sfft.rfft2(tgt), fx, fy, ky, kx, *_separable(c))
    assert_allclose(s, re[:, 0] / _power(R, c), rtol=1e-12)
    assert_allclose(s, 1.3, rtol=1e-3)


def test_shift_stack_matches_shift_images():
    from coron_cli.core import shift_stack

    rng = np.random.default_rng(4)
    imgs = np.stack([1e3 * gaussian_psf((48, 56), 27 + a, 23 + b) + 5.0
                     for a, b in rng.uniform(-2, 2, (4, 2))])
    dx = rng.uniform(-4, 4, (3, 4))
    dy = rng.uniform(-4, 4, (3, 4))
    out = shift_stack(imgs, dx, dy)
    assert out.shape == (3, 4, 48, 56) and out.dtype == np.float32
    for i in range(3):
        ref64 = shift_images(imgs, dx[i], dy[i])
        assert np.abs(out[i] - ref64).max() < 1e-6 * np.abs(ref64).max()


def test_shift_dq_is_the_or_of_the_four_neighbours():
    from coron_cli.core import shift_dq as _shift_dq

    rng = np.random.default_rng(6)
    nint, nref, ny, nx = 3, 4, 12, 10
    dq = np.where(rng.random((nref, ny, nx)) < 0.2,
                  rng.choice([1, 4, 1024, 1 | 4], (nref, ny, nx)), 0).astype(np.uint32)
    dq[:, 5, 5] = 1 | 1024                              # a flag shared by every reference
    dx = rng.uniform(-7, 7, (nint, nref))
    dy = rng.uniform(-7, 7, (nint, nref))
    got = _shift_dq(dq, dx, dy)
    want = np.zeros((nint, nref, ny, nx), np.uint32)
    for i in range(nint):
        for j in range(nref):
            fx, fy = int(np.floor(dx[i, j])), int(np.floor(dy[i, j]))
            for oy in (0, 1):
                for ox in (0, 1):
                    want[i, j] |= np.roll(dq[j], (fy + oy, fx + ox), axis=(0, 1))
    assert np.array_equal(got, want)
    assert not _shift_dq(np.zeros_like(dq), dx, dy).any()


def test_align_references_weighted_matches_fit_offsets():
    rng = np.random.default_rng(9)
    refs = np.stack([gaussian_psf(SHAPE, 31 + a, 32 + b) for a, b in rng.uniform(-3, 3, (3, 2))])
    tg = np.stack([1.4 * gaussian_psf(SHAPE, 31.2, 31.7), gaussian_psf(SHAPE, 30.6, 32.3)])
    w = np.ones(SHAPE)
    w[:8] = 0.0
    _, dx, dy, scale = align_references(refs, tg, weights=w)
    for i in range(2):
        fx, fy, fs = fit_offsets(refs, tg[i], weights=w)
        assert_allclose(dx[i], fx, atol=1e-9)
        assert_allclose(dy[i], fy, atol=1e-9)
        assert_allclose(scale[i], fs, rtol=1e-9)


def test_align_references_single_precision_cross_power_matches_float64_fit():
    # align_references forms the cross-power in complex64 (its moments are summed in
    # double); fit_offsets does everything in float64: the two agree far below the
    # registration's accuracy
    rng = np.random.default_rng(10)
    refs = np.stack([1e4 * gaussian_psf(SHAPE, 31 + a, 32 + b)
                     for a, b in rng.uniform(-3, 3, (4, 2))])
    tg = np.stack([1.3e4 * gaussian_psf(SHAPE, 31.27, 31.71),
                   0.8e4 * gaussian_psf(SHAPE, 30.62, 32.33)])
    tg = tg + rng.normal(0, 1.0, tg.shape)
    _, dx, dy, scale = align_references(refs.astype(np.float32), tg.astype(np.float32))
    for i in range(2):
        fx, fy, fs = fit_offsets(refs.astype(np.float32), tg[i].astype(np.float32))
        assert_allclose(dx[i], fx, atol=1e-6)
        assert_allclose(dy[i], fy, atol=1e-6)
        assert_allclose(scale[i], fs, rtol=1e-6)


def test_shift_variance_matches_shifted_noise():
    from coron_cli.core import shift_images, shift_stack, shift_variance

    rng = np.random.default_rng(21)
    ny, nx = 24, 32
    var = np.ones((2, ny, nx))
    var[0, 12, 16] = 1e4                       # a hot pixel
    var[1] *= np.linspace(1.0, 9.0, nx)        # a gradient
    dx = np.array([[0.5, -0.25]])
    dy = np.array([[0.3, 0.7]])
    got = shift_variance(var, dx, dy)[0]
    assert got.dtype == np.float32 and (got >= 0).all()
    # shifting the variance map like an image rings below zero next to the hot pixel
    assert shift_stack(var, dx, dy)[0].min() < -10
    # the variance of shifted noise, measured
    nreal = 4000
    emp = np.zeros((2, ny, nx))
    for _ in range(4):
        noise = rng.standard_normal((nreal // 4, 2, ny, nx)) * np.sqrt(var)
        emp += (shift_images(noise, dx[0], dy[0]) ** 2).sum(axis=0) / nreal
    # pixel by pixel within 5 sigma of the sampling noise; on average within 1 % for
    # the gradient (the hot pixel's own sampling noise is 2 % of the first map's mean)
    assert (np.abs(got - emp) <= 5 * np.sqrt(2.0 / nreal) * got + 1e-3).all()
    assert_allclose(got[1].mean(), emp[1].mean(), rtol=0.01)
    assert_allclose(got[0].mean(), emp[0].mean(), rtol=0.07)


def test_large_outputs_on_plain_pages_are_the_same(monkeypatch, tmp_path):
    # cubes above a size threshold are allocated as anonymous memory maps; force
    # that path on small inputs and check the results and that they can be written
    from astropy.io import fits

    from coron_cli.core import align_references, registration, shift_stack, shift_variance
    from coron_cli.products import Product, read_product, write_product

    rng = np.random.default_rng(8)
    imgs = np.stack([1e3 * gaussian_psf((40, 48), 23 + a, 19 + b) + 5.0
                     for a, b in rng.uniform(-1, 1, (5, 2))]).astype(np.float32)
    tgt = np.stack([1e3 * gaussian_psf((40, 48), 23.3, 19.1) for _ in range(2)])
    dx = rng.uniform(-1, 1, (2, 5))
    dy = rng.uniform(-1, 1, (2, 5))
    want = (align_references(imgs, tgt), shift_stack(imgs, dx, dy),
            shift_variance(np.abs(imgs), dx, dy))
    monkeypatch.setattr(registration, "_PLAIN_PAGES_BYTES", 0)
    got = (align_references(imgs, tgt), shift_stack(imgs, dx, dy),
           shift_variance(np.abs(imgs), dx, dy))
    import mmap

    def on_mmap(a):
        while isinstance(a, np.ndarray):
            a = a.base
        return isinstance(a, memoryview) and isinstance(a.obj, mmap.mmap)

    assert all(on_mmap(a) for a in (got[0][0], got[1], got[2]))
    assert not any(on_mmap(a) for a in (want[0][0], want[1], want[2]))
    np.testing.assert_array_equal(got[0][0], want[0][0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    cube = got[0][0]
    assert cube.flags.writeable
    cube[0, 0, 0, 0] += 1.0
    path = str(tmp_path / "x_psfalign.fits")
    write_product(Product(sci=cube, err=got[2], primary=fits.Header(),
                          sci_header=fits.Header()), path)
    np.testing.assert_array_equal(read_product(path, ndims=(4,)).sci, cube)


# small-grid dither patterns of JWST (offsets in pixels; the bar patterns are 1-D), some
# not starting at zero as MIRI's do
_PATTERNS = {
    "5-POINT-BOX": [(0, 0), (-0.25, -0.25), (0.25, -0.25), (0.25, 0.25), (-0.25, 0.25)],
    "5-POINT-DIAMOND": [(0, 0), (0, -0.3), (0.3, 0), (0, 0.3), (-0.3, 0)],
    "9-POINT-CIRCLE": [(0, 0)] + [(0.25 * np.cos(a), 0.25 * np.sin(a))
                                  for a in np.radians(np.arange(0, 360, 45))],
    "9-POINT-SMALL-GRID": [(1.9 + i, 1.1 + j) for j in (-0.09, 0, 0.09) for i in (-0.09, 0, 0.09)],
    "3-POINT-BAR": [(-0.3, 0), (0, 0), (0.3, 0)],
    "5-POINT-BAR": [(-0.3, 0), (-0.15, 0), (0, 0), (0.15, 0), (0.3, 0)],
}


def _star(cx, cy, *, width=2.0, lobe=0.0):
    """A star behind the fixed soft occulter; `width` and `lobe` make other stars/wavefronts."""
    y, x = np.indices(SHAPE, dtype=np.float64)
    trans = (1 - np.exp(-((x - 31.5) ** 2 + (y - 32.0) ** 2) / (2 * 4.0 ** 2))) ** 2
    img = gaussian_psf(SHAPE, cx, cy, sigma=width)
    if lobe:
        img = img + lobe * gaussian_psf(SHAPE, cx + 5.0, cy - 3.0, sigma=1.5)
    return trans * img


def _commanded(name):
    return np.asarray(_PATTERNS[name], dtype=float)


@pytest.mark.parametrize("pattern", sorted(_PATTERNS))
def test_every_dither_kind_registers_without_catastrophe(pattern):
    """Each JWST dither kind, plus two single-visit stars of other wavefronts: the shifts are
    right to a small fraction of a pixel, 2-D patterns use the model, 1-D ones fall back."""
    from coron_cli.core import dither_model_shifts

    rng = np.random.default_rng(abs(hash(pattern)) % 2 ** 32)
    cmd = _commanded(pattern)
    start = cmd.mean(axis=0)
    ta = np.array([0.12, -0.07])
    true_ref = [ta + c - start for c in cmd]                 # star offsets from the mask
    refs = [2.0 * _star(31.5 + p[0], 32.0 + p[1]) for p in true_ref]
    groups = [0] * len(cmd)
    # two other stars, one visit each, at their own acquisition errors, no dither
    for g, (off, w, lobe) in enumerate([((-0.2, 0.15), 2.1, 0.02), ((0.08, 0.22), 1.9, 0.03)]):
        true_ref.append(np.array(off))
        refs.append(3.0 * _star(31.5 + off[0], 32.0 + off[1], width=w, lobe=lobe))
        groups.append(g + 1)
    refs = np.stack(refs) + rng.normal(0, 1e-4, (len(refs),) + SHAPE)
    dithers = np.vstack([cmd, np.full((2, 2), np.nan)])
    sci_pos = np.array([[0.18, 0.04], [0.2, 0.07]])
    sci = np.stack([_star(31.5 + x, 32.0 + y) for x, y in sci_pos])
    _, rdx, rdy, rsc, res = align_references(refs, sci, return_residual=True)
    dx, dy, scale, used, report = dither_model_shifts(refs, dithers, np.array(groups), sci,
                                                      (rdx, rdy, rsc, res))
    true = sci_pos[:, None, :] - np.asarray(true_ref)[None]
    err = np.hypot(dx - true[..., 0], dy - true[..., 1])
    two_d = pattern not in ("3-POINT-BAR", "5-POINT-BAR")
    assert used[:, :len(cmd)].all() == two_d
    assert not used[:, len(cmd):].any()                      # the other stars: rigid fit
    assert err[:, :len(cmd)].max() < (0.01 if two_d else 0.15)
    assert np.hypot(dx, dy).max() < 1.0


def test_lumped_stars_and_wrong_offsets_fall_back_to_the_rigid_fit():
    """Groups mixing stars, or commanded offsets that do not describe the data (wrong units):
    the model is rejected or bounded, every shift stays near the rigid fit."""
    from coron_cli.core import dither_model_shifts

    cmd = _commanded("9-POINT-CIRCLE")
    refs = np.stack([_star(31.5 + x + 0.1, 32.0 + y) for x, y in cmd])
    sci = _star(31.6, 32.1)[None]
    _, rdx, rdy, rsc, res = align_references(refs, sci, return_residual=True)
    for bad in (cmd * 70.0, cmd[::-1] * 3.0):
        dx, dy, scale, used, report = dither_model_shifts(refs, bad, np.zeros(len(cmd), int),
                                                          sci, (rdx, rdy, rsc, res))
        assert np.hypot(dx - rdx, dy - rdy).max() <= 1.0
        assert np.all((scale / rsc > 1 / 1.5) & (scale / rsc < 1.5))
        assert report[0]["pairs_out_of_bounds"] > 0 and not used.all()
    # offsets in the wrong units: the model's shifts are 70x too large, none is taken
    dx, dy, _, used, _ = dither_model_shifts(refs, cmd * 70.0, np.zeros(len(cmd), int), sci,
                                             (rdx, rdy, rsc, res))
    assert not used.any() and np.array_equal(dx, rdx)


def test_pair_residuals_match_direct_sum():
    from coron_cli.core.registration import pair_residuals

    rng = np.random.default_rng(5)
    a = rng.normal(size=(5, 8, 9)).astype(np.float32)
    t = rng.normal(size=(8, 9))
    s = rng.uniform(0.5, 2, 5)
    w = rng.uniform(0, 1, (8, 9))
    direct = [(w * (t - s[j] * a[j]) ** 2).sum() for j in range(5)]
    assert_allclose(pair_residuals(a, t, s, weights=w, block=2), direct, rtol=1e-9)


def test_bound_shifts_rejects_what_no_pointing_explains():
    from coron_cli.core import bound_shifts

    dx = np.array([[0.2, 1.6, -0.1, 0.3]])
    dy = np.array([[0.1, 0.2, 0.05, -1.2]])
    scale = np.array([[1.0, 1.05, 4.0, 0.98]])
    expected = np.zeros(2)
    ndx, ndy, nsc, bad_shift, bad_scale = bound_shifts(dx, dy, scale, expected,
                                                       np.zeros(4, int))
    assert bad_shift.tolist() == [[False, True, False, True]]
    assert ndx[0, 1] == 0 and ndy[0, 3] == 0 and ndx[0, 0] == 0.2
    assert bad_scale.tolist() == [[False, False, True, False]]
    assert_allclose(nsc[0, 2], np.median(scale))
    assert dx[0, 1] == 1.6                                # inputs untouched
    # the bound is about the prediction, not about zero
    ndx, _, _, bad, _ = bound_shifts(dx, dy, scale, np.array([1.5, 0.0]))
    assert not bad[0, 1] and bad[0, 0]


@pytest.mark.parametrize("pattern", ["9-POINT-CIRCLE", "5-POINT-BOX", "9-POINT-SMALL-GRID",
                                     "5-POINT-BAR"])
def test_shift_gain_corrects_the_rigid_fit_behind_a_mask(pattern):
    """Behind the soft occulter the rigid fit over-reads offsets; the gain measured on the
    dithered references (against their commanded offsets) brings the shifts to the truth."""
    from coron_cli.core import apply_gain, shift_gain

    cmd = _commanded(pattern) - _commanded(pattern).mean(axis=0)
    ta = np.array([0.11, -0.06])
    refs = np.stack([2.0 * _star(31.5 + ta[0] + cx, 32.0 + ta[1] + cy) for cx, cy in cmd])
    sci_pos = np.array([[0.05, 0.08]])
    sci = np.stack([_star(31.5 + x, 32.0 + y) for x, y in sci_pos])
    gain, info = shift_gain(refs, cmd, np.zeros(len(cmd), int))
    assert gain is not None and info["r2"] > 0.99
    rdx, rdy, _ = align_references(refs, sci, fit_only=True)
    true = sci_pos[:, None, :] - (ta + cmd)[None]
    raw = np.hypot(rdx - true[..., 0], rdy - true[..., 1])
    cdx, cdy = apply_gain(rdx, rdy, gain)
    fixed = np.hypot(cdx - true[..., 0], cdy - true[..., 1])
    if pattern.endswith("BAR"):                        # measured along the bar only
        assert gain[1, 1] == 1.0 and gain[0, 1] == 0.0
        assert np.abs(cdx - true[..., 0]).max() < 0.5 * np.abs(rdx - true[..., 0]).max()
    else:
        assert fixed.max() < 0.25 * raw.max()
        assert fixed.max() < 0.01
    assert raw.max() > 0.01 and abs(gain[0, 0] - 1.0) > 0.02   # the mask misleads the fit


def test_shift_gain_isotropic_is_steadier_against_dither_errors():
    """Behind a round occulter the gain is g I. With the dither positions off their
    commanded offsets by a few hundredths of a pixel (JWST's 2 mas), fitting one number
    from every pair keeps nearer the gain the true positions give than four numbers do,
    which take up the position errors as anisotropy; the jackknife's standard errors
    cover the miss."""
    from coron_cli.core import shift_gain

    cmd = _commanded("9-POINT-CIRCLE") - _commanded("9-POINT-CIRCLE").mean(axis=0)
    ta = np.array([0.11, -0.06])
    truth, _ = shift_gain(np.stack([_star(31.5 + ta[0] + x, 32.0 + ta[1] + y)
                                    for x, y in cmd]), cmd, np.zeros(len(cmd), int))
    g_true = np.trace(truth) / 2.0
    assert abs(g_true - 1.0) > 0.03 and abs(truth[0, 0] - truth[1, 1]) < 0.02   # round: g I
    misses = {"full": [], "isotropic": []}
    for seed in range(4):
        err = np.random.default_rng(seed).normal(0.0, 0.035, cmd.shape)
        refs = np.stack([_star(31.5 + ta[0] + x, 32.0 + ta[1] + y) for x, y in cmd + err])
        for model in misses:
            gain, info = shift_gain(refs, cmd, np.zeros(len(cmd), int), model=model)
            assert gain is not None
            misses[model].append(np.abs(gain - g_true * np.eye(2)).max())
            if model == "isotropic":
                assert gain[0, 1] == gain[1, 0] == 0.0 and gain[0, 0] == gain[1, 1]
                assert abs(gain[0, 0] - g_true) < 3.0 * info["gain_se"][0][0]
    assert np.mean(misses["isotropic"]) < 0.7 * np.mean(misses["full"])
    with pytest.raises(ValueError, match="model"):
        shift_gain(refs, cmd, np.zeros(len(cmd), int), model="round")


def test_shift_gain_significance_leaves_a_gain_it_cannot_tell_from_1():
    """No occulter (the image moves rigidly: G = 1) and a bar dither whose positions
    are off by a few hundredths of a pixel: the fitted gain is not exactly 1, but
    within its standard errors, so with `significance` none is applied; a real gain
    (the soft occulter) still is."""
    from coron_cli.core import shift_gain

    cmd = _commanded("5-POINT-BAR") - _commanded("5-POINT-BAR").mean(axis=0)
    err = np.random.default_rng(7).normal(0.0, 0.03, cmd.shape)
    plain = np.stack([gaussian_psf(SHAPE, 31.5 + x, 32.0 + y, sigma=2.0)
                      for x, y in cmd + err])
    gain, info = shift_gain(plain, cmd, np.zeros(len(cmd), int))
    assert gain is not None and gain[0, 0] != 1.0 and np.isfinite(info["gain_se"][0][0])
    gain, info = shift_gain(plain, cmd, np.zeros(len(cmd), int), significance=2.0)
    assert gain is None and "not told apart from 1" in info["reason"]
    masked = np.stack([_star(31.5 + x, 32.0 + y) for x, y in cmd])
    gain, _ = shift_gain(masked, cmd, np.zeros(len(cmd), int), significance=2.0)
    assert gain is not None and abs(gain[0, 0] - 1.0) > 0.02


@pytest.mark.parametrize("mask, want", [("MASKA335R", {"model": "isotropic"}),
                                        ("MASK210R", {"model": "isotropic"}),
                                        ("LYOT_2300", {"model": "isotropic"}),
                                        ("MASKALWB", {"significance": 2.0}),
                                        ("4QPM_1140", {}), ("", {})])
def test_gain_model_follows_the_coronagraph(mask, want):
    from astropy.io import fits

    from coron_cli.products import Product
    from coron_cli.steps.align import gain_model

    primary = fits.Header()
    if mask:
        primary["CORONMSK"] = mask
    prod = Product(sci=np.zeros((1, 4, 4), np.float32), primary=primary,
                   sci_header=fits.Header())
    assert gain_model(prod) == want


def test_shift_gain_needs_dithers_that_explain_the_shifts():
    from coron_cli.core import shift_gain

    refs = np.stack([_star(31.5 + x, 32.0 + y) for x, y in _commanded("5-POINT-BOX")])
    gain, info = shift_gain(refs, np.full((5, 2), np.nan), np.zeros(5, int))
    assert gain is None and "dither" in info["reason"]
    gain, info = shift_gain(refs, _commanded("5-POINT-BOX")[[2, 0, 4, 1, 3]],
                            np.zeros(5, int))                  # offsets that do not match
    assert gain is None and info["r2"] < 0.9


def test_shift_variance_from_errors_is_that_of_their_squares():
    """errors=True squares the noise a block of images at a time: the same numbers as the
    float64 variance passed whole (non-finite noise counts as 0)."""
    from coron_cli.core import registration

    rng = np.random.default_rng(3)
    n = registration._FFT_BLOCK + 5                       # a whole block and a remainder
    err = rng.uniform(0.5, 2.0, (n, 24, 30)).astype(np.float32)
    err[1, 3, 4] = np.nan
    err[n - 1, 0, 0] = np.inf
    dx, dy = rng.uniform(-2, 2, (2, 2, n))
    var = np.where(np.isfinite(err), err.astype(np.float64) ** 2, 0.0)
    want = registration.shift_variance(var, dx, dy)
    got = registration.shift_variance(err, dx, dy, errors=True)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(err).sum() == err.size - 2         # the input is not changed


def test_spectra_by_blocks_equal_the_whole_stack():
    """_spectra transforms a block of images at a time: the same complex64 spectra, power
    and complex128 spectra as one transform of the whole float64 stack."""
    from scipy import fft as sfft

    from coron_cli.core import registration

    rng = np.random.default_rng(4)
    imgs = rng.normal(size=(2 * registration._FFT_BLOCK + 3, 20, 22)).astype(np.float32)
    whole = sfft.rfft2(imgs.astype(np.float64))
    c = registration._hermitian_weights(20, 22)
    r32, r, norm = registration._spectra(imgs, c, keep=True)
    np.testing.assert_array_equal(r32, whole.astype(np.complex64))
    np.testing.assert_array_equal(r, whole)
    np.testing.assert_array_equal(norm, registration._power(whole, c))
    r32b, none, no_norm = registration._spectra(imgs)
    np.testing.assert_array_equal(r32b, r32)
    assert none is None and no_norm is None


def test_shift_dq_from_the_flagged_pixels_only():
    """shift_dq takes the flagged pixels alone, (shape, np.nonzero(dq), values): the same
    result as from the cube."""
    from coron_cli.core import shift_dq

    rng = np.random.default_rng(9)
    dq = np.zeros((5, 16, 18), np.uint32)
    dq.flat[rng.choice(dq.size, 40, replace=False)] = rng.choice([1, 4, 2 ** 30], 40)
    dx, dy = rng.uniform(-3, 3, (2, 2, 5))
    where = np.nonzero(dq)
    np.testing.assert_array_equal(shift_dq((dq.shape, where, dq[where]), dx, dy),
                                  shift_dq(dq, dx, dy))
    empty = np.zeros_like(dq)
    assert not shift_dq((dq.shape, np.nonzero(empty), empty[np.nonzero(empty)]), dx, dy).any()
