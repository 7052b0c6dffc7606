"""High-level science products: contrast, throughput by injection, Mawet SNR, detections, plots."""

import os
import sys
import time

import click
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from numpy.testing import assert_allclose
from scipy import special, stats

from coron_cli import core, steps
from coron_cli.cli import coron3, hlsp
from coron_cli.cli.common import run
from coron_cli.products import Product


def invoke(runner, module, args):
    """Invoke a command through coron's error policy (coron_cli.cli.common.run)."""
    wrapper = click.Command("t", callback=lambda: run(module.cli, "coron-test",
                                                      [str(a) for a in args]))
    return runner.invoke(wrapper, [])


def gaussian(shape, x, y, sigma):
    yy, xx = np.indices(shape, dtype=np.float64)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def image_product(img, err=None, **header):
    hdr = fits.Header(header)
    return Product(sci=np.asarray(img, np.float32)[None],
                   err=None if err is None else np.asarray(err, np.float32)[None],
                   sci_header=hdr, path="synthetic")


# ---------------------------------------------------------------- Student-t factor

@pytest.mark.parametrize("n", [3, 5, 10, 20, 100, 1000])
def test_student_t_factor_matches_scipy(n):
    fpf = stats.norm.sf(5.0)
    assert_allclose(core.student_t_factor(n), stats.t.isf(fpf, n - 1) * np.sqrt(1 + 1 / n),
                    rtol=1e-12)


def test_student_t_factor_hard_numbers():
    # the false-positive fraction of a Gaussian 5 sigma
    fpf = 0.5 * special.erfc(5 / np.sqrt(2))
    assert_allclose(fpf, 2.866515718791939e-07, rtol=1e-12)
    # n = 10 resolution elements: tau is the Student-t quantile with 9 degrees of freedom;
    # its tail, written with the regularised incomplete beta function (not scipy.stats),
    # sf(t, nu) = I_{nu / (nu + t^2)}(nu / 2, 1 / 2) / 2, is the fpf at tau = 12.42202
    tau = 12.4220240627
    assert_allclose(0.5 * special.betainc(4.5, 0.5, 9 / (9 + tau ** 2)), fpf, rtol=1e-8)
    assert_allclose(core.student_t_factor(10), tau * np.sqrt(1.1), rtol=1e-9)
    assert_allclose(core.student_t_factor(10), 13.0283287, rtol=1e-7)
    # whole elements only; 1 element has no degree of freedom; large n gives 5 sigma
    assert core.student_t_factor(10.99) == core.student_t_factor(10)
    assert np.isnan(core.student_t_factor(1.9))
    assert_allclose(core.student_t_factor(1e7), 5.0, rtol=1e-5)
    # the contrast curve uses n = 2 pi r / fwhm
    c = core.contrast_curve(np.array([10.0]), np.array([3.0]), star_flux=1e4, fwhm=2 * np.pi)
    assert_allclose(c, 13.0283287 * 3.0 / 1e4, rtol=1e-7)


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

def _klip_pair(rng, refs_extra=None, shape=(64, 64), nref=8, nint=2):
    """A science exposure of speckles and its aligned references (noiseless)."""
    ny, nx = shape
    modes = np.stack([gaussian(shape, 31.6 + rng.normal(0, 2), 32.2 + rng.normal(0, 2),
                               2 + 2 * rng.random()) for _ in range(nref)])
    refs = np.einsum("rk,kyx->ryx", rng.normal(size=(nref, nref)), modes) * 100
    if refs_extra is not None:
        refs = np.concatenate([refs, refs_extra])
    sci = np.einsum("k,kyx->yx", rng.normal(size=len(refs)), refs)
    hdr = fits.Header({"STARCENX": 31.6, "STARCENY": 32.2})
    science = Product(sci=np.repeat(sci[None], nint, 0).astype(np.float32),
                      err=np.ones((nint, ny, nx), np.float32), sci_header=hdr, path="sci")
    align = Product(sci=np.repeat(refs[None], nint, 0).astype(np.float32),
                    err=np.ones((nint, len(refs), ny, nx), np.float32), sci_header=hdr,
                    path="align")
    return science, align


def test_injection_equals_injecting_into_copies():
    rng = np.random.default_rng(5)
    science, align = _klip_pair(rng)
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
    science, align = _klip_pair(rng)
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
    science, align = _klip_pair(rng, refs_extra=fakes + noise)
    _, inj = steps.klip_inject_step(science, align, psf,
                                    steps.KlipConfig(truncate=[100], **whole),
                                    steps.InjectConfig(fwhm=fwhm))
    table = steps.throughput_table(inj, fwhm=fwhm)
    far = table["radius"] > 4 * fwhm  # closer in, the speckle modes subtract some more
    assert_allclose(table["throughput"][far], 0.5, atol=0.05)
    assert (table["throughput"] < 0.55).all()


