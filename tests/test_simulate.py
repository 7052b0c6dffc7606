"""Tests of the simulated coronagraphic data set (coron_cli.simulate)."""

import json

import numpy as np
import pytest

from coron_cli.simulate import SIZES, SimDataset, SimExposure, simulate_dataset


@pytest.fixture(scope="module")
def ds():
    return simulate_dataset("small", seed=0)


def _good(exp):
    return (exp.dq & 1) == 0


def test_sizes_table():
    assert SIZES == {"small": (64, 3), "medium": (160, 5), "large": (320, 10)}


def test_unknown_size_raises():
    with pytest.raises(ValueError):
        simulate_dataset("huge")


def test_shapes_and_dtypes(ds):
    npix, nint = SIZES["small"]
    assert isinstance(ds, SimDataset)
    assert len(ds.exposures) == 11 and len(ds.twin) == 2
    assert [e.exptype for e in ds.exposures] == ["science"] * 2 + ["psf"] * 9
    for e in ds.exposures + ds.twin:
        assert isinstance(e, SimExposure)
        assert e.sci.shape == e.err.shape == e.dq.shape == (nint, npix, npix)
        assert e.sci.dtype == np.float32 and e.err.dtype == np.float32
        assert e.dq.dtype == np.uint32
        assert e.star_xy.shape == (nint, 2) and e.star_xy.dtype == np.float64
        assert e.header["NINTS"] == nint and e.header["INSTRUME"] == "NIRCAM"
    assert ds.offaxis_psf.shape == (npix, npix) and ds.offaxis_psf.dtype == np.float32
    assert ds.exposures[0].name == "demo_sci_roll1_calints.fits"
    assert ds.exposures[2].name == "demo_ref_dither1_calints.fits"
    assert ds.twin[1].name == "demo_sci_roll2_noplanet_calints.fits"


def test_deterministic_and_seed_dependent(ds):
    again = simulate_dataset("small", seed=0)
    other = simulate_dataset("small", seed=1)
    for a, b in zip(ds.exposures, again.exposures):
        np.testing.assert_array_equal(a.sci, b.sci)
        np.testing.assert_array_equal(a.dq, b.dq)
    assert ds.truth == again.truth
    good = _good(ds.exposures[0]) & _good(other.exposures[0])
    assert not np.allclose(ds.exposures[0].sci[good], other.exposures[0].sci[good])
    assert ds.truth["planets"] != other.truth["planets"]


def test_truth_json_and_keys(ds):
    t = json.loads(json.dumps(ds.truth))
    for key in ("size", "seed", "npix", "nints", "lambda_over_d_pix", "pixel_scale_arcsec",
                "star_peak", "star_flux_total", "mask_center", "exposures", "planets",
                "unflagged_cosmic_rays"):
        assert key in t
    assert t["pixel_scale_arcsec"] == 0.063
    assert 1.8 < t["lambda_over_d_pix"] < 2.5
    assert 1e6 <= t["star_peak"] <= 1e7
    assert len(t["exposures"]) == 11
    json.dumps(ds.asn)


def test_offaxis_psf_peak(ds):
    t = ds.truth
    psf = ds.offaxis_psf
    iy, ix = np.unravel_index(np.argmax(psf), psf.shape)
    assert (ix, iy) == tuple(int(round(v)) for v in t["mask_center"])
    assert psf.max() == pytest.approx(t["star_peak"], rel=1e-5)
    assert 0.8 < psf.sum() / t["star_flux_total"] <= 1.0


