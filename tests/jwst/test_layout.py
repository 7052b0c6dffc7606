"""The JWST layout of coron's products, checked with astropy alone (no JWST packages).

DATAMODL by product, FILENAME, the cal-step keywords, ERR's BUNIT, S_REGION, the
CONTRAST table of the ContrastModel schema beside coron's full CRN_CONTRAST, and
the ASDF extension stpipe reads (coron_cli/jwst.py).
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from coron_cli.jwst import carry_exposure_extensions
from coron_cli.products import (Product, product_bytes, read_contrast_table, read_product,
                                write_product)
from tests.helpers import ROOT, invoke

CHAIN = {"S_PSFSTK", "S_PSFALI", "S_KLIP"}
#: kind -> (DATAMODL, the cal steps marked COMPLETE)
EXPECTED = {
    "psfstack": ("CubeModel", {"S_PSFSTK"}),
    "psfalign": ("CubeModel", {"S_PSFSTK", "S_PSFALI"}),
    "psfsub": ("CubeModel", CHAIN),
    "i2d": ("ImageModel", CHAIN | {"S_RESAMP"}),
    "snr": ("ImageModel", CHAIN | {"S_RESAMP"}),
    "contrast": ("ContrastModel", CHAIN | {"S_RESAMP"}),
    "detections": (None, CHAIN | {"S_RESAMP"}),
}
STEP_KEYS = ("S_PSFSTK", "S_PSFALI", "S_KLIP", "S_RESAMP")


@pytest.mark.parametrize("name", ["aumic", "miri"])
def test_datamodel_filename_and_cal_steps(crop_products, name):
    paths = crop_products[name]["paths"]
    for kind, (model, steps) in EXPECTED.items():
        for path in paths[kind]:
            with fits.open(path) as h:
                where = os.path.basename(path)
                primary = h[0].header
                assert primary.get("DATAMODL") == model, where
                assert primary["FILENAME"] == os.path.basename(path), where
                done = {k for k in STEP_KEYS if primary.get(k) == "COMPLETE"}
                assert done == steps, where
                assert primary["INSTRUME"] in ("NIRCAM", "MIRI") and primary["TARGNAME"]
                names = [x.name for x in h]
                assert names[-1] == "ASDF" and names.count("ASDF") == 1, where
                doc = bytes(h["ASDF"].data["ASDF_METADATA"][0])
                assert doc.startswith(b"#ASDF 1.0.0\n") and b"\n...\n" in doc, where
                if "ERR" in h:
                    assert h["ERR"].header["BUNIT"] == h["SCI"].header["BUNIT"] == "MJy/sr"


@pytest.mark.parametrize("name", ["aumic", "miri"])
def test_s_region_is_the_products_own_frame(crop_products, name):
    paths = crop_products[name]["paths"]
    for kind in ("psfstack", "psfalign", "psfsub", "i2d", "snr"):
        with fits.open(paths[kind][0]) as h:
            header = h["SCI"].header
            words = header["S_REGION"].split()
            assert words[:2] == ["POLYGON", "ICRS"]
            corners = np.array(words[2:], float).reshape(4, 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # astropy's notes on the OBSGEO cards
                w = WCS(header, naxis=2)
            ny, nx = h["SCI"].data.shape[-2:]
            want = w.all_pix2world([[-0.5, -0.5], [nx - 0.5, -0.5], [nx - 0.5, ny - 0.5],
                                    [-0.5, ny - 0.5]], 0)
            np.testing.assert_allclose(corners, want, atol=1e-8)


def test_contrast_extension_follows_contrast_model(crop_products):
    path = crop_products["aumic"]["paths"]["contrast"][0]
    with fits.open(path) as h:
        short = h["CONTRAST"]
        assert short.columns.names == ["radius", "sigma"]
        assert [c.format for c in short.columns] == ["E", "E"]
        radius, sigma = np.array(short.data["radius"]), np.array(short.data["sigma"])
        full = Table.read(h["CRN_CONTRAST"])
    assert {"radius", "radius_arcsec", "npix", "sigma", "contrast_5sigma"} <= set(full.colnames)
    np.testing.assert_array_equal(radius, np.float32(full["radius"]))
    np.testing.assert_array_equal(sigma, np.float32(full["sigma"]))
    table = read_contrast_table(path)
    assert table.colnames == full.colnames and "contrast_5sigma" in table.colnames


def test_contrast_table_of_an_older_product(tmp_path):
    """Before the split, CONTRAST held every column: read_contrast_table reads it then."""
    t = Table({"radius": [1.0, 3.0], "sigma": [2.0, 1.0], "contrast_5sigma": [1e-3, 1e-4]})
    hdu = fits.table_to_hdu(t)
    hdu.name = "CONTRAST"
    path = str(tmp_path / "old_contrast.fits")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    assert read_contrast_table(path).colnames == ["radius", "sigma", "contrast_5sigma"]
    from coron_cli.errors import InputError

    fits.HDUList([fits.PrimaryHDU()]).writeto(str(tmp_path / "none.fits"))
    with pytest.raises(InputError, match="no CONTRAST table"):
        read_contrast_table(str(tmp_path / "none.fits"))


def test_stdout_product_names_no_file_and_replaces_an_inputs_asdf(crop_products):
    sub = read_product(crop_products["aumic"]["paths"]["psfsub"][0])
    # as a JWST calints would carry one: the input's ASDF extension is never copied
    sub.tables["ASDF"] = Table({"ASDF_METADATA": [np.zeros(8, np.uint8)]})
    with fits.open(__import__("io").BytesIO(product_bytes(sub))) as h:
        assert "FILENAME" not in h[0].header
        assert h[0].header["DATAMODL"] == "CubeModel"
        assert [x.name for x in h].count("ASDF") == 1
        assert bytes(h["ASDF"].data["ASDF_METADATA"][0]).startswith(b"#ASDF")


def test_cal_steps_the_same_through_files(crop_products, tmp_path, runner):
    """coron-hlsp of the i2d file says what coron3 run's snr (made in memory) says."""
    from coron_cli.cli import hlsp

    paths = crop_products["aumic"]["paths"]
    out = str(tmp_path / "again_snr.fits")
    r = invoke(runner, hlsp, [paths["i2d"][0], "-o", out, "--contrast-output",
                              str(tmp_path / "again_contrast.fits"), "--star-flux", "1000"])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as a, fits.open(paths["snr"][0]) as b:
        for key in STEP_KEYS + ("DATAMODL",):
            assert a[0].header.get(key) == b[0].header.get(key), key
        assert a[0].header["FILENAME"] == "again_snr.fits"


