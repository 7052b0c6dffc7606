"""High-level science products through the steps: contrast, throughput by injection,
source protection, detections (hlsp_step, klip_inject_step, throughput_table, detect_step,
and run_association with --contrast --detect on the small simulation)."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from numpy.testing import assert_allclose

from coron_cli import core, steps
from coron_cli.products import Product
from tests.helpers import gaussian, klip_pair


def image_product(img, err=None, **header):
    hdr = fits.Header(header)
    return Product(sci=np.asarray(img, np.float32)[None],
                   err=None if err is None else np.asarray(err, np.float32)[None],
                   sci_header=hdr, path="synthetic")


# ---------------------------------------------------------------- contrast table

def test_annulus_sigma_of_known_noise_and_contrast_columns():
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 3.0, (161, 161))
    prod = image_product(img, np.full(img.shape, 3.0), STARCENX=80.0, STARCENY=80.0,
                         PIXSCALE=0.05)
    before = prod.sci.copy()
    snr, con = steps.hlsp_step(prod, steps.HlspConfig(noise_width=4, star_flux=1e3,
                                                      star_flux_method="aperture", fwhm=3.0))
    assert np.array_equal(prod.sci, before)  # inputs untouched
    t = con.tables["CONTRAST"]
    far = (t["radius"] > 20) & (t["radius"] < 70)
    assert_allclose(np.median(t["sigma"][far]), 3.0, rtol=0.03)
    # white noise: the sum over a disk of N pixels has sigma 3 sqrt(N)
    npix = core.metrics._disk(1.5).sum()
    assert_allclose(np.median(t["sigma_aperture"][far]), 3.0 * np.sqrt(npix), rtol=0.06)
    n = 2 * np.pi * np.asarray(t["radius"]) / 3.0
    assert_allclose(t["contrast_5sigma"], core.student_t_factor(n) * t["sigma_aperture"] / 1e3)
    assert_allclose(t["radius_arcsec"], t["radius"] * 0.05)
    assert "throughput" not in t.colnames
    assert con.primary["STARFLUX"] == 1e3 and con.primary["STARFMTH"] == "aperture"
    assert snr.sci_header["SNRMETH"] == "ratio"

def test_star_flux_from_offaxis_psf():
    psf = 500.0 * gaussian((41, 41), 20.3, 19.8, 1.5)
    prod = Product(sci=psf[None].astype(np.float32), path="psf.fits")
    assert_allclose(steps.offaxis_flux(prod, method="peak"), psf.max(), rtol=1e-6)
    # a disk of radius 3 holds nearly all of a sigma-1.5 Gaussian: 2 pi sigma^2 (1 - e^-2)
    ap = steps.offaxis_flux(prod, method="aperture", fwhm=6.0)
    assert_allclose(ap, 500 * 2 * np.pi * 1.5 ** 2 * (1 - np.exp(-2)), rtol=0.03)
    assert core.psf_center(psf) == pytest.approx((20.3, 19.8), abs=1e-6)


# ---------------------------------------------------------------- injection and throughput

def test_injection_equals_injecting_into_copies():
    rng = np.random.default_rng(5)
    science, align = klip_pair(rng)
    psf = 1000 * gaussian((25, 25), 12, 12, 1.2)
    # with the fit mask fixed (no source protection, which depends on the image)
    kw = steps.KlipConfig(truncate=[4, 6], zones=2, zone_sectors=2, protect=None)
    before = align.sci.copy(), science.sci.copy()
    sub, inj = steps.klip_inject_step(science, align, psf, kw, steps.InjectConfig(fwhm=2.8))
    assert np.array_equal(before[0], align.sci) and np.array_equal(before[1], science.sci)
    assert inj.model.shape[0] == 6 and inj.positions.shape == (6, inj.separations.size, 2)
    assert "THROUGHPUT" in sub.tables and sub.images["KLSUB"][0].shape == (2, 2, 64, 64)
    plain = steps.klip_step(science, align, kw)
    assert_allclose(sub.sci, plain.sci, atol=1e-5 * np.abs(plain.sci).max())
    assert_allclose(sub.err, plain.err, rtol=1e-2)  # residual ~ rounding here
    real = plain.sci.astype(np.float64).mean(axis=0)
    k = 2
    copy = Product(sci=science.sci + inj.model[k][None].astype(np.float32), err=science.err,
                   sci_header=science.sci_header, path="copy")
    fake = steps.klip_step(copy, align, kw).sci.astype(np.float64).mean(axis=0)
    assert_allclose(fake - real, inj.recovered[k], atol=2e-3 * inj.model.max())

def test_throughput_noiseless_known_subtraction():
    rng = np.random.default_rng(8)
    shape, center, fwhm = (64, 64), (31.6, 32.2), 2.8
    psf = gaussian((25, 25), 12, 12, 1.2)
    # references without the planets: KLIP leaves the fakes alone far from the star
    # (throughput ~ 1), and subtracts some of them where the speckle modes are
    science, align = klip_pair(rng)
    # one zone over the whole frame (classic KLIP), where these expectations are exact
    whole = dict(zone_width=None, sky_order=0)
    sub, inj = steps.klip_inject_step(science, align, psf, steps.KlipConfig(truncate=[8], **whole),
                                      steps.InjectConfig(fwhm=fwhm))
    table = sub.tables["THROUGHPUT"]
    assert table["radius"][0] == pytest.approx(2 * fwhm) and (table["npa"] == 6).all()
    far = table["radius"] > 4 * fwhm
    assert far.sum() >= 3
    assert_allclose(table["throughput"][far], 1.0, atol=0.03)
    assert_allclose(table["throughput_aperture"][far], 1.0, atol=0.03)
    assert (table["throughput"] < 1.01).all() and table["throughput"][0] < 0.95
    # references holding every fake plus independent noise of equal norm: KLIP with all
    # modes removes the projection of each fake on (fake + noise), i.e. half of it
    seps = steps.injection_separations(shape, center, fwhm=fwhm)
    pa = core.injection_grid(seps, 6)
    pos = np.asarray(center) + core.sky_offsets(seps[None, :], pa, 0.0)
    fakes = core.inject_sources(shape, psf, pos)
    noise = rng.normal(size=fakes.shape)
    noise *= np.linalg.norm(fakes, axis=(1, 2), keepdims=True) / \
        np.linalg.norm(noise, axis=(1, 2), keepdims=True)
    science, align = klip_pair(rng, refs_extra=fakes + noise)
    _, inj = steps.klip_inject_step(science, align, psf,
                                    steps.KlipConfig(truncate=[100], **whole),
                                    steps.InjectConfig(fwhm=fwhm))
    table = steps.throughput_table(inj, fwhm=fwhm)
    far = table["radius"] > 4 * fwhm  # closer in, the speckle modes subtract some more
    assert_allclose(table["throughput"][far], 0.5, atol=0.05)
    assert (table["throughput"] < 0.55).all()


# ---------------------------------------------------------------- end to end on the demo data
# (the hl_run fixture of tests/conftest.py: run_association with --contrast --detect 5)

def test_detections_find_bright_planets_and_nothing_else(hl_run):
    truth = hl_run["truth"]
    det = Table.read(hl_run["paths"]["detections"], hdu="DETECTIONS")
    ecsv = Table.read(hl_run["paths"]["detections_ecsv"], format="ascii.ecsv")
    assert len(ecsv) == len(det) and ecsv.colnames == det.colnames
    for col in det.colnames:
        assert_allclose(np.asarray(ecsv[col], float), np.asarray(det[col], float),
                        rtol=1e-12, equal_nan=True)
    assert {"x", "y", "sep", "sep_arcsec", "pa", "snr", "flux", "contrast",
            "contrast_calibrated"} <= set(det.colnames)
    with fits.open(hl_run["paths"]["i2d"]) as h:
        cx, cy = h["SCI"].header["STARCENX"], h["SCI"].header["STARCENY"]
    planets = np.array([[cx + p["xy_north_up"][0], cy + p["xy_north_up"][1]]
                        for p in truth["planets"]])
    d = np.hypot(np.asarray(det["x"])[:, None] - planets[None, :, 0],
                 np.asarray(det["y"])[:, None] - planets[None, :, 1])
    assert (d.min(axis=1) < 1.5).all(), "a candidate that is no planet"
    assert len(set(d.argmin(axis=1))) == len(det), "two candidates for one planet"
    for i, p in enumerate(truth["planets"]):
        if p["contrast"] > 1e-4:
            k = np.flatnonzero(d[:, i] < 1.5)
            assert k.size == 1, f"planet {i} (contrast {p['contrast']:.1e}) not found"
            row = det[k[0]]
            assert row["sep"] == pytest.approx(p["sep_pix"], abs=1.0)
            assert (row["pa"] - p["pa_deg"] + 180) % 360 - 180 == pytest.approx(0, abs=5)
            assert row["contrast_calibrated"] == pytest.approx(p["contrast"], rel=0.35)
            assert row["snr"] >= 5

def test_contrast_product_with_throughput(hl_run):
    with fits.open(hl_run["paths"]["contrast"]) as h:
        t = Table.read(h["CRN_CONTRAST"])
        thr = Table.read(h["THROUGHPUT"])
        assert h[0].header["STARFLUX"] > 0
        star_flux = h[0].header["STARFLUX"]
    for col in ("radius", "radius_arcsec", "npix", "sigma", "contrast_5sigma", "throughput",
                "contrast_5sigma_calibrated"):
        assert col in t.colnames
    truth = hl_run["truth"]
    assert star_flux == pytest.approx(truth["star_peak"], rel=0.05)   # the off-axis PSF's peak
    assert_allclose(t["radius_arcsec"], t["radius"] * truth["pixel_scale_arcsec"], rtol=1e-6)
    assert (t["npix"] > 0).all() and (t["sigma"] > 0).all()
    assert_allclose(t["contrast_5sigma"], core.student_t_factor(
        2 * np.pi * np.asarray(t["radius"]) / truth["lambda_over_d_pix"]) * t["sigma"] / star_flux)
    ok = np.isfinite(t["throughput"])
    assert ok.sum() >= 5 and (t["throughput"][ok] > 0.5).all()
    assert (t["throughput"][ok] <= 1.05).all()
    assert_allclose(t["contrast_5sigma_calibrated"][ok],
                    t["contrast_5sigma"][ok] / t["throughput"][ok])
    assert (thr["npa"] == 6).all() and thr["radius"][0] == pytest.approx(
        2 * hl_run["truth"]["lambda_over_d_pix"])
    ecsv = Table.read(hl_run["paths"]["contrast_ecsv"], format="ascii.ecsv")
    assert ecsv.colnames == t.colnames and len(ecsv) == len(t)
    # every psfsub and the i2d carry the THROUGHPUT table; coron-hlsp on the i2d uses it
    for kind in ("psfsub", "i2d"):
        path = [p["path"] for p in hl_run["summary"]["products"] if p["kind"] == kind][0]
        with fits.open(path) as h:
            assert "THROUGHPUT" in h
            tp = Table.read(h["THROUGHPUT"])
        # separations every fwhm from 2 fwhm, 6 angles each, throughputs in (0, 1.05]
        lod = hl_run["truth"]["lambda_over_d_pix"]
        assert_allclose(np.diff(tp["radius"]), lod, rtol=1e-9)
        assert tp["radius"][0] == pytest.approx(2 * lod) and (tp["npa"] == 6).all()
        good = np.isfinite(tp["throughput"])
        assert good.sum() >= 5, kind
        assert ((tp["throughput"][good] > 0) & (tp["throughput"][good] <= 1.05)).all(), kind
        if kind == "i2d":
            # the contrast product carries the i2d's table, and its column is read from it
            for col in tp.colnames:
                assert np.array_equal(np.asarray(tp[col]), np.asarray(thr[col]),
                                      equal_nan=True), col
            assert_allclose(t["throughput"][ok],
                            np.interp(t["radius"][ok], tp["radius"][good],
                                      tp["throughput"][good]), rtol=1e-6)
    assert "contrast" in hl_run["summary"]["timings"]


# ---------------------------------------------------------------- source protection

def test_protect_keeps_a_companion_out_of_the_fit():
    rng = np.random.default_rng(21)
    science, align = klip_pair(rng, nref=10)
    yy, xx = np.indices((64, 64))
    planet = 40 * np.exp(-((xx - 38.2) ** 2 + (yy - 33.0) ** 2) / (2 * 1.2 ** 2))
    noisy = science.sci + planet[None] + rng.normal(0, 1, science.sci.shape)
    sci = Product(sci=noisy.astype(np.float32), err=science.err, sci_header=science.sci_header,
                  path="sci")
    near = np.hypot(xx - 38.2, yy - 33.0) < 3
    flux = {}
    for protect in (None, 5.0):
        sub = steps.klip_step(sci, align, steps.KlipConfig(truncate=[10], protect=protect))
        flux[protect] = sub.sci.astype(np.float64).mean(axis=0)[near].sum() / planet[near].sum()
        assert (sub.sci_header["KLPROTEC"] > 0) == (protect is not None)
    # close to the star, where the references' modes have power, the fit takes most of
    # the companion (0.38 of its flux is left here); protected, it keeps (nearly) all
    assert flux[None] < 0.6
    assert abs(flux[5.0] - 1) < 0.05

def test_zones_give_a_protected_throughput_for_detections():
    """In annuli a few lambda/D wide the fit takes part of an unprotected fake away; a
    found source is left out of the fit, so the table also gives its (higher) throughput."""
    rng = np.random.default_rng(8)
    science, align = klip_pair(rng)
    psf = gaussian((25, 25), 12, 12, 1.2)
    sub, inj = steps.klip_inject_step(
        science, align, psf, steps.KlipConfig(truncate=[8], zone_width="3", sky_order=1),
        steps.InjectConfig(fwhm=2.8))
    t = sub.tables["THROUGHPUT"]
    assert "throughput_protected" in t.colnames
    far = np.asarray(t["radius"]) > 4 * 2.8
    assert np.all(np.asarray(t["throughput_protected"])[far] > np.asarray(t["throughput"])[far])
    assert_allclose(np.asarray(t["throughput_protected"])[far], 1.0, atol=0.1)
