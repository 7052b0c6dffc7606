"""Transmission maps and background exposures through the steps (klip, inject, hlsp,
match_backgrounds, background, align, run_association on the real MIRI crop), and the
KLIP step's outliers on real NIRCam data."""

import os

import numpy as np
import pytest
from astropy.io import fits
from numpy.testing import assert_allclose

from coron_cli import core, steps
from coron_cli.products import Product, read_product, transmission_for
from tests.helpers import AUMIC, MIRI, gaussian_psf, miri_copy, sha256


def _klip_inputs(shape=(40, 40), nint=2, nref=6, seed=0):
    rng = np.random.default_rng(seed)
    c = (19.6, 20.3)
    refs = np.stack([[(1 + 0.05 * rng.normal()) * 1e3 * gaussian_psf(shape, *c)
                      + rng.normal(0, 1, shape) for _ in range(nref)] for _ in range(nint)])
    sci = 1e3 * gaussian_psf(shape, *c)[None] + rng.normal(0, 1, (nint,) + shape)
    hdr = fits.Header([("STARCENX", c[0], "0-based"), ("STARCENY", c[1], "0-based")])
    science = Product(sci=sci.astype(np.float32), err=np.ones(sci.shape, np.float32),
                      dq=np.zeros(sci.shape, np.uint32), sci_header=hdr, path="sci")
    align = Product(sci=refs.astype(np.float32), err=np.ones(refs.shape, np.float32),
                    sci_header=hdr.copy(), path="align")
    return science, align, c


# --------------------------------------------------------------------------- transmission maps

def test_klip_leaves_low_transmission_out_of_the_fit_and_carries_the_map():
    science, align, c = _klip_inputs()
    y, x = np.indices((40, 40))
    tmap = np.where(x < 6, 0.001, 1.0)            # a neighbouring mask's edge, like NIRCam's
    sci0 = science.sci.copy()
    whole = dict(protect=None, weights="none", zone_width=None, sky_order=0)
    plain = steps.klip_step(science, align, steps.KlipConfig(truncate=(3,), **whole))
    cut = steps.klip_step(science, align, steps.KlipConfig(truncate=(3,), min_transmission=0.2,
                                                           **whole), transmission=tmap)
    assert np.array_equal(science.sci, sci0)
    assert "TRANSMIS" in cut.images and "TRANSMIS" not in plain.images
    assert_allclose(steps.product_transmission(cut), tmap, rtol=1e-6)
    # the same fit as an explicit exclusion of those pixels
    fit = tmap >= 0.2
    refs = align.sci.astype(np.float64)
    res, _, _ = core.klip_subtract(science.sci, refs, truncations=[3], fit_mask=fit)
    assert_allclose(cut.sci, res[0], atol=1e-4)
    assert not np.allclose(cut.sci, plain.sci, atol=1e-4)

def test_fake_sources_are_dimmed_by_the_transmission_and_throughput_stays_algorithmic():
    science, align, c = _klip_inputs(shape=(48, 48))
    psf = gaussian_psf((15, 15), 7, 7, sigma=1.2, halo=0)
    tmap = np.full((48, 48), 0.5)
    conf = steps.KlipConfig(truncate=(3,), protect=None)
    _, inj_half = steps.klip_inject_step(science, align, psf, conf, steps.InjectConfig(fwhm=2.5),
                                         transmission=tmap)
    _, inj_one = steps.klip_inject_step(science, align, psf, conf, steps.InjectConfig(fwhm=2.5))
    assert_allclose(inj_half.model, 0.5 * inj_one.model, atol=1e-9)
    t_half = steps.throughput_table(inj_half, fwhm=2.5)["throughput"]
    t_one = steps.throughput_table(inj_one, fwhm=2.5)["throughput"]
    assert_allclose(t_half, t_one, rtol=1e-5)       # KLIP is linear: the ratio is the same

