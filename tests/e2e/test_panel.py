"""The measuring tools: make panel and make realcheck (coron_cli.panel, coron_cli.realcheck)."""

import hashlib
import json
import os

import numpy as np
import pytest
from astropy.io import fits
from numpy.testing import assert_allclose
from scipy.special import j0, j1

from coron_cli import _harness as H
from coron_cli import panel, realcheck


# ---------------------------------------------------------------------------
# injection: right flux at the right detector position
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("roll, pa, expect", [
    (30.0, 120.0, (-1.0, 0.0)),     # pa - roll = 90: east of the +y axis is -x
    (30.0, 30.0, (0.0, 1.0)),       # along the detector +y axis
    (0.0, 180.0, (0.0, -1.0)),
    (250.0, 340.0, (-1.0, 0.0)),
])
def test_sky_offsets_follow_the_roll(roll, pa, expect):
    assert_allclose(H.sky_offsets(12.5, pa, roll), 12.5 * np.array(expect), atol=1e-12)
    dx, dy = H.sky_offsets(12.5, pa, roll)
    assert H.position_angle(dx, dy, roll) == pytest.approx(pa % 360.0)


def _geometry(center=(30.3, 28.6), roll=30.0, shape=(64, 64), tmap=None):
    """What :func:`coron_cli._harness.exposure_geometry` returns, made up."""
    return {"path": "x", "shape": shape, "center": center, "roll": roll,
            "transmission": tmap, "nint": 1, "scale": 0.063, "filter": "F356W"}


@pytest.mark.parametrize("frac", [(0.0, 0.0), (0.3, -0.2)])
def test_injection_puts_the_flux_at_the_detector_position(frac):
    lod, sep, pa, roll, amp = 1.8, 12.0, 120.0, 30.0, 7.0
    cx, cy = 50.0 + frac[0], 48.0 + frac[1]
    yy, xx = np.indices((96, 96), dtype=np.float64)
    ramp = 0.2 + 0.005 * xx + 0.0025 * yy          # bilinear: interpolated exactly
    img, pos, t = H.inject_fakes(_geometry((cx, cy), roll, (96, 96), tmap=ramp), [sep], [pa],
                                 [amp], lod)
    x, y = cx - sep, cy                              # pa - roll = 90 deg: straight to -x
    assert_allclose(pos[0], (x, y), atol=1e-12)
    assert t[0] == pytest.approx(0.2 + 0.005 * x + 0.0025 * y)
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    assert (ix, iy) == (int(np.rint(x)), int(np.rint(y)))
    if frac == (0.0, 0.0):
        # a pixel-centred source puts amplitude x transmission in its pixel
        assert img[iy, ix] == pytest.approx(amp * t[0], rel=1e-12)
    win = (np.abs(xx - x) <= 6) & (np.abs(yy - y) <= 6)
    cxm = (img * xx)[win].sum() / img[win].sum()
    cym = (img * yy)[win].sum() / img[win].sum()
    assert_allclose((cxm, cym), (x, y), atol=0.02)
    # the total is the amplitude times the transmission times the unit pattern's flux
    unit = H.airy_image((96, 96), [(48.0 + frac[0], 48.0 + frac[1])], [1.0], lod)
    assert img.sum() == pytest.approx(amp * t[0] * unit.sum(), rel=1e-3)


def test_airy_model_holds_the_analytic_flux():
    # (2 J1(x)/x)**2 integrates to 4 (lambda/D)**2 / pi; the fraction inside r is
    # 1 - J0**2 - J1**2 (Airy's encircled energy); the stamp is a square of half-size h
    lod, half_lod = 2.5, 8.0
    img = H.airy_image((101, 101), [(50.0, 50.0)], [1.0], lod, oversample=9,
                       radius_lod=half_lod)
    peak = img[50, 50]
    assert peak == pytest.approx(1.0)
    # undo the normalisation: the centre pixel's mean of the continuous pattern
    sub = (np.arange(9) + 0.5) / 9 - 0.5
    r = np.hypot(sub[None, :], sub[:, None])
    x = np.pi * r / lod
    cont_peak = np.mean(np.where(x > 0, (2 * j1(x) / np.where(x > 0, x, 1)) ** 2, 1.0))
    total = img.sum() * cont_peak
    h = int(np.ceil(half_lod * lod)) + 1

    def ee(radius):
        v = np.pi * radius / lod
        return 1 - j0(v) ** 2 - j1(v) ** 2

    flux = 4 * lod ** 2 / np.pi
    assert flux * ee(h + 0.5) * 0.999 <= total <= flux * ee((h + 0.5) * np.sqrt(2)) * 1.001


