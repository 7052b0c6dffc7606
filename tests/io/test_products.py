"""products.py: FITS writing (the sliced DQ path writes exactly what astropy writes), the
transmission map found and read beside an exposure, the roll angle from the headers."""

import io
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from numpy.testing import assert_allclose

from coron_cli import products
from coron_cli.products import (Product, psfmask_beside, read_product, read_psfmask,
                                transmission_for, write_product)
from tests.helpers import MIRI, write_exposure, write_map


def _product(rng, shape):
    sci = rng.standard_normal(shape).astype(np.float32)
    dq = rng.integers(0, 2 ** 32, shape, dtype=np.uint64).astype(np.uint32)
    dq.flat[:4] = [0, 1, 2 ** 31, 2 ** 32 - 1]           # both ends and the sign bit
    return Product(sci=sci, err=np.abs(sci), dq=dq, primary=fits.Header({"TARGNAME": "T"}),
                   sci_header=fits.Header({"STARCENX": 1.5}),
                   images={"KLSUB": (sci[:1], fits.Header({"KLMODES": "5"}))},
                   tables={"SHIFTS": Table({"ref": np.arange(3), "f": ["a", "b", "c"]})})


def test_sliced_dq_is_byte_for_byte_astropys(monkeypatch):
    prod = _product(np.random.default_rng(1), (3, 7, 30, 33))
    want = io.BytesIO()
    products._hdulist(prod).writeto(want)
    monkeypatch.setattr(products, "_DQ_STREAM_BYTES", 0)
    monkeypatch.setattr(products, "_DQ_SLICE", 1000)     # several slices, the last one short
    got = io.BytesIO()
    products._write_fits(prod, got)
    assert got.getvalue() == want.getvalue()


def test_sliced_dq_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(products, "_DQ_STREAM_BYTES", 0)
    prod = _product(np.random.default_rng(2), (2, 5, 16, 16))
    path = str(tmp_path / "x_psfalign.fits")
    write_product(prod, path)
    back = read_product(path, ndims=(4,))
    assert back.dq.dtype == np.uint32 and np.array_equal(back.dq, prod.dq)
    assert np.array_equal(back.sci, prod.sci)
    with fits.open(path) as h:
        assert [x.name for x in h] == ["PRIMARY", "SCI", "ERR", "DQ", "KLSUB", "SHIFTS", "ASDF"]


# --------------------------------------------------------------------------- transmission maps

def test_psfmask_found_beside_exposure_plain_and_gzipped(tmp_path):
    exp = write_exposure(tmp_path / "a_calints.fits", np.ones((1, 8, 8)))
    assert psfmask_beside(exp) is None
    m = write_map(tmp_path / "a_calints_psfmask.fits", np.ones((8, 8)))
    assert psfmask_beside(exp) == m
    os.remove(m)
    m2 = write_map(tmp_path / "a_psfmask.fits", np.ones((8, 8)))
    assert psfmask_beside(exp) == m2
    crop = os.path.join(MIRI, "jw01277019001_04101_00001_mirimage_calints.fits.gz")
    assert psfmask_beside(crop).endswith("_calints_psfmask.fits.gz")

def test_read_psfmask_takes_the_image_of_the_frame_size(tmp_path):
    # like the real MIRI maps: a larger full map in the primary, the cut one in SCI
    t = np.linspace(0, 1, 6 * 7).reshape(6, 7)
    path = write_map(tmp_path / "m.fits", t, extra_primary_image=np.ones((10, 12), np.float32))
    assert_allclose(read_psfmask(path, (6, 7)), t, rtol=1e-6)
    from coron_cli.errors import InputError

    with pytest.raises(InputError, match="no transmission map of 8x8"):
        read_psfmask(path, (8, 8))
    bad = write_map(tmp_path / "neg.fits", -t)
    with pytest.raises(InputError, match="negative"):
        read_psfmask(bad, (6, 7))
    assert transmission_for("none", str(tmp_path / "x.fits"), (6, 7)) is None


# --------------------------------------------------------------------------- headers

def test_roll_without_a_wcs_is_the_aperture_angle():
    """Without a celestial WCS the detector's angle on the sky is PA_APER (= ROLL_REF -
    VPARITY * V3I_YANG), ~4.8 deg from ROLL_REF for MIRI. On the real MIRI header it
    is 0.17 deg from the WCS route: the WCS's local angle at the star includes the
    imager's distortion, which the aperture angle does not, so the WCS stays first."""
    from coron_cli.products import roll_angle

    sci = read_product(os.path.join(MIRI, "jw01277019001_04101_00001_mirimage_calints.fits.gz"))
    from_wcs, src = roll_angle(sci.sci_header, sci.primary)
    assert src == "WCS"
    nowcs = sci.sci_header.copy()
    for key in [k for k in nowcs if k.startswith("CTYPE")]:
        del nowcs[key]                                   # no celestial WCS any more
    pa, src = roll_angle(nowcs, sci.primary)
    assert src == "PA_APER" and abs(pa - nowcs["PA_APER"]) < 1e-12
    assert abs((pa - from_wcs + 180) % 360 - 180) < 0.25
    del nowcs["PA_APER"]
    derived, src = roll_angle(nowcs, sci.primary)
    assert src.startswith("ROLL_REF -")
    assert abs(derived - (nowcs["ROLL_REF"] - nowcs["VPARITY"] * nowcs["V3I_YANG"])) < 1e-12
    assert abs((derived - from_wcs + 180) % 360 - 180) < 0.25
    assert abs(nowcs["ROLL_REF"] - from_wcs) > 4          # what the old fallback used