def test_contrast_is_divided_by_the_transmission():
    rng = np.random.default_rng(3)
    img = rng.normal(0, 1.0, (61, 61))
    hdr = fits.Header([("STARCENX", 30.0, "0-based"), ("STARCENY", 30.0, "0-based")])
    y, x = np.indices(img.shape)
    r = np.hypot(x - 30, y - 30)
    tmap = np.clip(r / 20.0, 0.05, 1.0)
    with_map = Product(sci=img, err=np.ones_like(img), sci_header=hdr,
                       images={"TRANSMIS": steps.transmission_image(tmap, (30, 30))})
    without = Product(sci=img, err=np.ones_like(img), sci_header=hdr)
    _, con_t = steps.hlsp_step(with_map, steps.HlspConfig(star_flux=1e4))
    _, con = steps.hlsp_step(without, steps.HlspConfig(star_flux=1e4))
    t = con_t.tables["CONTRAST"]
    assert "contrast_5sigma_calibrated" not in con.tables["CONTRAST"].colnames
    assert_allclose(t["contrast_5sigma_calibrated"], t["contrast_5sigma"] / t["transmission"])
    k = np.argmin(np.abs(t["radius"] - 5.0))
    assert 0.2 < t["transmission"][k] < 0.3          # the mean of r/20 in the 4-6 px annulus


# --------------------------------------------------------------------------- backgrounds

def _exposure(program, mjd, sky, shape=(16, 16), name="e"):
    hdr = fits.Header({"PROGRAM": program, "EXPSTART": mjd, "FILTER": "F1140C"})
    sci = np.full((1,) + shape, sky, np.float32)
    return Product(sci=sci, err=np.ones_like(sci), dq=np.zeros(sci.shape, np.uint32),
                   primary=hdr, path=name)

def test_match_backgrounds_by_program_then_time():
    sci = [_exposure("01277", 60080.80, 0.1, name="sci")]
    refs = [_exposure("01194", 59891.60, 2.0, name="ref")]
    b_sci = _exposure("01277", 60080.89, 14.6, name="bs")
    b_ref = _exposure("01194", 59891.70, 17.3, name="br")
    other = _exposure("01277", 60080.89, 14.6, name="bf")
    other.primary["FILTER"] = "F1550C"
    s, r, out = steps.match_backgrounds([b_sci, b_ref, other], sci, refs)
    assert [b.path for b in s] == ["bs"] and [b.path for b in r] == ["br"]
    assert [b.path for b in out] == ["bf"]
    # one program for everything: the nearest exposure in time decides
    refs2 = [_exposure("01277", 60081.50, 2.0, name="ref")]
    late = _exposure("01277", 60081.51, 14.6, name="late")
    s, r, _ = steps.match_backgrounds([b_sci, late], sci, refs2)
    assert [b.path for b in s] == ["bs"] and [b.path for b in r] == ["late"]

def test_background_step_subtracts_once_with_noise_and_never_twice():
    exp = _exposure("1", 1.0, 14.0)
    bkgs = [_exposure("1", 1.1, 14.5, name=f"b{k}") for k in range(3)]
    sub, why = steps.background_step(exp, bkgs, steps.BackgroundConfig(mode="auto"))
    assert_allclose(sub.sci, -0.5, atol=1e-6)
    assert_allclose(sub.err, np.sqrt(1 + np.pi / 2 / 3), rtol=1e-6)
    assert sub.primary["BKGSUB"] is True and "subtracted" in why
    assert np.all(exp.sci == 14.0)                    # input untouched
    again, why2 = steps.background_step(sub, bkgs, steps.BackgroundConfig(mode="auto"))
    assert again.primary["BKGSUB"] is False and "already removed" in why2
    assert np.array_equal(again.sci, sub.sci)
    done = _exposure("1", 1.0, 14.0)
    done.primary["S_BKDSUB"] = "COMPLETE"
    kept, why3 = steps.background_step(done, bkgs, steps.BackgroundConfig(mode="auto"))
    assert np.array_equal(kept.sci, done.sci) and "S_BKDSUB" in why3

