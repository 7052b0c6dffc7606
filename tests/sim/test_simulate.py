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


# --------------------------------------------------------------------------
# Observing set-ups (issue 12, item 5)
# --------------------------------------------------------------------------
import hashlib  # noqa: E402
import os  # noqa: E402

from coron_cli.sim_setups import DITHER_PATTERNS, dither_offsets  # noqa: E402
from coron_cli.simulate import SETUPS, RefStar, Setup, draw_setup  # noqa: E402

NAMED = [n for n in SETUPS if n != "classic"]

# simulate_dataset("small", seed=0) before set-ups existed (commit 62b5e91):
# sha256 of every exposure's and twin's sci, err, dq, star_xy and the off-axis
# PSF (this numpy/OpenBLAS build), and per-exposure sums of the good sci pixels
CLASSIC_DIGEST = "c1c0fe09d7ee865c5253bd61b0f2caf21d1a7b4200e74f8fb2d87e57e806fd61"
CLASSIC_SUMS = [3382231.559, 3482874.174, 5348423.531, 5458300.72, 5386176.357, 5571871.972,
                5601390.114, 5576656.883, 5452122.309, 5529204.501, 5393686.58, 3161304.309,
                3261039.541]


def _digest(d):
    h = hashlib.sha256()
    for e in list(d.exposures) + list(d.twin):
        for a in (e.sci, e.err, e.dq, e.star_xy):
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(np.ascontiguousarray(d.offaxis_psf).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def named():
    return {n: simulate_dataset("small", seed=0, setup=n) for n in NAMED}


@pytest.mark.parametrize("setup", [None, "classic", SETUPS["classic"]])
def test_classic_arrays_unchanged(ds, setup):
    d = ds if setup is None else simulate_dataset("small", seed=0, setup=setup)
    sums = [float(np.sum(e.sci[(e.dq & 1) == 0], dtype=np.float64)) for e in d.exposures + d.twin]
    np.testing.assert_allclose(sums, CLASSIC_SUMS, rtol=1e-9, atol=2e-3)
    assert _digest(d) == CLASSIC_DIGEST, "bitwise digest differs (sums agree: platform float?)"
    assert d.truth["setup"] == SETUPS["classic"].to_dict()
    assert all(e.psfmask.shape == (64, 64) and e.psfmask.dtype == np.float32
               for e in d.exposures + d.twin)


def test_setups_table_and_validation():
    assert {"classic", "nircam-round-9circle-3stars", "nircam-round-nodither-2rolls",
            "nircam-bar-5bar", "miri-4qpm-9grid-bkg"} <= set(SETUPS)
    for name, s in SETUPS.items():
        assert s.name == name
        assert Setup.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    bad = [dict(coronagraph="stis"), dict(refs=()), dict(refs=(RefStar(dither="X"),)),
           dict(science_rolls=3), dict(bar_offset=0.1), dict(bkdsub_keyword=True),
           dict(coronagraph="miri-4qpm", neighbour_mask=True), dict(nints=0),
           dict(star_peak=0.0)]
    for kw in bad:
        with pytest.raises(ValueError, match="Setup"):
            Setup(**kw)
    with pytest.raises(ValueError, match="set-up"):
        simulate_dataset("small", setup="no-such-setup")


def test_setup_star_peak_sets_the_brightness_and_no_other_draw():
    import dataclasses

    base = SETUPS["nircam-round-nodither-2rolls"]
    a = simulate_dataset("small", seed=2, setup=base)
    b = simulate_dataset("small", seed=2, setup=dataclasses.replace(base, star_peak=1e8))
    assert a.truth["star_peak"] < 1e7 and b.truth["star_peak"] == 1e8
    assert b.offaxis_psf.max() == pytest.approx(1e8, rel=1e-5)
    k = 1e8 / a.truth["star_peak"]
    for pa, pb in zip(a.truth["planets"], b.truth["planets"]):
        assert pb["peak_offaxis"] == pytest.approx(k * pa["peak_offaxis"])
        assert pb["xy_roll"] == pa["xy_roll"]
    for ea, eb in zip(a.truth["exposures"], b.truth["exposures"]):
        assert ea["name"] == eb["name"] and ea["star_xy"] == eb["star_xy"]
    assert b.truth["setup"]["star_peak"] == 1e8


@pytest.mark.parametrize("name", NAMED)
def test_named_setup_shapes_and_headers(named, name):
    d, s = named[name], SETUPS[name]
    npix = SIZES["small"][0]
    nint = s.nints or SIZES["small"][1]
    kinds = [e.exptype for e in d.exposures]
    nsci = s.science_rolls
    nref_exp = sum(len(dither_offsets(r.dither, s.instrument, 1.0)[0]) * r.nrolls for r in s.refs)
    nbkg = s.sci_backgrounds + s.ref_backgrounds
    assert kinds == ["science"] * nsci + ["psf"] * nref_exp + ["background"] * nbkg
    assert len(d.twin) == nsci
    for e in d.exposures + d.twin:
        assert e.sci.shape == e.err.shape == e.dq.shape == (nint, npix, npix)
        assert e.sci.dtype == e.err.dtype == np.float32 and e.dq.dtype == np.uint32
        assert e.star_xy.shape == (nint, 2)
        assert e.psfmask.shape == (npix, npix) and e.psfmask.dtype == np.float32
        assert 0.0 <= e.psfmask.min() and e.psfmask.max() <= 1.0 + 1e-6
        h = e.header
        assert h["NINTS"] == nint and h["INSTRUME"] == s.instrument
        assert h["BKGDTARG"] == (e.exptype == "background")
        assert h["IS_PSF"] == (e.exptype == "psf")
        for key in ("PATTTYPE", "PATT_NUM", "NUMDTHPT", "XOFFSET", "YOFFSET", "OBSERVTN",
                    "TARGNAME", "EXPSTART", "PROGRAM", "FILTER", "CORONMSK"):
            assert key in h, (e.name, key)
        assert ("S_BKDSUB" in h) == (s.bkdsub_keyword and e.exptype != "background")
        assert e.wcs["CRPIX1"] == d.truth["mask_center"][0] + 1
        assert e.wcs["CRPIX2"] == d.truth["mask_center"][1] + 1
    t = json.loads(json.dumps(d.truth, allow_nan=False))
    assert t["setup"] == s.to_dict() and t["coronagraph"] == s.coronagraph
    assert len(t["exposures"]) == len(d.exposures) and len(t["refs"]) == len(s.refs)
    assert [x["name"] for x in t["exposures"]] == [e.name for e in d.exposures]
    members = d.asn["products"][0]["members"]
    assert [(m["exptype"], m["expname"]) for m in members] == [(e.exptype, e.name)
                                                               for e in d.exposures]
    # visits: each reference visit has its own OBSERVTN and TARGNAME per star
    refs = [e for e in d.exposures if e.exptype == "psf"]
    visits = {e.header["OBSERVTN"] for e in refs}
    assert len(visits) == sum(r.nrolls for r in s.refs)
    assert len({e.header["TARGNAME"] for e in refs}) == len(s.refs)
    starts = [e.header["EXPSTART"] for e in d.exposures]
    assert len(set(starts)) == len(starts)


def test_pixel_scale_and_lambda_over_d(named, ds):
    assert ds.truth["pixel_scale_arcsec"] == 0.063
    for name, d in named.items():
        t = d.truth
        if t["instrument"] == "MIRI":
            assert t["pixel_scale_arcsec"] == 0.11 and 3.1 < t["lambda_over_d_pix"] < 3.5
            assert 10.6 <= min(t["wavelengths_um"]) and max(t["wavelengths_um"]) <= 12.2
        else:
            assert t["pixel_scale_arcsec"] == 0.063 and 2.0 < t["lambda_over_d_pix"] < 2.4
        for e in d.exposures:
            assert e.header["PIXSCALE"] == t["pixel_scale_arcsec"]
            assert abs(e.wcs["CD2_2"]) <= t["pixel_scale_arcsec"] / 3600 * (1 + 1e-12)


def test_dither_patterns_commanded_offsets():
    mas = {"5-POINT-BOX": 15 * np.sqrt(2), "5-POINT-DIAMOND": 20, "9-POINT-CIRCLE": 15,
           "3-POINT-BAR": 15}
    for pattern, radius in mas.items():
        pix, arc = dither_offsets(pattern, "NIRCAM", 0.063)
        r = 1000 * np.hypot(*(arc - arc[0]).T)[1:]
        np.testing.assert_allclose(r, radius, atol=1e-9)
        np.testing.assert_allclose(pix, (arc - arc[0]) / 0.063)
    pix, arc = dither_offsets("9-POINT-SMALL-GRID", "MIRI", 0.11)
    np.testing.assert_allclose(arc[0], [0.2185, 0.1273])
    steps = 1000 * (arc - arc[0])
    np.testing.assert_allclose(np.unique(np.round(steps, 9)), [-10, 0, 10])
    assert len(np.unique(np.round(steps, 6), axis=0)) == 9
    _, arc = dither_offsets("5-POINT-BAR", "NIRCAM", 0.063)
    assert np.all(arc[:, 1] == 0) and np.ptp(arc[:, 0]) == pytest.approx(0.06)
    assert set(DITHER_PATTERNS) >= {"NONE", "5-POINT-BOX", "5-POINT-DIAMOND", "9-POINT-CIRCLE",
                                    "9-POINT-SMALL-GRID", "3-POINT-BAR", "5-POINT-BAR"}


@pytest.mark.parametrize("name", NAMED)
def test_star_positions_follow_xoffset_and_ta(named, name):
    d = named[name]
    t = d.truth
    mc = np.array(t["mask_center"])
    scale = t["pixel_scale_arcsec"]
    exps = {x["name"]: x for x in t["exposures"]}
    for e in d.exposures:
        x = exps[e.name]
        if e.exptype == "background":
            assert np.isnan(e.star_xy).all() and x["star_xy"] is None
            continue
        np.testing.assert_array_equal(np.array(x["star_xy"]), e.star_xy)
        assert 0.05 - 1e-9 <= np.hypot(*x["ta_pix"]) <= 0.30 + 1e-9
        origin = np.array(x.get("xoffset_origin_arcsec", [0.0, 0.0]))
        cmd = (np.array([e.header["XOFFSET"], e.header["YOFFSET"]]) - origin) / scale
        expect = mc + np.array(x["ta_pix"]) + cmd
        # dither error (2 mas per axis) and per-integration jitter (0.007 px)
        tol = 4 * np.hypot(0.002 / scale, 0.007)
        assert np.all(np.abs(e.star_xy.mean(axis=0) - expect) < tol), e.name
    # every visit has its own target-acquisition error
    tas = {tuple(x["ta_pix"]) for x in t["exposures"] if x["exptype"] != "background"}
    assert len(tas) == len({x["visit"] for x in t["exposures"] if x["exptype"] != "background"})


def test_flux_ratios_and_colours(named):
    t = named["nircam-round-9circle-3stars"].truth
    ratios = {x["ref_star"]: x["flux_ratio"] for x in t["exposures"] if x["exptype"] == "psf"}
    assert sorted(ratios) == [1, 2, 3]
    assert [ratios[k] for k in (1, 2, 3)] == [r["flux_ratio"] for r in t["refs"]]
    assert all(0.25 <= r <= 4.0 for r in ratios.values()) and len(set(ratios.values())) == 3
    weights = [tuple(r["weights"]) for r in t["refs"]]
    assert len(set(weights)) == 3 and all(sum(w) == pytest.approx(1.0) for w in weights)
    assert all(abs(r["colour"]) <= 1.5 for r in t["refs"])
    assert all(2.0 <= r["wfe_delta_nm"] <= 6.0 for r in t["refs"])


def test_miri_backgrounds_and_subtraction(named):
    d = named["miri-4qpm-9grid-bkg"]
    t = d.truth
    read = t["read_noise"]
    bkg = [e for e in d.exposures if e.exptype == "background"]
    sci = [e for e in d.exposures if e.exptype == "science"]
    ref = [e for e in d.exposures if e.exptype == "psf"]
    assert [e.name for e in bkg] == ["demo_bkg_sci1_calints.fits", "demo_bkg_sci2_calints.fits",
                                     "demo_bkg_ref1_calints.fits"]
    level = np.median([np.nanmedian(e.sci) for e in bkg])
    assert 200 * read < level < 2500 * read
    # the sky is already removed from science and references, without S_BKDSUB
    for e in sci + ref:
        assert abs(np.nanmedian(e.sci)) < 0.2 * level
        assert "S_BKDSUB" not in e.header
        assert np.nanmedian(e.err) > 0.5 * np.sqrt(level)       # its noise remains
    # backgrounds can be matched: programme, filter and time
    assert bkg[0].header["PROGRAM"] == sci[0].header["PROGRAM"] != ref[0].header["PROGRAM"]
    assert bkg[2].header["PROGRAM"] == ref[0].header["PROGRAM"]
    assert all(b.header["FILTER"] == "F1140C" and b.header["PATTTYPE"] == "BACKGROUND"
               for b in bkg)
    assert min(b.header["EXPSTART"] for b in bkg) > sci[0].header["EXPSTART"]
    assert ref[0].header["PATTTYPE"] == "9-POINT-SMALL-GRID"
    assert ref[0].header["XOFFSET"] == pytest.approx(0.2185)
    for x in t["exposures"]:
        assert x["sky"] > 0
        if x["exptype"] == "background":
            assert x["sky_subtracted"] == 0.0
        else:
            assert 0.8 * x["sky"] < x["sky_subtracted"] < 1.05 * x["sky"]


def test_bkdsub_keyword_variant():
    s = Setup(name="k", coronagraph="miri-4qpm", science_rolls=1, nints=1,
              refs=(RefStar(),), sci_backgrounds=1, background_subtracted=True,
              bkdsub_keyword=True)
    d = simulate_dataset("small", seed=2, setup=s, nplanets=1)
    for e in d.exposures:
        assert (e.header.get("S_BKDSUB") == "COMPLETE") == (e.exptype != "background")
    plain = simulate_dataset("small", seed=2, nplanets=1,
                             setup=Setup(name="p", coronagraph="nircam-round", nints=1,
                                         refs=(RefStar(),)))
    assert not any("S_BKDSUB" in e.header for e in plain.exposures)
    assert plain.truth["background_subtracted"] is False


def test_4qpm_transmission_cross(named):
    d = named["miri-4qpm-9grid-bkg"]
    m = d.exposures[0].psfmask.astype(float)
    cx, cy = (int(v) for v in d.truth["mask_center"])
    assert m[cy, cx] < 0.15                                   # the star behind the centre
    far = [4, 12, 52, 60]
    arm = [m[cy, x] for x in far] + [m[y, cx] for y in far]   # along both boundaries
    assert max(arm) < 0.45
    assert min(m[y, x] for y in far for x in far) > 0.85      # off the cross
    np.testing.assert_allclose(m[cy, cx - 10:cx], m[cy, cx + 10:cx:-1], atol=1e-6)
    np.testing.assert_allclose(m[:, cx], m[cy, :], atol=1e-6)   # the same profile in x and y
    # the sky behind the 4QPM: a dip along the vertical boundary, a glow along the horizontal
    b = np.stack([np.where(e.dq & 1, np.nan, e.sci)[0] for e in d.exposures
                  if e.exptype == "background"])
    level = np.nanmedian(b)
    assert np.nanmedian(b[:, 4:24, cx]) < 0.9 * level
    assert np.nanmedian(b[:, cy, 4:24]) > 1.05 * level


def test_round_and_bar_transmission(named, ds):
    m = ds.exposures[0].psfmask
    c = int(ds.truth["mask_center"][0])
    sig = ds.truth["mask_sigma_pix"]
    assert m[c, c] == pytest.approx(0.0, abs=1e-6)
    assert m[c, c + 5] == pytest.approx((1 - np.exp(-25 / (2 * sig ** 2))) ** 2, rel=1e-5)
    d = named["nircam-bar-5bar"]
    t = d.truth
    cx, cy = t["mask_center"]
    assert cx != 32.0 and cy == 32.0                           # star off the frame centre
    m = d.exposures[0].psfmask.astype(float)
    assert m[int(cy), :].max() < 1e-3                          # along the whole bar axis
    half = [np.argmax(m[int(cy):, x] > 0.5) for x in (2, 61)]
    assert half[0] < half[1]                                    # the bar widens along +x
    rows = np.abs(np.arange(64) - cy) > 20
    assert m[rows].min() > 0.95
    # the neighbouring mask's edge in the bottom corners (nodither set-up)
    n = named["nircam-round-nodither-2rolls"].exposures[0].psfmask
    assert n[10, 2] < 0.05 and n[10, 61] < 0.05 and n[60, 2] > 0.99


def test_planets_avoid_low_transmission(named):
    for d in named.values():
        m = d.exposures[0].psfmask
        for p in d.truth["planets"]:
            for x, y in p["xy_roll"]:
                assert m[int(round(y)), int(round(x))] >= 0.5


def test_science_gradient_not_in_references():
    s = Setup(name="g", coronagraph="nircam-round", nints=4, refs=(RefStar(),),
              sky=30.0, sky_gradient=400.0)
    d = simulate_dataset("small", seed=4, setup=s, nplanets=0)

    def tilt(e):
        a = np.where((e.dq & 1) == 0, e.sci, np.nan).astype(float)
        band = a[:, :, :12], a[:, :, -12:], a[:, :12, :], a[:, -12:, :]
        med = [np.nanmedian(b) for b in band]
        return np.hypot(med[1] - med[0], med[3] - med[2])

    sci = [e for e in d.exposures if e.exptype == "science"]
    ref = [e for e in d.exposures if e.exptype == "psf"]
    assert min(tilt(e) for e in sci) > 150 and max(tilt(e) for e in ref) < 40


def test_setup_determinism_and_random(named):
    a = simulate_dataset("small", seed=0, setup="nircam-bar-5bar")
    b = named["nircam-bar-5bar"]
    assert _digest(a) == _digest(b) and a.truth == b.truth
    c = simulate_dataset("small", seed=1, setup="nircam-bar-5bar")
    assert _digest(a) != _digest(c)
    r = simulate_dataset("small", seed=5, setup="random", nplanets=1)
    assert r.truth["setup"] == draw_setup(5).to_dict()
    assert draw_setup(5) == draw_setup(5) and draw_setup(5) != draw_setup(6)
    assert _digest(r) == _digest(simulate_dataset("small", seed=5, setup=draw_setup(5),
                                                  nplanets=1))


def test_draw_setup_covers_the_dimensions():
    drawn = [draw_setup(s) for s in range(120)]
    assert {s.coronagraph for s in drawn} == {"nircam-round", "nircam-bar", "miri-4qpm"}
    assert {len(s.refs) for s in drawn} == {1, 2, 3}
    assert {s.science_rolls for s in drawn} == {1, 2}
    assert 1 in {s.nints for s in drawn} and any((s.nints or 3) > 1 for s in drawn)
    patterns = {r.dither for s in drawn for r in s.refs}
    assert {"NONE", "5-POINT-BOX", "9-POINT-CIRCLE", "9-POINT-SMALL-GRID",
            "5-POINT-BAR"} <= patterns
    assert any(r.nrolls == 2 for s in drawn for r in s.refs)
    assert {(s.background_subtracted, s.bkdsub_keyword) for s in drawn} == {
        (False, False), (True, False), (True, True)}
    assert any(s.sci_backgrounds == 2 for s in drawn) and any(s.ref_backgrounds for s in drawn)
    assert any(s.sky_gradient > 0 for s in drawn) and any(s.sky_gradient == 0 for s in drawn)
    assert any(s.separate_ref_program for s in drawn)
    for s in drawn:
        assert sum(r.dither != "NONE" for r in s.refs) <= 2
        if s.coronagraph == "nircam-bar":
            assert s.bar_offset != 0
        if s.coronagraph != "nircam-bar":
            assert all("BAR" not in r.dither for r in s.refs)


def test_write_simulation_psfmask_and_background_members(named, tmp_path):
    from astropy.io import fits

    from coron_cli.demo import psfmask_name, write_simulation

    d = named["miri-4qpm-9grid-bkg"]
    paths = write_simulation(d, str(tmp_path))
    for e in d.exposures + d.twin:
        path = tmp_path / psfmask_name(e.name)
        assert path.name == e.name.replace("_calints.fits", "_calints_psfmask.fits")
        with fits.open(path) as h:
            assert h[0].data is None and h["SCI"].data.dtype.newbyteorder("=") == np.float32
            np.testing.assert_array_equal(h["SCI"].data, e.psfmask)
    for key in ("asn", "asn_noplanet"):
        with open(paths[key]) as fh:
            members = json.load(fh)["products"][0]["members"]
        bkg = [m["expname"] for m in members if m["exptype"] == "background"]
        assert bkg == [e.name for e in d.exposures if e.exptype == "background"]
        assert all(os.path.exists(tmp_path / n) for n in (m["expname"] for m in members))
    with fits.open(tmp_path / "demo_bkg_ref1_calints.fits") as h:
        assert h[0].header["BKGDTARG"] is True and h[0].header["EXP_TYPE"] == "MIR_4QPM"
    # the classic set-up's folder keeps exactly its files
    classic = tmp_path / "classic"
    classic.mkdir()
    write_simulation(simulate_dataset("small", seed=0, nplanets=0), str(classic))
    assert not [n for n in os.listdir(classic) if "psfmask" in n]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMED)
def test_named_setups_medium(name):
    d = simulate_dataset("medium", seed=1, setup=name)
    s = SETUPS[name]
    assert d.exposures[0].sci.shape == (s.nints or 5, 160, 160)
    refs = [e for e in d.exposures if e.exptype == "psf"]
    assert sum(e.sci.shape[0] for e in refs) <= 60
    assert len(d.truth["planets"]) == 6
    json.dumps(d.truth, allow_nan=False)