def test_injected_fakes_are_added_not_replacing():
    base = _geometry()
    img, _, _ = H.inject_fakes(base, [10.0, 20.0], [0.0, 180.0], [1.0, 2.0], 1.8)
    one, _, _ = H.inject_fakes(base, [10.0], [0.0], [1.0], 1.8)
    two, _, _ = H.inject_fakes(base, [20.0], [180.0], [2.0], 1.8)
    assert_allclose(img, one + two, atol=1e-12)


def test_filter_wavelength():
    assert H.filter_wavelength_um("F356W") == pytest.approx(3.56)
    assert H.filter_wavelength_um("F1140C") == pytest.approx(11.4)
    assert H.filter_wavelength_um("f444w") == pytest.approx(4.44)
    with pytest.raises(ValueError):
        H.filter_wavelength_um("CLEAR")
    # lambda/D of a 6.5 m telescope at 3.56 um on 0.063" pixels
    assert H.lambda_over_d_pix(3.56, 0.063) == pytest.approx(1.7932, rel=1e-3)


# ---------------------------------------------------------------------------
# measurement: a known SNR
# ---------------------------------------------------------------------------
def test_companion_snr_recovers_a_known_t_value():
    # a linear gradient makes every aperture sum, and its linear interpolation, exact:
    # sum = N g (x - cx) for a disk of N pixels; a point source adds F to its own aperture
    fwhm, g, F = 4.0, 0.3, 50.0
    c = (80.0, 80.0)
    xx = np.indices((161, 161), dtype=np.float64)[1]
    img = g * (xx - c[0])
    off = np.array([[0.0, 40.0], [40.0 * np.sin(np.radians(200)), 40.0 * np.cos(np.radians(200))]])
    img[int(c[1] + off[0, 1]), int(c[0] + off[0, 0])] += F
    n_pix = int((np.hypot(*np.mgrid[-3:4, -3:4]) <= fwhm / 2).sum())       # 13
    r, n = 40.0, int(np.floor(2 * np.pi * 40.0 / fwhm))
    ang = np.arctan2(off[0, 1], off[0, 0]) + 2 * np.pi * np.arange(n) / n
    xs, ys = c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)
    sums = n_pix * g * (xs - c[0])
    other = c + off[1]
    keep = np.hypot(xs[1:] - other[0], ys[1:] - other[1]) > 1.5 * fwhm
    ref = sums[1:][keep]
    expect = (sums[0] + F - ref.mean()) / (ref.std(ddof=1) * np.sqrt(1 + 1 / ref.size))
    got = H.companion_snr(img, c, off, fwhm)
    assert got[0] == pytest.approx(expect, rel=1e-6)
    # a disk's wedge given as `avoid` takes those reference apertures out
    wedge = H.wedge_points(r, [90.0], 20.0, fwhm / 2)
    pw = c + wedge
    keep2 = keep & (np.hypot(xs[1:, None] - pw[None, :, 0], ys[1:, None] - pw[None, :, 1])
                    > 1.5 * fwhm).all(axis=1)
    ref2 = sums[1:][keep2]
    expect2 = (sums[0] + F - ref2.mean()) / (ref2.std(ddof=1) * np.sqrt(1 + 1 / ref2.size))
    got2 = H.companion_snr(img, c, off, fwhm, avoid=[wedge, []])
    assert keep2.sum() < keep.sum()
    assert got2[0] == pytest.approx(expect2, rel=1e-6)


def test_masks_and_noise():
    c = (20.0, 20.0)
    m = H.sector_mask((41, 41), c, [90.0], 10.0)     # east: to the left in a north-up image
    assert m[20, 5] and not m[20, 35] and not m[35, 20]
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 2.0, (201, 201))
    noise = H.local_noise(img, (100.0, 100.0), [30.0, 60.0], half_width=3.0)
    assert_allclose(noise, 2.0, rtol=0.1)