def test_planet_layout(ds):
    t = ds.truth
    lod = t["lambda_over_d_pix"]
    planets = t["planets"]
    assert 3 <= len(planets) <= 4
    contrasts = [p["contrast"] for p in planets]
    assert max(contrasts) == pytest.approx(1e-3)
    brightest = planets[int(np.argmax(contrasts))]
    assert 5.0 <= brightest["sep_lod"] <= 6.0
    assert sum(c >= 1e-4 for c in contrasts) >= 2
    assert min(contrasts) <= 2e-5
    npix = t["npix"]
    for p in planets:
        assert 4.0 <= p["sep_lod"] <= 13.0
        assert p["peak_offaxis"] == pytest.approx(p["contrast"] * t["star_peak"])
        assert 0.5 < p["throughput"] < 1.05
        for x, y in p["xy_roll"]:
            assert 3 * lod <= x <= npix - 1 - 3 * lod and 3 * lod <= y <= npix - 1 - 3 * lod
    for i in range(len(planets)):
        for j in range(i + 1, len(planets)):
            for r in range(2):
                d = np.subtract(planets[i]["xy_roll"][r], planets[j]["xy_roll"][r])
                assert np.hypot(*d) >= 3 * lod - 0.1


def test_roll_geometry_and_twin(ds):
    t = ds.truth
    p = max(t["planets"], key=lambda q: q["contrast"])
    for r, (sci, twin) in enumerate(zip(ds.exposures[:2], ds.twin)):
        phi = sci.header["ROLL_REF"]
        star = sci.star_xy.mean(axis=0)
        th = np.radians(p["pa_deg"] - phi)
        rho = p["sep_pix"]
        expect = star + rho * np.array([-np.sin(th), np.cos(th)])
        np.testing.assert_allclose(p["xy_roll"][r], expect, atol=1e-9)
        good = _good(sci)
        diff = np.where(good, sci.sci.astype(float) - twin.sci, 0.0).sum(axis=0)
        diff /= np.maximum(good.sum(axis=0), 1)
        iy, ix = np.unravel_index(np.argmax(diff), diff.shape)
        assert np.hypot(ix - expect[0], iy - expect[1]) <= 0.75
        # sub-pixel centroid within 0.5 px
        sl = (slice(iy - 1, iy + 2), slice(ix - 1, ix + 2))
        w = np.clip(diff[sl], 0, None)
        yy, xx = np.mgrid[sl]
        cen = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        assert np.hypot(*(cen - expect)) < 0.5
    # north-up offsets follow x = -rho sin(theta), y = rho cos(theta)
    th = np.radians(p["pa_deg"])
    np.testing.assert_allclose(p["xy_north_up"], [-p["sep_pix"] * np.sin(th),
                                                  p["sep_pix"] * np.cos(th)], atol=1e-9)


def test_twin_differs_only_near_planets(ds):
    t = ds.truth
    lod = t["lambda_over_d_pix"]
    npix = t["npix"]
    yy, xx = np.mgrid[:npix, :npix]
    for r, (sci, twin) in enumerate(zip(ds.exposures[:2], ds.twin)):
        assert twin.header["ROLL_REF"] == sci.header["ROLL_REF"]
        np.testing.assert_array_equal(sci.dq, twin.dq)
        np.testing.assert_array_equal(sci.star_xy, twin.star_xy)
        near = np.zeros((npix, npix), bool)
        for p in t["planets"]:
            x, y = p["xy_roll"][r]
            near |= np.hypot(xx - x, yy - y) < 3 * lod
        good = _good(sci)
        diff = sci.sci.astype(float) - twin.sci
        assert np.nanmax(np.abs(diff[good & ~near[None]])) < 0.05 * t["planets"][0]["peak_offaxis"]
        assert np.nansum(diff[good & near[None]]) > 0