def test_miri_background_members_used_and_not_subtracted_twice(tmp_path):
    """The real MIRI set: its backgrounds read ~15 MJy/sr, its science ~0.1 (removed already,
    no S_BKDSUB): auto must say so and leave the science alone; subtract does subtract."""
    from coron_cli.asn import read_asn
    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    asn = miri_copy(tmp_path)
    prod = read_asn(asn).products[0]
    assert len(prod.background) == 3 and len(prod.psf) == 9
    before = {p: sha256(p) for p in prod.science + prod.psf + prod.background}
    out_auto, out_sub = tmp_path / "auto", tmp_path / "sub"
    out_auto.mkdir()
    out_sub.mkdir()
    run_association(asn, str(out_auto), PipelineConfig.from_options(truncate=(9,)))
    run_association(asn, str(out_sub), PipelineConfig.from_options(truncate=(9,),
                                                                   background="subtract"))
    assert before == {p: sha256(p) for p in before}
    name = "jw01277019001_04101_00001_mirimage_c1001_psfsub.fits"
    with fits.open(out_auto / name) as a, fits.open(out_sub / name) as s:
        assert a[0].header["BKGSUB"] is False and s[0].header["BKGSUB"] is True
        assert a[0].header["BKGLEVEL"] > 10 and a[0].header["BKGSKY"] < 1
        assert any("already removed" in str(h) for h in a[0].header["HISTORY"])
        # KLIP takes out the mean, so what matters is the ERR: the sky's noise is added
        assert np.nanmedian(s["ERR"].data) > np.nanmedian(a["ERR"].data)
    with fits.open(out_auto / "jw01277-c1001_t001_miri_f1140c-mask1140_psfstack.fits") as st:
        assert st[0].header["BKGSUB"] is False


# --------------------------------------------------------------------------- outliers

def _aumic(name):
    return read_product(os.path.join(AUMIC, name), what="exposure")

def test_one_integration_companions_are_never_flagged_and_cosmic_rays_are():
    """Real NIRCam one-integration science (AU Mic crop, F356W): fake companions of 10 to
    10,000 sigma (the diffraction-limited PSF at the filter) are never flagged DO_NOT_USE or
    OUTLIER by the KLIP step; single-pixel cosmic rays of 100 sigma and more are."""
    from coron_cli.core.optics import airy_pixels

    sci = _aumic("jw01184001001_03107_00001_nrcalong_calints.fits.gz")
    names = [n for n in sorted(os.listdir(AUMIC)) if n.endswith("_calints.fits.gz")
             and not n.startswith(("jw01184001", "jw01184002"))]
    refs = [_aumic(n) for n in names]
    assert len(refs) == 6
    stack = steps.stack_step(refs)
    fwhm = 1.845                                       # 1.03 lambda/D at 3.56 um, 0.063"/px
    err = np.nanmedian(sci.err)
    cx, cy = 32.0, 32.0
    pos = [(cx + 14.3, cy + 3.6), (cx - 12.1, cy + 11.4), (cx + 2.5, cy - 15.2),
           (cx - 16.6, cy - 9.4)]
    amps = [10, 100, 1000, 10000]
    data = np.array(sci.sci, dtype=np.float64)
    y, x = np.indices(data.shape[-2:])
    for (px, py), a in zip(pos, amps):
        offs = np.stack([x - px, y - py], axis=-1).reshape(-1, 2)
        img = airy_pixels(fwhm, offs).reshape(data.shape[-2:])
        data[0] += a * err * img / img.max()
    rays = [(10, 50), (53, 12), (55, 55)]
    for rx, ry in rays:
        data[0, ry, rx] += 300 * err
    fake = Product(sci=data.astype(np.float32), err=sci.err, dq=sci.dq, primary=sci.primary,
                   sci_header=sci.sci_header, path="fake")
    aligned = steps.align_step(fake, stack)
    sub = steps.klip_step(fake, aligned, steps.KlipConfig(truncate=(6,)))
    flagged = (sub.dq[0] & (core.DO_NOT_USE | core.OUTLIER)) != 0
    new = flagged & ~((sci.dq[0] & 1) != 0) & np.isfinite(sci.sci[0])
    for px, py in pos:
        near = np.hypot(x - px, y - py) <= 2 * fwhm
        assert not new[near].any(), (px, py)
    for rx, ry in rays:
        assert new[ry, rx]
    # the brightest companion is there in the residual, not repaired away
    k = np.argmax(amps)
    px, py = (int(round(v)) for v in pos[k])
    assert sub.sci[0, py - 1:py + 2, px - 1:px + 2].max() > 0.3 * amps[k] * err

