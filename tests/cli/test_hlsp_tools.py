"""coron-hlsp and coron-klip --contrast, coron3 run --contrast/--plot, through the tools
(on the hl_run products of tests/conftest.py)."""

import os
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from numpy.testing import assert_allclose

from coron_cli.cli import coron3, hlsp
from tests.helpers import invoke


def test_klip_contrast_equals_run(hl_run, demo_data, tmp_path, runner):
    from coron_cli.cli import klip

    sub = [p["path"] for p in hl_run["summary"]["products"] if p["kind"] == "psfsub"][0]
    ali = [p["path"] for p in hl_run["summary"]["products"] if p["kind"] == "psfalign"][0]
    sci = os.path.join(demo_data["folder"], os.path.basename(sub).replace("_c1001_psfsub",
                                                                         "_calints"))
    out = tmp_path / "k_psfsub.fits"
    other = [os.path.join(demo_data["folder"], os.path.basename(p["path"]).replace(
        "_c1001_psfsub", "_calints")) for p in hl_run["summary"]["products"]
        if p["kind"] == "psfsub"][1]
    r = invoke(runner, klip, [sci, ali, "--contrast", "--psf-offaxis",
                              demo_data["paths"]["offaxis"], "--fwhm",
                              hl_run["truth"]["lambda_over_d_pix"], "-o", out,
                              "--roll-ref", other])
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
    # the same table as the FITS product; the star flux as given, the throughput divided out
    with fits.open(f"{root}_contrast.fits") as h:
        assert h[0].header["STARFLUX"] == 1e6
        fits_table = Table.read(h["CRN_CONTRAST"])
    assert fits_table.colnames == con.colnames and len(fits_table) == len(con)
    for col in con.colnames:
        assert_allclose(np.asarray(con[col], float), np.asarray(fits_table[col], float),
                        rtol=1e-12, equal_nan=True)
    from coron_cli.core import student_t_factor

    assert_allclose(con["contrast_5sigma"],
                    student_t_factor(2 * np.pi * con["radius"] / lod) * con["sigma"] / 1e6)
    ok = np.isfinite(con["throughput"])
    assert ok.sum() >= 5
    assert_allclose(con["contrast_5sigma_calibrated"][ok],
                    con["contrast_5sigma"][ok] / con["throughput"][ok])
    det = Table.read(f"{root}_detections.ecsv", format="ascii.ecsv")
    assert len(det) >= 1 and (det["snr"] >= 5).all()
    # each candidate's separation is its distance from the star; the SNR is the mawet map's
    with fits.open(i2d) as h:
        cx, cy = h["SCI"].header["STARCENX"], h["SCI"].header["STARCENY"]
    with fits.open(f"{root}_snr.fits") as h:
        snr = h["SCI"].data
    assert_allclose(det["sep"], np.hypot(det["x"] - cx, det["y"] - cy), atol=1e-6)
    for row in det:
        near = snr[int(round(row["y"])) - 1:int(round(row["y"])) + 2,
                   int(round(row["x"])) - 1:int(round(row["x"])) + 2]
        assert np.nanmax(near) >= row["snr"] - 1e-3

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
