"""FITS writing: the sliced DQ path writes exactly what astropy writes."""

import io

import numpy as np
from astropy.io import fits
from astropy.table import Table

from coron_cli import products
from coron_cli.products import Product, read_product, write_product


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
        assert [x.name for x in h] == ["PRIMARY", "SCI", "ERR", "DQ", "KLSUB", "SHIFTS"]