def test_outliers_found_on_a_source_keep_their_values(monkeypatch):
    """Should the outlier search flag a companion's pixel (integrations that disagree), the
    psfsub gives it back its own value and clears its flags; a cosmic ray on the companion
    (sharper than any point source) stays repaired."""
    science, align, c = _klip_inputs(shape=(48, 48), nint=1)
    data = science.sci.astype(np.float64)
    psf = 400.0 * gaussian_psf((48, 48), 34.0, 20.0, sigma=1.0, halo=0)
    data = data + psf[None]
    peak = np.zeros(data.shape, bool)
    peak[0, 20, 34] = True

    def run(values, flagged):
        comp = Product(sci=values.astype(np.float32), err=science.err, dq=science.dq,
                       sci_header=science.sci_header, path="comp")
        monkeypatch.setattr(steps.stack, "_find_outliers", lambda product, bad, err: flagged.copy())
        return steps.klip_step(comp, align, steps.KlipConfig(truncate=(3,)))

    none = np.zeros(data.shape, bool)
    sub, ref = run(data, peak), run(data, none)
    assert sub.sci_header["OUTLRSTR"] == 1
    assert sub.dq[0, 20, 34] == 0
    assert_allclose(sub.sci[0, 20, 34], ref.sci[0, 20, 34], rtol=0.02)
    ray = data.copy()
    ray[0, 21, 35] += 5e4                               # a cosmic ray on the companion's wing
    hit = np.zeros(data.shape, bool)
    hit[0, 21, 35] = True
    sub = run(ray, hit)
    assert sub.sci_header["OUTLRSTR"] == 0 and sub.dq[0, 21, 35] & core.OUTLIER
    assert sub.sci[0, 21, 35] < 0.5 * ray[0, 21, 35]


# --------------------------------------------------------------------------- align, zones

def test_psfmask_weights_the_registration_like_a_mask():
    """--psfmask-weights: the transmission map weighs the registration fit exactly as the
    same map given as --mask does (the JWST stage's use of its PSFMASK)."""
    sci = read_product(os.path.join(MIRI, "jw01277019001_04101_00001_mirimage_calints.fits.gz"))
    names = sorted(n for n in os.listdir(MIRI)
                   if n.startswith("jw01194015001") and n.endswith("_calints.fits.gz"))
    stack = steps.stack_step([read_product(os.path.join(MIRI, n)) for n in names])
    tmap = transmission_for("auto", sci.path, sci.sci.shape[-2:])
    assert tmap is not None and tmap.min() < 0.5            # the 4QPM's cross
    fourier = steps.AlignConfig(method="fourier")
    a = steps.align_step(sci, stack, fourier.replace(psfmask_weights=True), transmission=tmap)
    b = steps.align_step(sci, stack, fourier, mask=tmap)
    c = steps.align_step(sci, stack, fourier.replace(psfmask_weights=False), transmission=tmap)
    assert_allclose(a.tables["SHIFTS"]["dx"], b.tables["SHIFTS"]["dx"])
    assert not np.allclose(a.tables["SHIFTS"]["dx"], c.tables["SHIFTS"]["dx"])
    history = "".join(str(h) for h in a.primary["HISTORY"])
    assert "fit_weights=psfmask" in history


def test_zone_width_in_lambda_over_d_and_bad_values():
    sci = read_product(os.path.join(MIRI, "jw01277019001_04101_00001_mirimage_calints.fits.gz"))
    # F1140C at 0.11"/px: lambda/D = 3.28 px
    assert_allclose(steps.zone_width_pix(sci, "2lod"), (2 * 3.28, 0.0), rtol=0.01)
    assert_allclose(steps.zone_width_pix(sci, "1lod@4lod"), (3.28, 4 * 3.28), rtol=0.01)
    assert steps.zone_width_pix(sci, "5") == (5.0, 0.0)
    assert steps.zone_width_pix(sci, "none") is None
    # automatic inner radius: where an annulus holds 10 pixels per mode
    w, inner = steps.zone_width_pix(sci, "1lod@auto", nmodes=45)
    assert_allclose(inner, steps.ZONE_PIXELS_PER_MODE * 45 / (2 * np.pi * w))
    for bad in ("-2", "lod", "abc", "0lod", "2lod@-1", "2lod@x"):
        with pytest.raises(ValueError):
            steps.parse_zone_width(bad)