def test_read_image_reads_one_extension_in_native_order(tmp_path):
    """read_image: the values written, native byte order; a missing extension or a table
    is an InputError naming the file."""
    from coron_cli.errors import InputError

    rng = np.random.default_rng(10)
    err = rng.uniform(0, 1, (3, 6, 7)).astype(np.float32)
    err[0, 1, 2] = np.nan
    prod = Product(sci=np.ones((3, 6, 7), np.float32), err=err,
                   dq=np.zeros((3, 6, 7), np.uint32), tables={"T": Table({"a": [1, 2]})})
    path = str(tmp_path / "p_psfstack.fits")
    products.write_product(prod, path)
    got = products.read_image(path, "ERR")
    assert got.dtype == np.float32 and got.dtype.isnative
    assert got.tobytes() == err.tobytes()              # NaN included, bit for bit
    for bad in ("NOPE", "T"):
        with pytest.raises(InputError, match="p_psfstack"):
            products.read_image(path, bad)


def _hdus_written(path, sci, dq=None, err=None, compressed=False):
    hdus = [fits.PrimaryHDU()]
    make = fits.CompImageHDU if compressed else fits.ImageHDU
    hdus.append(make(sci, name="SCI"))
    if err is not None:
        hdus.append(fits.ImageHDU(err, name="ERR"))
    if dq is not None:
        hdus.append(fits.ImageHDU(dq, name="DQ"))
    fits.HDUList(hdus).writeto(path)


@pytest.mark.parametrize("case", ["float32", "float64", "int16", "uint16", "uint32", "int32",
                                  "bscale", "blank", "compressed", "gzip"])
def test_read_product_values_are_astropys_in_native_order(tmp_path, case):
    """read_product scales in place what it can (float, FITS-unsigned DQ) and leaves the
    rest to astropy: every case gives astropy's own values, native order, no NaN lost."""
    rng = np.random.default_rng(3)
    shape = (2, 5, 6)
    sci = rng.normal(0, 100, shape).astype(np.float32)
    sci[0, 1, 1] = np.nan
    dq = rng.integers(0, 2 ** 32, shape, dtype=np.uint64).astype(np.uint32)
    dq.flat[:3] = [0, 2 ** 31, 2 ** 32 - 1]
    err = np.abs(sci)
    path = str(tmp_path / "x_calints.fits")
    if case == "float64":
        sci = sci.astype(np.float64)
    if case in ("int16", "int32", "bscale", "blank"):
        sci = np.nan_to_num(sci).astype(np.int32 if case == "int32" else np.int16)
    if case == "uint16":                                # written as int16 with BZERO 32768
        sci = (np.nan_to_num(sci) + 400).clip(0).astype(np.uint16)
        dq = dq.astype(np.uint16)
    if case == "bscale":
        hdul = [fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI"), fits.ImageHDU(dq, name="DQ")]
        hdul[1].header["BSCALE"], hdul[1].header["BZERO"] = 0.5, 10.0
        fits.HDUList(hdul).writeto(path)
    elif case == "blank":
        hdul = [fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI"), fits.ImageHDU(dq, name="DQ")]
        hdul[1].header["BLANK"] = int(sci.flat[5])
        fits.HDUList(hdul).writeto(path)
    else:
        _hdus_written(path, sci, dq, err=err, compressed=case == "compressed")
    if case == "gzip":
        import gzip

        with open(path, "rb") as fh:
            data = gzip.compress(fh.read())
        path = path + ".gz"
        with open(path, "wb") as fh:
            fh.write(data)
    got = read_product(path)
    with fits.open(path) as h:
        want_sci = np.asarray(h["SCI"].data)
        want_dq = np.asarray(h["DQ"].data)
        want_err = np.asarray(h["ERR"].data) if "ERR" in h else None
    for arr in (got.sci, got.dq) + ((got.err,) if want_err is not None else ()):
        assert arr.dtype.isnative
    want_sci = want_sci.astype(np.float64 if want_sci.dtype.itemsize == 8 and
                               want_sci.dtype.kind == "f" else np.float32)
    assert got.sci.dtype == want_sci.dtype
    np.testing.assert_array_equal(got.sci, want_sci)          # NaN in the same places
    np.testing.assert_array_equal(got.dq, want_dq.astype(np.uint32))
    assert got.dq.dtype == np.uint32
    if want_err is not None:
        np.testing.assert_array_equal(got.err, want_err.astype(np.float32))
    if case == "blank":
        assert np.isnan(got.sci).any()                          # astropy's BLANK -> NaN