def test_bad_pixels_and_cosmic_rays(ds):
    npix, nint = SIZES["small"]
    nbad = [(e.dq & 1).astype(bool) for e in ds.exposures]
    frac = np.mean([b.mean() for b in nbad])
    assert 0.001 < frac < 0.01
    sci = ds.exposures[0].sci
    bad = nbad[0]
    garbage = ~np.isfinite(sci[bad]) | (sci[bad] == 0) | (np.abs(sci[bad]) > 1e3)
    assert garbage.mean() > 0.9
    # a fixed bad-pixel map shared by all exposures
    common = np.logical_and.reduce([b.all(axis=0) for b in nbad])
    assert common.sum() >= 1
    # unflagged cosmic rays: not DO_NOT_USE and much brighter than the noise
    crs = ds.truth["unflagged_cosmic_rays"]
    assert len(crs) > 0
    byname = {e.name: e for e in ds.exposures}
    for cr in crs:
        e = byname[cr["exposure"]]
        i, x, y = cr["int"], cr["x"], cr["y"]
        assert e.dq[i, y, x] & 1 == 0
        others = [k for k in range(nint) if k != i]
        assert e.sci[i, y, x] - np.median(e.sci[others, y, x]) > 50 * e.err[i, y, x]


def test_pointing(ds):
    mc = np.array(ds.truth["mask_center"])
    sci1, sci2 = ds.exposures[:2]
    refs = ds.exposures[2:]
    assert len(refs) == 9
    for e in (sci1, sci2, refs[0]):
        off = np.hypot(*(e.star_xy.mean(axis=0) - mc))
        assert 0.04 <= off <= 0.31
        assert np.std(e.star_xy, axis=0).max() < 0.03
    centres = np.array([e.star_xy.mean(axis=0) for e in refs])
    steps = centres - centres[0]
    assert np.abs(steps).max() == pytest.approx(0.2, abs=0.03)
    assert len({(round(a, 1), round(b, 1)) for a, b in steps}) == 9
    ratios = [x["flux_ratio"] for x in ds.truth["exposures"]]
    assert ratios[:2] == [1.0, 1.0]
    assert all(1.3 <= r <= 3.0 for r in ratios[2:])


def test_wcs_and_headers(ds):
    scale = 0.063 / 3600.0
    mc = ds.truth["mask_center"]
    rolls = [e.header["ROLL_REF"] for e in ds.exposures[:2]]
    assert 7 <= (rolls[1] - rolls[0]) % 360 <= 14
    for e in ds.exposures:
        w = e.wcs
        phi = np.radians(e.header["ROLL_REF"])
        assert w["CTYPE1"] == "RA---TAN" and w["CTYPE2"] == "DEC--TAN"
        assert w["CUNIT1"] == w["CUNIT2"] == "deg"
        assert w["CRPIX1"] == mc[0] + 1 and w["CRPIX2"] == mc[1] + 1
        np.testing.assert_allclose([w["CD1_1"], w["CD1_2"], w["CD2_1"], w["CD2_2"]],
                                   scale * np.array([-np.cos(phi), np.sin(phi),
                                                     np.sin(phi), np.cos(phi)]), rtol=1e-12,
                                   atol=1e-15)
        assert e.header["IS_PSF"] == (e.exptype == "psf")
        for key in ("TARGNAME", "FILTER", "CORONMSK", "BUNIT"):
            assert key in e.header


def test_asn(ds):
    asn = ds.asn
    assert asn["asn_rule"] == "CORON" and asn["asn_type"] == "coron"
    assert asn["asn_id"] == "c1001" and asn["target"] == "SIM-STAR"
    assert asn["program"] == "00000"
    (prod,) = asn["products"]
    assert prod["prodtype"] == "coroncmb" and prod["name"] == "demo_nircam_f444w"
    members = prod["members"]
    assert [m["exptype"] for m in members] == ["science"] * 2 + ["psf"] * 9
    assert [m["expname"] for m in members] == [e.name for e in ds.exposures]
    assert not any("noplanet" in m["expname"] for m in members)


def test_options():
    d = simulate_dataset("small", seed=3, root="x", nplanets=0)
    assert d.truth["planets"] == []
    assert d.exposures[0].name == "x_sci_roll1_calints.fits"
    assert d.asn["products"][0]["name"] == "x_nircam_f444w"
    a, b = d.exposures[0].sci, d.twin[0].sci
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(a[~np.isnan(a)], b[~np.isnan(b)])
    assert len(simulate_dataset("small", seed=3, nplanets=2).truth["planets"]) == 2