def test_inject_sources_subpixel():
    psf = gaussian((31, 31), 15.0, 15.0, 1.6)
    pos = np.array([[[10.3, 40.7], [50.55, 12.25]]])
    out = core.inject_sources((60, 70), psf, pos, [[2.0, 0.5]], center=(15.0, 15.0))
    expect = 2.0 * gaussian((60, 70), 10.3, 40.7, 1.6) + 0.5 * gaussian((60, 70), 50.55,
                                                                          12.25, 1.6)
    assert_allclose(out[0], expect, atol=2e-4)


# ---------------------------------------------------------------- Mawet SNR map

def test_mawet_map_vectorised_and_agrees_with_aperture_snr():
    from scipy import ndimage

    rng = np.random.default_rng(11)
    img = ndimage.gaussian_filter(rng.normal(0, 1, (320, 320)), 1.0)
    center = (160.3, 159.7)
    pos = np.array([[180.0, 170.0], [100.0, 150.0], [160.0, 200.0], [200.0, 120.0]])
    for x, y in pos:
        img += 1.5 * gaussian(img.shape, x, y, 1.0)
    before = img.copy()
    t0 = time.perf_counter()
    m = core.snr_map_mawet(img, center, fwhm=2.2)
    assert time.perf_counter() - t0 < 10  # about 0.2 s: no loop over pixels
    assert np.array_equal(img, before)
    assert m.shape == img.shape and m.dtype == np.float32
    for k, (x, y) in enumerate(pos):
        ref, _ = core.aperture_snr(img, pos[k:k + 1], center, fwhm=2.2,
                                   avoid=np.delete(pos, k, axis=0))
        assert m[int(y), int(x)] == pytest.approx(ref[0], rel=0.1)
    # pure noise has unit spread; the core (fewer than 3 elements) is NaN
    assert 0.9 < np.nanstd(m) < 1.1
    assert np.isnan(m[160, 160])


# ---------------------------------------------------------------- end to end on the demo data

@pytest.fixture(scope="module")
def hl_run(demo_data, tmp_path_factory):
    """coron3 run --contrast --detect 5 --format ecsv on the small simulation."""
    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    out = str(tmp_path_factory.mktemp("hl"))
    truth = demo_data["truth"]
    psf = np.asarray(demo_data["dataset"].offaxis_psf, dtype=np.float64)
    config = PipelineConfig.from_options(truncate=[50], star_flux=float(psf.max()),
                                         fwhm=truth["lambda_over_d_pix"], contrast=True,
                                         detect=5.0, table_format="ecsv")
    summary = run_association(demo_data["paths"]["asn"], out, config, offaxis_psf=psf)
    paths = {p["kind"]: p["path"] for p in summary["products"]}
    return {"summary": summary, "out": out, "paths": paths, "truth": truth}


def test_detections_find_bright_planets_and_nothing_else(hl_run):
    truth = hl_run["truth"]
    det = Table.read(hl_run["paths"]["detections"], hdu="DETECTIONS")
    ecsv = Table.read(hl_run["paths"]["detections_ecsv"], format="ascii.ecsv")
    assert len(ecsv) == len(det) and ecsv.colnames == det.colnames
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
        t = Table.read(h["CONTRAST"])
        thr = Table.read(h["THROUGHPUT"])
        assert h[0].header["STARFLUX"] > 0
    for col in ("radius", "radius_arcsec", "npix", "sigma", "contrast_5sigma", "throughput",
                "contrast_5sigma_calibrated"):
        assert col in t.colnames
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
    assert "contrast" in hl_run["summary"]["timings"]


