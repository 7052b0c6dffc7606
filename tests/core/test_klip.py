import numpy as np
import pytest
from numpy.testing import assert_allclose

from coron_cli._harness import classic_klip
from coron_cli.core import annulus_zones, klip_subtract, noise_weights


def _data(nint=3, nref=12, shape=(24, 24), seed=0):
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=(nint, nref) + shape) + 3.0
    coef = rng.normal(size=(nint, nref))
    sci = np.einsum("ij,ijyx->iyx", coef, refs) + 7.0
    return sci, refs


def test_exact_linear_combination_is_removed():
    sci, refs = _data()
    res, _, nmodes = klip_subtract(sci, refs, truncations=[refs.shape[1]])
    rms = np.sqrt(np.mean(res.astype(np.float64) ** 2))
    assert rms <= 1e-6 * np.std(sci)
    assert (nmodes == refs.shape[1]).all()


def test_truncation_beyond_references_is_clamped():
    sci, refs = _data()
    res, _, nmodes = klip_subtract(sci, refs, truncations=[500])
    assert (nmodes == refs.shape[1]).all()
    res2, _, _ = klip_subtract(sci, refs, truncations=[refs.shape[1]])
    assert_allclose(res, res2, atol=1e-6)


def test_several_truncations_equal_single_runs():
    rng = np.random.default_rng(1)
    sci = rng.normal(size=(2, 20, 20))
    refs = rng.normal(size=(2, 15, 20, 20))
    many, _, _ = klip_subtract(sci, refs, truncations=[1, 4, 9])
    for i, k in enumerate([1, 4, 9]):
        one, _, _ = klip_subtract(sci, refs, truncations=[k])
        assert_allclose(many[i], one[0], rtol=1e-6, atol=1e-6)


