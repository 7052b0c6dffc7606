"""Property tests: the readers turn any garbage into InputError and never into anything else.

- :func:`coron_cli.asn.parse_asn` on arbitrary JSON-like values and on mutations of a
  valid association;
- :func:`coron_cli.products.read_product` on random bytes, on valid FITS files that are
  truncated, garbled or gzipped, and on small HDU lists with random dtypes and shapes;
- :func:`coron_cli.asn.read_asn` on random bytes and on damaged JSON text.

Example counts are bounded so that the whole file runs in a few seconds.
"""

import copy
import gzip
import io
import itertools
import json
import os
import sys
import warnings
from unittest import mock

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coron_cli.asn import Association, parse_asn, read_asn
from coron_cli.errors import InputError
from coron_cli.products import Product, read_product

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for generated files (module scope: hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("fuzz")


def _new_file(folder, data, suffix=".fits"):
    path = os.path.join(str(folder), f"f{next(_counter)}{suffix}")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


# ---------------------------------------------------------------------------------------------
# (a) parse_asn

TRICKY = ["", " ", ".", "..", "../x_calints.fits", "/abs/x_calints.fits", "a/b", "a\\b",
          "x\x00y", "science", "SCIENCE", " psf ", "psf", "background", "targ1_calints.fits",
          "psf3_calints.fits", "\ud800", "é", "c1001", "none"]
KEYS = ["asn_id", "asn_type", "products", "name", "members", "exptype", "expname"]

texts = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children,
                        max_size=5)),
    max_leaves=25)

VALID = {"asn_id": "c1001", "asn_type": "coron",
         "products": [{"name": "tiny_nircam", "members": [
             {"exptype": "science", "expname": "targ1_calints.fits"},
             {"exptype": "science", "expname": "targ2_calints.fits"},
             {"exptype": "psf", "expname": "psf3_calints.fits"},
             {"exptype": "psf", "expname": "psf4_calints.fits"}]}]}


def _containers(value, path=()):
    """(path, container) for every dict and list inside `value`."""
    if isinstance(value, (dict, list)):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            yield from _containers(child, path + (key,))


@st.composite
def mutated_asn(draw):
    """The valid association with a few random replacements, deletions and insertions."""
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        spots = list(_containers(data))
        _, box = draw(st.sampled_from(spots))
        action = draw(st.sampled_from(["replace", "delete", "insert", "duplicate"]))
        keys = list(box.keys()) if isinstance(box, dict) else list(range(len(box)))
        if action == "replace" and keys:
            box[draw(st.sampled_from(keys))] = draw(json_like)
        elif action == "delete" and keys:
            del box[draw(st.sampled_from(keys))]
        elif action == "duplicate" and isinstance(box, list) and box:
            box.append(copy.deepcopy(box[draw(st.integers(0, len(box) - 1))]))
        elif isinstance(box, dict):
            box[draw(st.sampled_from(KEYS))] = draw(json_like)
        else:
            box.insert(draw(st.integers(0, len(box))), draw(json_like))
    if draw(st.booleans()):
        data = draw(st.sampled_from([data, [data], {"products": data}]))
    return data


def _parse_ok(data, path, check_files):
    try:
        out = parse_asn(data, path=path, check_files=check_files)
    except InputError as exc:
        assert "\n" not in exc.format()
        return None
    assert isinstance(out, Association)
    for prod in out.products:
        assert prod.science and prod.psf
        for member in prod.science + prod.psf:
            assert isinstance(member, str) and os.path.isabs(member)
    return out


@FUZZ
@given(data=json_like, check_files=st.booleans())
def test_parse_asn_any_json_value(data, check_files, scratch):
    _parse_ok(data, str(scratch / "any_asn.json"), check_files)


@FUZZ
@given(data=mutated_asn(), check_files=st.booleans(), named=st.booleans())
def test_parse_asn_mutated_association(data, check_files, named, scratch):
    path = str(scratch / "mut_asn.json") if named else "<asn>"
    out = _parse_ok(data, path, check_files)
    if out is not None and path != "<asn>":
        # every member is one of the association's names taken relative to its folder
        # (absolute names and '..' allowed, as in the JWST pipeline, SPEC 1), normalised
        folder = os.path.dirname(path)
        names = {os.path.normpath(os.path.join(folder, s)) for s in _strings(data)}
        for prod in out.products:
            for member in prod.science + prod.psf:
                assert member == os.path.normpath(member) and member in names, member