# ---------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, label, opts", [
    ("weights=none", "weights=none", {"weights": "none"}),
    ("zones=3,zone_sectors=4", "zones=3,zone_sectors=4", {"zones": 3, "zone_sectors": 4}),
    ("k10:truncate=(10,)", "k10", {"truncate": (10,)}),
    ("truncate=5;10;30, protect=2.5", "truncate=5;10;30, protect=2.5",
     {"truncate": (5, 10, 30), "protect": 2.5}),
    ("truncate=[5,10],align-method=dither", "truncate=[5,10],align-method=dither",
     {"truncate": (5, 10), "align_method": "dither"}),
    ("detect=None,plot=false", "detect=None,plot=false", {"detect": None, "plot": False}),
])
def test_parse_variant(text, label, opts):
    assert panel.parse_variant(text) == (label, opts)


@pytest.mark.parametrize("text", ["annuli", "nosuchoption=3", "=3", ""])
def test_parse_variant_rejects(text):
    with pytest.raises(ValueError):
        panel.parse_variant(text)


def test_parse_value_types():
    assert panel.parse_value("3") == 3 and isinstance(panel.parse_value("3"), int)
    assert panel.parse_value("3.5") == 3.5
    assert panel.parse_value("'3'") == "3"
    assert panel.parse_value("()") == ()
    assert panel.parse_value("((1,2),3)") == ((1, 2), 3)


def test_plain_is_one_dict_with_all_modes(demo_data):
    opts = panel.plain_options(demo_data["paths"]["asn"])
    assert {k: v for k, v in opts.items() if k != "truncate"} == \
        {k: v for k, v in panel.PLAIN.items() if k != "truncate"}
    assert opts["truncate"] == (9 * demo_data["truth"]["nints"],)
    assert panel.PLAIN["truncate"] is None             # the dict itself is not changed


def test_dataset_specs_fall_back_and_find_real_sets(tmp_path):
    specs = panel.dataset_specs(real=False, size="small")
    names = panel.sim_setups()
    if names == [None]:
        assert [s["seed"] for s in specs] == list(range(12))
    else:
        assert len(specs) == panel._SEEDS * len(names)
    (tmp_path / "set1").mkdir()
    (tmp_path / "set1" / "x_asn.json").write_text("{}")
    (tmp_path / "notaset").mkdir()
    specs = panel.dataset_specs(sim=False, data_dir=str(tmp_path), rotations=3)
    assert [s["name"] for s in specs] == ["set1"] * 3
    assert [s["base_pa"] for s in specs] == [20.0, 140.0, 260.0]
    assert [s["known"] for s in specs] == [True, False, False]
    assert len({s["label"] for s in specs}) == 3 and len({s["group"] for s in specs}) == 1
    assert panel.dataset_specs(sim=False, data_dir=str(tmp_path / "absent")) == []


# ---------------------------------------------------------------------------
# the real-data path, on a tiny real-like folder
# ---------------------------------------------------------------------------
def _star(shape, cx, cy, flux):
    yy, xx = np.indices(shape, dtype=np.float64)
    r = np.hypot(xx - cx, yy - cy)
    return flux * (np.exp(-r ** 2 / 8.0) + 0.05 * np.exp(-r / 6.0) * (1 + 0.3 * np.cos(r)))