def test_one_mode_matches_hand_computed_projection():
    rng = np.random.default_rng(2)
    sci = rng.normal(size=(1, 8, 8))
    refs = rng.normal(size=(1, 4, 8, 8))
    res, _, _ = klip_subtract(sci, refs, truncations=[1])
    expect = classic_klip(sci, refs, [1])[0, 0]          # t - (z . t) z, z the first KL mode
    assert_allclose(res[0, 0].ravel(), expect, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_classic_klip_reference_with_all_modes_is_least_squares(masked):
    """The float64 reference itself (coron_cli._harness.classic_klip, also the benchmark's
    yardstick): with every mode kept it removes the least-squares fit of the centred
    references to the centred target over the fit pixels; its first mode is the
    eigenvector of the largest eigenvalue of R R^T, so one mode removes (z . t) z."""
    rng = np.random.default_rng(9)
    nint, nref, shape = 2, 5, (12, 12)
    refs = rng.normal(size=(nint, nref) + shape) + 2.0
    sci = rng.normal(size=(nint,) + shape) - 1.0
    fit = np.ones(shape, bool)
    if masked:
        fit[:4, :5] = False
    got = classic_klip(sci, refs, [1, nref, nref + 3], fit_mask=fit if masked else None)
    assert got.shape == (3, nint, shape[0] * shape[1]) and got.dtype == np.float64
    f = fit.ravel()
    for i in range(nint):
        R = refs[i].reshape(nref, -1)
        t = sci[i].ravel()
        R = R - R[:, f].mean(axis=1, keepdims=True)
        t = t - t[f].mean()
        b = np.linalg.lstsq(R[:, f].T, t[f], rcond=None)[0]
        assert_allclose(got[1, i], t - b @ R, atol=1e-10)
        assert_allclose(got[2, i], got[1, i], atol=1e-12)     # clamped to the references
        lam, V = np.linalg.eigh(R[:, f] @ R[:, f].T)
        z = V[:, -1] @ R / np.sqrt(lam[-1])
        assert_allclose(got[0, i], t - (z[f] @ t[f]) * z, atol=1e-10)


def test_zones_cover_image_and_are_independent():
    z = annulus_zones((30, 30), (14.5, 14.5), annuli=3, subsections=4)
    assert set(np.unique(z)) == set(range(12))
    sci, refs = _data(shape=(30, 30))
    res, _, _ = klip_subtract(sci, refs, truncations=[12], zones=z)
    assert np.isfinite(res).all()
    assert np.sqrt(np.mean(res.astype(np.float64) ** 2)) <= 1e-5 * np.std(sci)


def test_excluded_region_is_still_subtracted():
    sci, refs = _data()
    fit = np.ones(sci.shape[1:], bool)
    fit[5:10, 5:10] = False
    res, _, _ = klip_subtract(sci, refs, truncations=[refs.shape[1]], fit_mask=fit)
    assert np.abs(res[0][:, 5:10, 5:10]).max() < 1e-4


def test_model_variance_and_inputs_unchanged():
    sci, refs = _data()
    s0, r0 = sci.copy(), refs.copy()
    var = np.full(refs.shape, 4.0)
    _, mvar, _ = klip_subtract(sci, refs, truncations=[3], reference_variance=var)
    assert mvar.shape == (1,) + sci.shape and (mvar > 0).all()
    assert np.array_equal(sci, s0) and np.array_equal(refs, r0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        klip_subtract(np.zeros((2, 5, 5)), np.zeros((3, 4, 5, 5)))


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_matches_explicitly_centred_float64_klip(offset):
    # the references are centred through their Gram matrix, not in place: a large
    # common level (a sky background, a pedestal) must not cost accuracy
    rng = np.random.default_rng(5)
    nint, nref, shape = 2, 30, (40, 40)
    base = rng.normal(size=(nref + 4,) + shape) * np.linspace(1, 50, 40)[None, None, :]
    refs = np.stack([base[i:i + nref] for i in range(nint)]) + offset
    sci = np.stack([base[nref + i] + 0.3 * base[i] for i in range(nint)]) + offset
    fit = np.ones(shape, bool)
    fit[:, :6] = False
    truncs = [1, 5, 20, nref]
    sci32, refs32 = sci.astype(np.float32), refs.astype(np.float32)
    got, _, _ = klip_subtract(sci32, refs32, truncations=truncs, fit_mask=fit)
    # the float64 reference, centred explicitly (coron_cli._harness.classic_klip)
    wants = classic_klip(sci32, refs32, truncs, fit_mask=fit)
    for i in range(nint):
        for k, K in enumerate(truncs):
            want = wants[k, i]
            err = np.sqrt(np.mean((got[k, i].ravel() - want) ** 2) / np.mean(want ** 2))
            assert err < 1e-6, (offset, K, err)


def _centred(R, t):
    return R - R.mean(axis=1, keepdims=True), t - t.mean()


def test_weighted_fit_with_all_modes_is_generalised_least_squares():
    rng = np.random.default_rng(11)
    nint, nref, shape = 2, 6, (16, 16)
    refs = rng.normal(size=(nint, nref) + shape)
    sci = np.einsum("ij,ijyx->iyx", rng.normal(size=(nint, nref)), refs)
    sci += rng.normal(size=sci.shape) * np.linspace(0.1, 3.0, shape[1])   # noise rising with x
    w = np.exp(rng.uniform(-2, 2, shape))
    got, _, _ = klip_subtract(sci, refs, truncations=[nref], fit_weights=w)
    flat, _, _ = klip_subtract(sci, refs, truncations=[nref])
    sw = np.sqrt(w.ravel())
    for i in range(nint):
        R, t = _centred(refs[i].reshape(nref, -1), sci[i].ravel())
        b = np.linalg.lstsq((R * sw).T, t * sw, rcond=None)[0]
        want = t - b @ R
        assert_allclose(got[0, i].ravel(), want, atol=1e-5 * np.abs(want).max())
        # it minimises the weighted sum of squares, which the unweighted fit does not
        wss = lambda r: np.sum(w.ravel() * r.astype(np.float64).ravel() ** 2)  # noqa: E731
        assert wss(got[0, i]) < wss(flat[0, i])


def test_uniform_weights_are_classic_klip():
    sci, refs = _data(seed=3)
    sci = sci + np.random.default_rng(3).normal(size=sci.shape)
    a, _, _ = klip_subtract(sci, refs, truncations=[1, 4, 12])
    b, _, _ = klip_subtract(sci, refs, truncations=[1, 4, 12],
                            fit_weights=np.full(sci.shape[1:], 3.7))
    assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_zero_weight_acts_like_the_fit_mask():
    sci, refs = _data(seed=4)
    sci = sci + np.random.default_rng(4).normal(size=sci.shape)
    sci[:, 2:6, 3:9] += 1e4                        # a bright source, left out either way
    fit = np.ones(sci.shape[1:], bool)
    fit[2:6, 3:9] = False
    a, _, _ = klip_subtract(sci, refs, truncations=[5], fit_mask=fit)
    b, _, _ = klip_subtract(sci, refs, truncations=[5], fit_mask=fit,
                            fit_weights=fit.astype(float))
    assert_allclose(a, b, rtol=1e-5, atol=1e-3)


def test_fit_weights_are_checked():
    sci, refs = _data()
    for bad in (np.ones((3, 3)), np.full(sci.shape[1:], -1.0), np.full(sci.shape[1:], np.nan)):
        with pytest.raises(ValueError, match="fit_weights"):
            klip_subtract(sci, refs, fit_weights=bad)


def test_noise_weights_are_inverse_variance_over_usable_values():
    err = np.full((3, 6, 6), 2.0)
    err[:, :, 3:] = 4.0                            # variance 16 on the right half
    err[0, 1, 1] = 1e6                             # a flagged garbage value
    bad = np.zeros(err.shape, bool)
    bad[0, 1, 1] = True
    err[1, 0, 0] = np.nan                          # not finite: ignored
    err[:, 5, 0] = 0.0                             # no usable value at all
    w = noise_weights(err, (2.5, 2.5), bad=bad, width=100)
    v = np.where(np.arange(6) < 3, 4.0, 16.0)[None, :] * np.ones((6, 1))
    v[5, 0] = (17 * 4.0 + 18 * 16.0) / 35          # mean of its annulus (here the whole image)
    assert_allclose(w, np.median(v) / v)
    assert_allclose(noise_weights(np.zeros((2, 4, 4)), (1.5, 1.5)), np.ones((4, 4)))


def test_noise_weights_floor_a_near_zero_error():
    rng = np.random.default_rng(2)
    err = rng.uniform(9.0, 11.0, (3, 30, 30))
    err[:, 4, 7] = 1e-4                            # unflagged, and far below any real noise
    w = noise_weights(err, (15, 15))
    assert w.max() < 1.5 and w[4, 7] == w.max()


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_sky_terms_all_modes_equal_joint_least_squares(order, weighted):
    """With every mode kept, KLIP with sky terms is the joint (weighted) least-squares fit of
    the references and the monomials of the pixel coordinates, over the fit pixels."""
    rng = np.random.default_rng(7)
    ny, nx, nref = 18, 20, 6
    refs = rng.normal(size=(1, nref, ny, nx))
    sci = rng.normal(size=(1, ny, nx))
    fit = rng.random((ny, nx)) > 0.2
    w = rng.uniform(0.2, 3.0, (ny, nx)) if weighted else np.ones((ny, nx))
    res, _, _ = klip_subtract(sci, refs, truncations=[nref], fit_mask=fit,
                              fit_weights=w if weighted else None, sky_order=order)
    y, x = np.indices((ny, nx), dtype=float)
    mono = [x ** i * y ** (d - i) for d in range(order + 1) for i in range(d, -1, -1)]
    A = np.concatenate([refs[0].reshape(nref, -1), np.stack(mono).reshape(len(mono), -1)]).T
    sw = np.sqrt(w.ravel())[fit.ravel()]
    coef = np.linalg.lstsq(A[fit.ravel()] * sw[:, None], sci[0].ravel()[fit.ravel()] * sw,
                           rcond=None)[0]
    assert_allclose(res[0, 0].ravel(), sci[0].ravel() - A @ coef, atol=1e-5)


def test_sky_plane_the_references_lack_is_removed():
    sci, refs = _data(nint=2, nref=8, shape=(32, 32), seed=3)
    y, x = np.indices((32, 32), dtype=float)
    tilted = sci + 0.5 * x - 0.3 * y
    flat, _, _ = klip_subtract(sci, refs, truncations=[8])
    no_sky, _, _ = klip_subtract(tilted, refs, truncations=[8])
    sky, _, _ = klip_subtract(tilted, refs, truncations=[8], sky_order=1)
    assert np.abs(flat).max() < 1e-5                       # exact combination: nothing left
    assert np.abs(no_sky).max() > 1.0                      # the plane survives classic KLIP
    assert np.abs(sky).max() < 1e-5
    tilted0 = tilted.copy()
    klip_subtract(tilted, refs, truncations=[3], sky_order=2)
    assert np.array_equal(tilted, tilted0)


def test_zones_of_a_given_width():
    z = annulus_zones((41, 41), (20.0, 20.0), width=4.0, outer=20.0)
    y, x = np.indices((41, 41))
    r = np.hypot(x - 20.0, y - 20.0)
    assert z.max() == 4                                   # 5 annuli of 4 px to r = 20
    assert (z[r < 4] == 0).all() and (z[(r >= 8) & (r < 12)] == 2).all()
    assert (z[r >= 20] == 4).all()                        # beyond outer: the last one
    with pytest.raises(ValueError):
        annulus_zones((10, 10), (5, 5), width=0)


def test_pixels_per_mode_caps_the_modes_of_small_zones():
    sci, refs = _data(nint=1, nref=12, shape=(20, 20))
    z = annulus_zones((20, 20), (9.5, 9.5), width=3.0)
    _, _, free = klip_subtract(sci, refs, truncations=[12], zones=z)
    _, _, capped = klip_subtract(sci, refs, truncations=[12], zones=z, pixels_per_mode=10)
    inner = int((z == 0).sum())
    assert free[0, 0] == 12
    assert capped[0, 0] == max(1, inner // 10) < 12      # the smallest zone sets the count


def test_fit_zones_separate_the_fit_from_the_subtraction():
    """A zone whose optimization region is the whole frame is subtracted exactly as without
    zones; an annulus fitted on its neighbours only leaves a source in it untouched by its
    own fit (LOCI's separation of subtraction and optimization regions)."""
    from coron_cli.core import annulus_fit_zones

    rng = np.random.default_rng(11)
    sci, refs = _data(nint=1, nref=6, shape=(40, 40))
    sci = sci + rng.normal(0, 0.3, sci.shape)
    z = annulus_zones((40, 40), (19.5, 19.5), width=4.0)
    whole, _, _ = klip_subtract(sci, refs, truncations=[4])
    inner = {0: np.ones((40, 40), bool)}
    zoned, _, _ = klip_subtract(sci, refs, truncations=[4], zones=z, fit_zones=inner)
    assert_allclose(zoned[0, 0][z == 0], whole[0, 0][z == 0], atol=1e-6)
    assert not np.allclose(zoned[0, 0][z == 2], whole[0, 0][z == 2], atol=1e-3)
    regions = annulus_fit_zones(z, (19.5, 19.5), margin=8.0)
    assert not (regions[2] & (z == 2)).any() and (regions[2] & (z == 1)).any()
    # a source in annulus 2: with its own fit it loses flux, fitted around it keeps it
    y, x = np.indices((40, 40))
    src = 20.0 * np.exp(-((x - 29.5) ** 2 + (y - 19.5) ** 2) / 2.0)
    kept = {}
    for name, fz in (("self", None), ("around", regions)):
        a, _, _ = klip_subtract(sci + src[None], refs, truncations=[6], zones=z, fit_zones=fz)
        b, _, _ = klip_subtract(sci, refs, truncations=[6], zones=z, fit_zones=fz)
        kept[name] = (a - b)[0, 0][src > 1].sum() / src[src > 1].sum()
    assert kept["around"] > 0.97 and kept["self"] < kept["around"]


@pytest.mark.parametrize("targets", [False, True])
@pytest.mark.parametrize("zoned", [False, True])
def test_one_reference_set_for_every_integration_equals_it_repeated(targets, zoned):
    """References with a first axis of 1 (aligned once per exposure) give what the same
    references repeated for every integration give: one decomposition serves all."""
    rng = np.random.default_rng(5)
    nint, nref, shape = 4, 9, (24, 24)
    refs = rng.normal(size=(1, nref) + shape) + 2.0
    sci = rng.normal(size=(nint, 3) + shape if targets else (nint,) + shape)
    var = rng.uniform(0.5, 2.0, size=refs.shape)
    zones = annulus_zones(shape, (11.5, 11.5), annuli=3) if zoned else None
    kw = dict(truncations=[2, 5], zones=zones, sky_order=1)
    one, mv1, k1 = klip_subtract(sci, refs, reference_variance=var, **kw)
    rep = np.repeat(refs, nint, axis=0)
    many, mvn, kn = klip_subtract(sci, rep, reference_variance=np.repeat(var, nint, axis=0),
                                  **kw)
    assert one.shape == many.shape == (2,) + sci.shape
    assert_allclose(one, many, rtol=1e-5, atol=1e-5)
    assert_allclose(mv1, mvn, rtol=1e-5)
    assert np.array_equal(k1, kn) and k1.shape == (2, nint)


def test_zone_columns_gather_as_fancy_indexing_does():
    """_Cols.float64 gathers the pixels of a zone (positions in the zone order) a block of
    references at a time: the same values and the same memory layout (BLAS products
    depend on it) as ``array[:, :, order[idx]].astype(np.float64)``."""
    from coron_cli.core import klip

    rng = np.random.default_rng(5)
    arr = rng.normal(size=(2, klip._Cols.BLOCK + 7, 60)).astype(np.float32)
    order = rng.permutation(60)
    for idx in (slice(5, 40), np.array([3, 1, 59, 20, 7]), np.arange(60)):
        for o in (order, None):
            want = arr[:, :, idx if o is None else o[idx]].astype(np.float64)
            got = klip._Cols(arr, o).float64(idx)
            np.testing.assert_array_equal(got, want)
            assert got.strides == want.strides


def test_zone_columns_square_a_noise_array_as_a_variance():
    """square=True: the float32 square of the noise, 0 where it is not finite (what the
    references' variance was made of), gathered alike."""
    from coron_cli.core import klip

    rng = np.random.default_rng(7)
    err = rng.uniform(0.5, 2.0, (1, klip._Cols.BLOCK + 3, 50)).astype(np.float32)
    err[0, 2, 7] = np.nan
    var = err.copy()
    var[~np.isfinite(var)] = 0.0
    np.square(var, out=var)
    order = rng.permutation(50)
    for idx in (slice(0, 50), slice(3, 9), np.array([7, 1, 30])):
        for o in (order, None):
            want = klip._Cols(var, o).float64(idx)
            got = klip._Cols(err, o, square=True).float64(idx)
            np.testing.assert_array_equal(got, want)
            assert got.strides == want.strides
    assert np.isnan(err[0, 2, 7])


def test_reference_error_gives_the_variance_of_its_square():
    """klip_subtract(reference_error=e) is klip_subtract(reference_variance=e**2) (float32,
    non-finite noise as 0), with and without zones."""
    rng = np.random.default_rng(8)
    refs = rng.normal(size=(1, 12, 30, 30)).astype(np.float32)
    sci = (refs[0, :3] * 0.5 + rng.normal(0, 0.1, (3, 30, 30))).astype(np.float32)
    err = rng.uniform(0.1, 0.3, refs.shape).astype(np.float32)
    err[0, 1, 4, 4] = np.inf
    var = np.where(np.isfinite(err), err, 0).astype(np.float32) ** 2
    zones = annulus_zones((30, 30), (14.5, 14.5), annuli=3)
    for z in (None, zones):
        a = klip_subtract(sci, refs, truncations=(3, 5), zones=z, reference_variance=var)
        b = klip_subtract(sci, refs, truncations=(3, 5), zones=z, reference_error=err)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="not both"):
        klip_subtract(sci, refs, reference_variance=var, reference_error=err)


@pytest.mark.parametrize("sky_order", [0, 1])
@pytest.mark.parametrize("layout", ["one", "annuli", "shared"])
def test_extra_references_equal_klip_with_them_added_per_group(sky_order, layout):
    """klip_subtract(extra=...) models every pixel group with the references plus the
    extra ones it may use: the same as klip_subtract with those rows added, each zone
    fitted on its own pixels (or its fit_zones region)."""
    rng = np.random.default_rng(5)
    shape, nref, ne = (30, 30), 7, 2
    refs = rng.normal(size=(1, nref) + shape) + 2.0
    extra = rng.normal(size=(ne,) + shape) + 2.0
    sci = (0.5 * extra[0] + 0.3 * extra[1] + 0.2 * refs[0, 1]
           + 0.1 * rng.normal(size=shape))[None, None].repeat(3, axis=1)
    sci[:, 1] += rng.normal(size=shape)                     # two other targets
    sci[:, 2] *= 1.5
    err = np.abs(rng.normal(size=refs.shape)) + 0.1
    eerr = np.abs(rng.normal(size=extra.shape)) + 0.1
    yy, xx = np.indices(shape)
    labels = (xx > 14).astype(int) + (yy > 20).astype(int)   # three groups
    allowed = np.array([[False, False], [True, False], [True, True]])
    zones = fit_zones = None
    if layout != "one":
        zones = annulus_zones(shape, (14.5, 14.5), annuli=3)
    if layout == "shared":
        fit_zones = {int(z): np.ones(shape, bool) for z in np.unique(zones)}
    w = rng.uniform(0.5, 2.0, size=shape)
    kw = dict(truncations=[3, 9], sky_order=sky_order, fit_weights=w, reference_error=err,
              fit_zones=fit_zones)
    got, gv, gk = klip_subtract(sci, refs, zones=zones, extra={
        "references": extra, "error": eerr, "labels": labels, "allowed": allowed}, **kw)
    base = np.zeros(shape, int) if zones is None else zones
    fz = {int(z): base == z for z in np.unique(base)} if fit_zones is None else fit_zones
    for g, use in enumerate(allowed):
        here = labels == g
        rg = np.concatenate([refs, extra[use][None]], axis=1)
        eg = np.concatenate([err, eerr[use][None]], axis=1)
        want, wv, _ = klip_subtract(sci, rg, zones=np.where(here, base, -1),
                                    **dict(kw, reference_error=eg, fit_zones=fz))
        assert_allclose(got[..., here], want[..., here], rtol=1e-6, atol=1e-6)
        assert_allclose(gv[..., here], wv[..., here], rtol=1e-5, atol=1e-8)
    assert (gk <= 9).all() and (gk >= 3).all()
    # without extra references: klip_subtract as it was
    plain, _, _ = klip_subtract(sci, refs, zones=zones, **kw)
    none_used, _, _ = klip_subtract(sci, refs, zones=zones, extra={
        "references": extra, "error": eerr, "labels": np.zeros(shape, int),
        "allowed": np.zeros((1, ne), bool)}, **kw)
    assert_allclose(none_used, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "scattered", "sparse"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_set_products_equal_those_of_the_whole_copy(layout, weighted, monkeypatch):
    """_FitSet reads the references a block of pixels at a time (in frame order with
    the pixels outside the set weighted 0, or gathered when the set is sparse), in one
    pass centred on a rough mean: its means, covariance, R t and sky coordinates are
    those of the float64 copy of the set's pixels, centred and weighted, in one piece."""
    from coron_cli.core import klip

    monkeypatch.setattr(klip, "PIXEL_BLOCK_BYTES", 1)     # blocks of 256 pixels
    rng = np.random.default_rng(11)
    c, nref, ntg, npix = 2, 7, 3, 3000
    arr = (rng.normal(size=(c, nref, npix)) * 3 + 40).astype(np.float32)
    extra = (rng.normal(size=(2, npix)) + 40).astype(np.float32)
    order = rng.permutation(npix)
    cols = klip._Cols(arr, None if layout == "contiguous" else order, extra=extra)
    if layout == "contiguous":
        pos = slice(200, 2900)
    elif layout == "scattered":       # most pixels of their span of the frame
        pos = np.flatnonzero(order < 2500)
        pos = pos[rng.uniform(size=pos.size) < 0.9]
    else:                             # a few pixels spread over the frame
        pos = np.sort(rng.choice(npix, 300, replace=False))
    frame = np.arange(npix)[pos] if layout == "contiguous" else order[pos]
    n = frame.size
    wz = rng.uniform(0.2, 2.0, n) if weighted else None
    fset = klip._FitSet(cols, pos, wz)
    assert (fset.span is None) == (layout == "sparse")
    full = np.concatenate([arr[:, :, frame], np.broadcast_to(extra[:, frame], (c, 2, n))],
                          axis=1).astype(np.float64)
    mean = full.mean(axis=2)
    R = (full - mean[:, :, None]) * (1.0 if wz is None else wz)
    tf = rng.normal(size=(c, ntg, n))
    Q = np.linalg.qr(rng.normal(size=(n, 3)))[0]
    rmean, C, a, RQ, tQ = fset.products(tf, Q)
    assert_allclose(rmean, mean, rtol=1e-12)
    RQ0, tQ0 = R @ Q, tf @ Q
    C0 = R @ np.swapaxes(R, 1, 2) - RQ0 @ np.swapaxes(RQ0, 1, 2)
    a0 = tf @ np.swapaxes(R, 1, 2) - tQ0 @ np.swapaxes(RQ0, 1, 2)
    for got, want in ((C, C0), (a, a0), (RQ, RQ0), (tQ, tQ0)):
        assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    _, C1, _, RQ1, tQ1 = fset.products(tf, None)
    assert RQ1 is None and tQ1 is None
    assert_allclose(C1, R @ np.swapaxes(R, 1, 2), rtol=1e-9)