def _strings(value):
    """Every string inside a JSON-like value (keys left out)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_parse_asn_valid_association_passes(scratch):
    out = parse_asn(copy.deepcopy(VALID), path=str(scratch / "v_asn.json"), check_files=False)
    assert [len(p.science) for p in out.products] == [2]
    assert [len(p.psf) for p in out.products] == [2]


# ---------------------------------------------------------------------------------------------
# (b) read_product

DTYPES = ["u1", "i2", "i4", "i8", "u2", "u4", "f4", "f8", ">f4", "<f8", "f4", "f4", "u4",
          "bool", "c8", "U3", "O"]  # the last ones astropy refuses to write as images


@st.composite
def arrays(draw, like=None):
    """Small arrays of random dtype and shape (maybe the shape of `like`)."""
    dtype = draw(st.sampled_from(DTYPES))
    if like is not None and draw(st.booleans()):
        shape = like
    else:
        shape = tuple(draw(st.one_of(st.lists(st.integers(1, 5), min_size=2, max_size=4),
                                     st.lists(st.integers(0, 4), max_size=5))))
    size = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True,
                                               width=32),
                                     st.integers(-300, 300)),
                           min_size=size, max_size=size))
    raw = np.array(values, dtype=np.float64).reshape(shape) if shape else np.float64(values[0])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype in ("U3", "O"):
            return np.asarray(raw).astype(str).astype(dtype)
        if np.dtype(dtype).kind in "iub":
            raw = np.nan_to_num(np.asarray(raw), nan=0, posinf=1, neginf=-1)
        return np.asarray(raw).astype(dtype)


@st.composite
def hdulists(draw):
    """Bytes of a small FITS file with random SCI/ERR/DQ (present or not, any dtype/shape)."""
    sci = draw(arrays())
    hdus = []
    in_primary = draw(st.booleans())
    primary_data = sci if in_primary else None
    for name in ([] if in_primary else ["SCI"]) + draw(
            st.lists(st.sampled_from(["ERR", "DQ", "SCI", "REFS", "OTHER"]), max_size=3)):
        kind = draw(st.sampled_from(["image", "image", "table", "empty"]))
        if kind == "image":
            data = sci if name == "SCI" else draw(arrays(like=np.shape(sci)))
            hdus.append(("image", name, data))
        elif kind == "table":
            hdus.append(("table", name, draw(st.integers(0, 3))))
        else:
            hdus.append(("empty", name, None))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = [fits.PrimaryHDU(primary_data)]
            for kind, name, data in hdus:
                if kind == "image":
                    out.append(fits.ImageHDU(data, name=name))
                elif kind == "table":
                    cols = [fits.Column(name="a", format="E", array=np.arange(data, dtype="f4")),
                            fits.Column(name="b", format="5A",
                                        array=np.array(["x"] * data, dtype="U5"))]
                    out.append(fits.BinTableHDU.from_columns(cols, name=name))
                else:
                    out.append(fits.ImageHDU(name=name))
            buf = io.BytesIO()
            fits.HDUList(out).writeto(buf)
    except Exception:
        assume(False)  # astropy cannot write this one (complex, strings, objects...)
    return buf.getvalue()


def _valid_bytes(nint=2, shape=(6, 5), seed=0):
    rng = np.random.default_rng(seed)
    sci = rng.normal(size=(nint,) + shape).astype(np.float32)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI"),
                  fits.ImageHDU(np.ones_like(sci), name="ERR"),
                  fits.ImageHDU(np.zeros(sci.shape, np.uint32), name="DQ")]).writeto(buf)
    return buf.getvalue()


VALID_FITS = _valid_bytes()
valid_fits = st.just(None).map(lambda _: VALID_FITS)  # (st.just would repr 20 kB)


@st.composite
def damaged(draw, source):
    """`source` bytes truncated, with bytes flipped/overwritten, junk inserted, maybe gzipped."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "digits", "insert", "blocks"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[pos:]
        elif op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "digits":  # a header number changed: NAXISn, BITPIX, BZERO...
            data[pos] = ord(draw(st.sampled_from("0123456789-+ .E")))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=100))
        else:  # whole 2880-byte blocks lost or repeated
            start = (pos // 2880) * 2880
            if draw(st.booleans()):
                del data[start:start + 2880]
            else:
                data[start:start] = data[start:start + 2880]
    data = bytes(data)
    if draw(st.booleans()):
        packed = bytearray(gzip.compress(data))
        if draw(st.booleans()) and len(packed) > 20:
            cut = draw(st.integers(10, len(packed) - 1))
            if draw(st.booleans()):
                packed[cut] ^= 0xFF
            else:
                del packed[cut:]
        data = bytes(packed)
    return data


def _read_ok(path, ndims):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = read_product(path, ndims=ndims)
    except InputError as exc:
        assert "\n" not in exc.format()
        return None
    assert isinstance(out, Product)
    assert out.sci.ndim in ndims and out.sci.size > 0
    assert out.sci.dtype.kind == "f"
    if out.err is not None:
        assert out.err.shape == out.sci.shape
    assert out.dq.shape == out.sci.shape and out.dq.dtype == np.uint32
    return out


NDIMS = st.sampled_from([(2, 3), (3,), (4,), (2,)])


@FUZZ
@given(data=st.binary(max_size=6000), ndims=NDIMS)
def test_read_product_random_bytes(data, ndims, scratch):
    assume(data)
    path = _new_file(scratch, data)
    try:
        _read_ok(path, ndims)
    finally:
        os.unlink(path)


@FUZZ
@given(data=damaged(st.one_of(valid_fits, hdulists())), ndims=NDIMS)
def test_read_product_damaged_fits(data, ndims, scratch):
    assume(data)
    path = _new_file(scratch, data, suffix=".fits.gz" if data[:2] == b"\x1f\x8b" else ".fits")
    try:
        _read_ok(path, ndims)
    finally:
        os.unlink(path)


@FUZZ
@given(data=hdulists(), ndims=NDIMS)
def test_read_product_random_hdulists(data, ndims, scratch):
    path = _new_file(scratch, data)
    try:
        out = _read_ok(path, ndims)
        if out is not None:  # ERR and DQ, when read, had SCI's shape (up to leading 1s)
            with fits.open(path) as hdul:
                names = [hdu.name for hdu in hdul]
                for name in ("ERR", "DQ"):
                    if name in names and hdul[names.index(name)].data is not None:
                        assert _lead(hdul[names.index(name)].data.shape) == _lead(out.sci.shape)
    finally:
        os.unlink(path)


def _lead(shape):
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


@settings(max_examples=25, deadline=None)
@given(data=st.one_of(st.binary(max_size=3000), damaged(valid_fits)))
def test_read_product_stdin(data):
    stdin = io.TextIOWrapper(io.BytesIO(data))
    with mock.patch.object(sys, "stdin", stdin):
        _read_ok("-", (2, 3))


def test_read_product_damaged_naxis_card(scratch):
    # found by the fuzzer: "NAXIS   <" in the primary header made astropy's
    # Header.copy(strip=True) raise a TypeError
    i = VALID_FITS.index(b"NAXIS   =")
    damaged_bytes = VALID_FITS[:i] + b"NAXIS   <" + VALID_FITS[i + 9:]
    _read_ok(_new_file(scratch, damaged_bytes), (2, 3))


def test_read_product_damaged_extname_card(scratch):
    # found by the fuzzer: "EXTNAME = &SCI" made hdu.name raise astropy's VerifyError
    i = VALID_FITS.index(b"EXTNAME = 'SCI")
    damaged_bytes = VALID_FITS[:i] + b"EXTNAME = &SCI" + VALID_FITS[i + 14:]
    with pytest.raises(InputError):
        read_product(_new_file(scratch, damaged_bytes))


def test_read_product_intact_file_reads(scratch):
    path = _new_file(scratch, VALID_FITS)
    out = _read_ok(path, (2, 3))
    assert out is not None and out.sci.shape == (2, 6, 5)
    gz = _new_file(scratch, gzip.compress(VALID_FITS), suffix=".fits.gz")
    assert _read_ok(gz, (3,)).sci.shape == (2, 6, 5)


# ---------------------------------------------------------------------------------------------
# (c) read_asn on files

def _json_text(value):
    try:
        return json.dumps(value, allow_nan=True)
    except (ValueError, TypeError):
        return "null"


asn_bytes = st.one_of(
    st.binary(max_size=2000),
    json_like.map(lambda v: _json_text(v).encode()),
    mutated_asn().map(lambda v: _json_text(v).encode()),
    damaged(mutated_asn().map(lambda v: _json_text(v).encode())),
    st.sampled_from([b"", b"\xef\xbb\xbf{}", b"[" * 100000, b"{\"a\":" * 5000,
                     b"[" + b"1" * 5000 + b"]", b"{\"asn_id\": NaN, \"products\": Infinity}",
                     "{\"products\": \"\\ud800\"}".encode(), b"\x00" * 10,
                     json.dumps(VALID).encode("utf-16")]))


def _read_asn_ok(path, check_files):
    try:
        out = read_asn(path, check_files=check_files)
    except InputError as exc:
        assert "\n" not in exc.format()
        return None
    assert isinstance(out, Association)
    return out


@FUZZ
@given(data=asn_bytes, check_files=st.booleans())
def test_read_asn_random_files(data, check_files, scratch):
    path = _new_file(scratch, data, suffix="_asn.json")
    try:
        _read_asn_ok(path, check_files)
    finally:
        os.unlink(path)


@pytest.mark.parametrize("data", [b"[" + b"1" * 5000 + b"]", b"{\"asn_id\": " + b"9" * 4400 + b"}",
                                  b"[" * 100000, b"\xff\xfe"])
def test_read_asn_pathological_json(scratch, data):
    path = _new_file(scratch, data, suffix="_asn.json")
    with pytest.raises(InputError):
        read_asn(path)