def _write_real_like(folder, rng, *, n=64, filt="F356W", scale=0.063, sky=0.0):
    """Two science rolls, three references and two backgrounds (one per program), with
    WCS, FILTER, PROGRAM, transmission maps beside them and a CORON association."""
    folder.mkdir(parents=True, exist_ok=True)
    members = []
    cx, cy = 31.4, 32.3
    yy, xx = np.indices((n, n), dtype=np.float64)
    tmap = 1.0 - np.exp(-np.hypot(xx - cx, yy - cy) ** 2 / (2 * 4.0 ** 2))
    for k, (kind, prog, roll, dx, dy, f) in enumerate([
            ("science", "01", 40.0, 0.0, 0.0, 1000.0), ("science", "01", 50.0, 0.05, -0.03, 1000.0),
            ("psf", "02", 10.0, 0.1, 0.05, 2000.0), ("psf", "02", 20.0, -0.08, 0.02, 1900.0),
            ("psf", "02", 30.0, 0.02, -0.1, 2100.0), ("background", "01", 40.0, 0, 0, 0.0),
            ("background", "02", 10.0, 0, 0, 0.0)]):
        name = f"jw0000{k + 1}_calints.fits"
        s = np.radians(roll)
        sci_h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg",
                             "CUNIT2": "deg", "CRPIX1": cx + 1, "CRPIX2": cy + 1,
                             "CRVAL1": 150.0, "CRVAL2": -30.0,
                             "CD1_1": -scale / 3600 * np.cos(s), "CD1_2": scale / 3600 * np.sin(s),
                             "CD2_1": scale / 3600 * np.sin(s), "CD2_2": scale / 3600 * np.cos(s),
                             "BUNIT": "MJy/sr"})
        prim = fits.Header({"TARGNAME": "T", "INSTRUME": "NIRCAM", "FILTER": filt, "NINTS": 1,
                            "PROGRAM": prog, "BKGDTARG": kind == "background"})
        data = (_star((n, n), cx + dx, cy + dy, f) * (1 - 0.9 * np.exp(
            -np.hypot(xx - cx, yy - cy) ** 2 / 8.0)) + sky + rng.normal(0, 1.0, (n, n)))[None]
        dq = np.zeros(data.shape, np.uint32)
        dq[0, 5, 7] = 1
        fits.HDUList([fits.PrimaryHDU(header=prim),
                      fits.ImageHDU(data.astype(np.float32), header=sci_h, name="SCI"),
                      fits.ImageHDU(np.ones(data.shape, np.float32), name="ERR"),
                      fits.ImageHDU(dq, name="DQ")]).writeto(folder / name)
        fits.HDUList([fits.PrimaryHDU(),
                      fits.ImageHDU(np.ones((2, 2)), name="SCI"),     # wrong shape: skipped
                      fits.ImageHDU(tmap, name="SCI")]).writeto(
            folder / name.replace(".fits", "_psfmask.fits"))
        members.append({"expname": name, "exptype": kind})
    asn = {"asn_id": "c1001", "asn_type": "coron3",
           "products": [{"name": "tiny_real", "members": members}]}
    (folder / "tiny_coron3_asn.json").write_text(json.dumps(asn))
    return folder / "tiny_coron3_asn.json"


def _hashes(folder):
    return {p: hashlib.sha256((folder / p).read_bytes()).hexdigest()
            for p in sorted(os.listdir(folder))}