def test_klip_contrast_equals_run(hl_run, demo_data, tmp_path, runner):
    from coron_cli.cli import klip

    sub = [p["path"] for p in hl_run["summary"]["products"] if p["kind"] == "psfsub"][0]
    ali = [p["path"] for p in hl_run["summary"]["products"] if p["kind"] == "psfalign"][0]
    sci = os.path.join(demo_data["folder"], os.path.basename(sub).replace("_c1001_psfsub",
                                                                         "_calints"))
    out = tmp_path / "k_psfsub.fits"
    r = invoke(runner, klip, [sci, ali, "--contrast", "--psf-offaxis",
                              demo_data["paths"]["offaxis"], "--fwhm",
                              hl_run["truth"]["lambda_over_d_pix"], "-o", out])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as a, fits.open(sub) as b:
        assert np.array_equal(a["SCI"].data, b["SCI"].data)
        assert np.array_equal(a["THROUGHPUT"].data, b["THROUGHPUT"].data)
    r = invoke(runner, klip, [sci, ali, "--contrast", "-o", tmp_path / "x.fits"])
    assert r.exit_code == 2 and "--psf-offaxis" in r.stderr
    assert not (tmp_path / "x.fits").exists()


def test_hlsp_cli_ecsv_mawet_and_detections(hl_run, tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    i2d = hl_run["paths"]["i2d"]
    lod = hl_run["truth"]["lambda_over_d_pix"]
    r = invoke(runner, hlsp, [i2d, "--star-flux", "1e6", "--format", "ecsv", "--snr-method",
                              "mawet", "--detect", "5", "--fwhm", lod])
    assert r.exit_code == 0, r.stderr
    root = os.path.basename(i2d).replace("_i2d.fits", "")
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(f"{root}{s}" for s in ("_snr.fits", "_contrast.fits",
                                                  "_contrast.ecsv", "_detections.fits",
                                                  "_detections.ecsv"))
    with fits.open(f"{root}_snr.fits") as h:
        assert h["SCI"].header["SNRMETH"] == "mawet"
    con = Table.read(f"{root}_contrast.ecsv", format="ascii.ecsv")
    assert "contrast_5sigma_calibrated" in con.colnames  # the i2d's THROUGHPUT table
    det = Table.read(f"{root}_detections.ecsv", format="ascii.ecsv")
    assert len(det) >= 1 and (det["snr"] >= 5).all()


def test_plot_without_matplotlib_is_one_line_error(hl_run, tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = invoke(runner, hlsp, [hl_run["paths"]["i2d"], "--plot"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "coron[plot]" in lines[0] and "--plot" in lines[0]
    assert os.listdir(tmp_path) == []
    r = invoke(runner, coron3, ["run", "nonexistent_asn.json", "--plot"])
    assert r.exit_code == 2 and "coron[plot]" in r.stderr


def test_plot_writes_png(hl_run, tmp_path, runner, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    r = invoke(runner, hlsp, [hl_run["paths"]["i2d"], "--star-flux", "1e6", "--detect", "5",
                              "--plot"])
    assert r.exit_code == 0, r.stderr
    pngs = sorted(n for n in os.listdir(tmp_path) if n.endswith(".png"))
    assert len(pngs) == 2
    for name in pngs:
        with open(name, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_contrast_needs_offaxis_psf(demo_data, tmp_path, runner):
    r = invoke(runner, coron3, ["run", demo_data["paths"]["asn"], "--outdir", tmp_path,
                                "--contrast"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "coron-test: error: --contrast: needs --psf-offaxis FILE " \
                               "(the unocculted PSF to inject)"
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- the calibrated curve

def test_calibrated_curve_matches_injected_planets(tmp_path):
    """Small-size version of ``python -m coron_cli.evaluate --contrast-check aperture``."""
    from coron_cli.evaluate import contrast_check

    res = contrast_check("small", 0, str(tmp_path), truncate=[50], n_pa=4,
                         groups_lod=((3.0, 8.0), (5.0, 10.0)))
    ratios = np.array([r["ratio"] for r in res["rows"]])
    assert len(ratios) == 4
    assert (np.abs(ratios - 1) < 0.35).all(), ratios
    assert abs(np.median(ratios) - 1) < 0.2, ratios


def test_protect_keeps_a_companion_out_of_the_fit():
    rng = np.random.default_rng(21)
    science, align = _klip_pair(rng, nref=10)
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
    science, align = _klip_pair(rng)
    psf = gaussian((25, 25), 12, 12, 1.2)
    sub, inj = steps.klip_inject_step(
        science, align, psf, steps.KlipConfig(truncate=[8], zone_width="3", sky_order=1),
        steps.InjectConfig(fwhm=2.8))
    t = sub.tables["THROUGHPUT"]
    assert "throughput_protected" in t.colnames
    far = np.asarray(t["radius"]) > 4 * 2.8
    assert np.all(np.asarray(t["throughput_protected"])[far] > np.asarray(t["throughput"])[far])
    assert_allclose(np.asarray(t["throughput_protected"])[far], 1.0, atol=0.1)