def test_written_exposure_is_a_cube_model(crop_products, tmp_path):
    """An exposure read and written by coron (e.g. with a background removed) is a CubeModel
    named after its file, and no cal step is claimed for it."""
    exp = read_product(crop_products["aumic"]["science"])
    path = str(tmp_path / "copy_calints.fits")
    write_product(exp, path)
    with fits.open(path) as h:
        assert h[0].header["DATAMODL"] == "CubeModel"
        assert h[0].header["FILENAME"] == "copy_calints.fits"
        assert not any(k in h[0].header for k in STEP_KEYS)


def test_carry_exposure_extensions():
    rng = np.random.default_rng(0)
    shape = (2, 8, 9)
    exposure = Product(sci=rng.random(shape), images={
        "VAR_POISSON": (rng.random(shape), fits.Header()),
        "VAR_RNOISE": (rng.random(shape), fits.Header()),
        "VAR_FLAT": (np.zeros(()), fits.Header()),            # empty, as in co-added data
        "AREA": (np.ones(shape[1:]), fits.Header()),
        "IMSHIFTS": (np.zeros((2, 1)), fits.Header())},
        tables={"INT_TIMES": Table({"integration_number": [1, 2]})})
    psfsub = Product(sci=rng.random(shape), images={"TRANSMIS": (np.ones(shape[1:]), None)})
    out = carry_exposure_extensions(psfsub, exposure)
    assert sorted(out.images) == ["AREA", "TRANSMIS", "VAR_POISSON", "VAR_RNOISE"]
    assert out.images["VAR_RNOISE"][0].dtype == np.float32
    assert list(out.tables) == ["INT_TIMES"]
    assert sorted(psfsub.images) == ["TRANSMIS"] and psfsub.tables == {}  # a copy


def test_importing_coron_imports_no_jwst_package():
    code = ("import coron_cli.products, coron_cli.jwst, coron_cli.pipeline, "
            "coron_cli.cli.coron3, sys, json\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'jwst', 'stdatamodels', 'stpipe', 'gwcs', 'asdf', 'crds'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_same_bytes_from_any_process(crop_products, tmp_path):
    """Written twice, in processes of different string hashing: the same bytes (the ASDF
    extension too, whose extension list asdf makes in the order of a set)."""
    src = crop_products["miri"]["paths"]["i2d"][0]
    digests = []
    for seed in ("1", "2"):
        (tmp_path / seed).mkdir()
        out = str(tmp_path / seed / "x_i2d.fits")
        code = ("import sys; from coron_cli.products import read_product, write_product; "
                "write_product(read_product(sys.argv[1], ndims=(2,)), sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, src, out], cwd=ROOT, check=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed))
        with open(out, "rb") as fh:
            digests.append(fh.read())
    assert digests[0] == digests[1]