def test_real_path_injects_copies_and_measures(tmp_path):
    src = tmp_path / "data" / "tiny-real"
    asn = _write_real_like(src, np.random.default_rng(1))
    before = _hashes(src)
    with H.quiet():
        prep = H.prepare_real_set("tiny-real", str(asn), str(tmp_path / "work"),
                                  panel.plain_options(str(asn)))
    assert _hashes(src) == before                       # originals untouched
    fakes = [c for c in prep["companions"] if c["kind"] == "fake"]
    assert len(fakes) >= 4
    assert prep["lod"] == pytest.approx(1.7932, rel=1e-3)
    off = np.array([f["offset"] for f in fakes])
    d = np.hypot(*(off[:, None] - off[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(fakes), 1)].min() >= 4 * prep["lod"] - 1e-9
    # the copy: science with the fakes added, the rest linked, maps beside, same ASN members
    work = tmp_path / "work" / "data"
    new = json.loads(open(prep["asn"]).read())
    assert [m["exptype"] for m in new["products"][0]["members"]] == \
        ["science", "science", "psf", "psf", "psf", "background", "background"]
    for k, path in enumerate(prep["exposures"]):
        name = os.path.basename(path)
        added = fits.getdata(work / name, "SCI").astype(np.float64) - \
            fits.getdata(src / name, "SCI").astype(np.float64)
        geom = H.exposure_geometry(str(src / name))
        expect, pos, t = H.inject_fakes(geom, [f["sep_pix"] for f in fakes],
                                        [f["pa"] for f in fakes],
                                        [f["amplitude"] for f in fakes], prep["lod"])
        assert_allclose(added[0], expect, atol=1e-3 * np.abs(expect).max())
        assert_allclose(pos, [f["detector"][k] for f in fakes], atol=1e-9)
        assert_allclose(t, [f["transmission"][k] for f in fakes])
        assert os.path.exists(work / name.replace(".fits", "_psfmask.fits"))
        # the copy's transmission map is the original's (the one of the frame's size)
        mask = name.replace(".fits", "_psfmask.fits")
        with fits.open(work / mask) as a, fits.open(src / mask) as b:
            assert [h.name for h in a] == [h.name for h in b]
            for ha, hb in zip(a, b):
                assert np.array_equal(ha.data, hb.data), (mask, ha.name)
    assert os.path.islink(work / "jw00003_calints.fits")
    # the panel's worker measures every method there
    spec = {"kind": "real", "name": "tiny-real", "asn": str(asn), "label": "real tiny"}
    res = panel.run_dataset(spec, [("w0", {"weights": "none"})], str(tmp_path / "panel"))
    assert not res["errors"], res["errors"]
    assert res["folder"] is None and not os.listdir(tmp_path / "panel")
    assert {"coron", "plain", "crdi", "w0"} <= set(res["companions"][0]["snr"])
    bright = [c for c in res["companions"] if c["sep_lod"] > 5]
    assert bright and all(np.isfinite(c["snr"]["plain"]) for c in bright)
    assert np.median([c["snr"]["plain"] for c in bright]) > 2


def test_classical_rdi_takes_the_science_as_the_run_did(tmp_path):
    # a sky the run subtracts with the background exposures: classical RDI must not keep it
    asn = _write_real_like(tmp_path / "d", np.random.default_rng(4), sky=20.0)
    with H.quiet():
        run = H.run_pipeline(str(asn), str(tmp_path / "coron"), {})
        crdi = H.classical_rdi_i2d(str(asn), run["outdir"])
    ali = fits.getheader(H.find_product(run["outdir"], "_psfalign.fits"), 0)
    if not ali.get("BKGSUB"):
        pytest.skip("this pipeline does not subtract background exposures")
    img = np.asarray(crdi.sci, dtype=np.float64)
    r = np.hypot(*(np.indices(img.shape)[::-1] - 31.5))
    assert abs(np.nanmedian(img[(r > 15) & (r < 28)])) < 1.0


def test_realcheck_runs_on_real_like_sets(tmp_path, capsys):
    rng = np.random.default_rng(2)
    _write_real_like(tmp_path / "aumic-f356w", rng)
    _write_real_like(tmp_path / "hd106906-miri", rng, n=48, filt="F1140C", scale=0.11)
    assert realcheck.main(["--data", str(tmp_path), "--rotations", "2",
                           "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    for text in ("AU Mic", "disk spine", "median SNR ratio", "HD 106906",
                 "background", "block median scatter",
                 "acceptance checks"):
        assert text in out
    data = json.loads((tmp_path / "r.json").read_text())
    fakes = data["aumic"]["fakes"]
    assert fakes and {f["base_pa"] for f in fakes} == {20.0, 200.0}
    assert data["hd106906"]["coron"]["b"] is None


def test_absent_data_gives_a_message(tmp_path, capsys):
    assert realcheck.main(["--data", str(tmp_path / "nothing")]) == 0
    assert "no real data" in capsys.readouterr().err
    assert panel.main(["--no-sim", "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no real data" in err and "no data sets" in err


def test_bad_variant_is_a_usage_error(capsys):
    assert panel.main(["--no-real", "--variant", "nosuch=1"]) == 2
    assert "no option 'nosuch'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the panel, end to end on one small simulated set
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_panel_quick_smoke(tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    setup = panel.sim_setups()[0]
    argv = ["--quick", "--no-real", "--seeds", "0", "--jobs", "1",
            "--setups", setup or "default", "--variant", "w0:weights=none",
            "--json", str(tmp_path / "p.json")]
    assert panel.main(argv) == 0
    cap = capsys.readouterr()
    assert "== summary" in cap.out and "registration vs truth" in cap.out
    assert "[panel" in cap.err and "[panel" not in cap.out
    data = json.loads((tmp_path / "p.json").read_text())
    (ds,) = data["datasets"]
    assert not ds["errors"], ds["errors"]
    assert len(ds["companions"]) >= 3
    for c in ds["companions"]:
        assert set(c["snr"]) == {"coron", "plain", "crdi", "w0"}
    for m in ("coron", "plain", "w0"):
        reg = ds["registration"][m]
        assert 0 <= reg["rms_px"] < 0.5 and reg["max_err_px"] >= reg["rms_px"] / 2
        assert reg["max_shift_px"] > 0
    assert data["summary"]["vs_plain"]["coron"]["n_ratio"] >= 1
    assert os.listdir(tmp_path / "tmp") == []          # products removed
