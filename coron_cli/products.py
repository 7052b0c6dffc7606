"""FITS products in and out: exposures, SCI/ERR/DQ, tables, provenance, atomic writes.

Everything that touches a file lives here (with the association parser in
:mod:`coron_cli.asn`); numerics never see a path.
"""

import contextlib
import datetime as _dt
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, OutputClosed, OutputError, check_signals
from .jwst import CONTRAST_FULL, asdf_hdu, cal_step_cards, contrast_hdus, jwst_headers

__all__ = [
    "Product",
    "read_product",
    "read_image",
    "write_product",
    "product_bytes",
    "read_contrast_table",
    "add_provenance",
    "star_center",
    "roll_angle",
    "pixel_scale_arcsec",
    "exposure_root",
    "replace_suffix",
    "sibling_path",
    "atomic_output",
    "write_ecsv",
    "psfmask_beside",
    "read_psfmask",
    "transmission_for",
    "psf_fwhm_pix",
    "lambda_over_d_pix",
    "KNOWN_SUFFIXES",
]

#: Product suffixes, longest first so that replacing one never leaves a stub.
KNOWN_SUFFIXES = ("_detections", "_calints", "_psfstack", "_psfalign", "_psfsub", "_i2d",
                  "_snr", "_contrast", "_calint", "_cal")

_STRUCTURAL = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT",
               "BZERO", "BSCALE", "BLANK", "EXTNAME", "EXTVER", "CHECKSUM", "DATASUM",
               "TFIELDS")


@dataclass
class Product:
    """One FITS product in memory.

    Attributes
    ----------
    sci : ndarray
        Science array: (nint, ny, nx) for exposures and cubes, (n1, n2, ny, nx)
        for aligned references, (ny, nx) for images.
    err, dq : ndarray or None
        Same shape as `sci` (dq unsigned integer).
    primary : astropy.io.fits.Header
        Primary header (input keywords carried along, provenance added).
    sci_header : astropy.io.fits.Header
        Header of the SCI extension (WCS, STARCENX/STARCENY).
    tables : dict of str to astropy.table.Table
        Table extensions by name (REFS, SHIFTS, CONTRAST...).
    images : dict of str to (ndarray, Header)
        Extra image extensions by name (e.g. KLMODES).
    path : str
        Where it was read from, for messages ('-' for stdin).
    """

    sci: np.ndarray
    err: np.ndarray = None
    dq: np.ndarray = None
    primary: object = None
    sci_header: object = None
    tables: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    path: str = ""

    def __post_init__(self):
        from astropy.io import fits

        if self.primary is None:
            self.primary = fits.Header()
        if self.sci_header is None:
            self.sci_header = fits.Header()


def _clean_header(header):
    try:
        out = header.copy(strip=True)
    except (TypeError, ValueError, KeyError):
        out = header.copy()  # a damaged structural card (e.g. "NAXIS < 0"): stripped below
    for key in _STRUCTURAL:
        while key in out:
            del out[key]
    for key in list(out.keys()):
        if key.startswith(("NAXIS", "TTYPE", "TFORM", "TUNIT", "TDIM")):
            del out[key]
    return out


def _open(path, *, raw=False):
    """Open a FITS file or stdin fully into memory; raise InputError on failure.

    With `raw`, image data are left unscaled (``do_not_scale_image_data``) for
    :func:`_image_data`, which scales them and puts them in native byte order
    without the copies astropy's scaling makes.
    """
    if path == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise InputError("-", "standard input is empty")
        source = io.BytesIO(_gunzip(data, "-"))
    else:
        if not os.path.exists(path):
            raise InputError(path, "no such file")
        if os.path.isdir(path):
            raise InputError(path, "is a directory, not a FITS file")
        if not os.access(path, os.R_OK):
            raise InputError(path, "permission denied")
        if os.path.getsize(path) == 0:
            raise InputError(path, "file is empty")
        source = path
        with open(path, "rb") as fh:
            if fh.read(2) == _GZIP_MAGIC:
                fh.seek(0)
                source = io.BytesIO(_gunzip(fh.read(), path))
    from astropy.io import fits           # after the checks: a missing file is reported at once

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(source, memmap=False, lazy_load_hdus=False,
                             do_not_scale_image_data=raw)
            for hdu in hdul:
                _ = hdu.data  # force reading, so a truncated file fails here
                _ = hdu.name  # and parse EXTNAME, so a damaged card fails here too
        except Exception as exc:  # astropy raises assorted errors on garbage
            if any("truncated" in str(w.message).lower() for w in caught):
                raise InputError(path, "truncated FITS file") from None
            raise InputError(path, f"not a readable FITS file ({_short(exc)})") from None
    for w in caught:
        text = str(w.message).lower()
        if "truncated" in text or "unexpected end" in text:
            raise InputError(path, "truncated FITS file")
    hdul._coron_source = source
    return hdul


def _image_data(hdul, hdu):
    """The data of an image HDU of a file opened by ``_open(raw=True)``: the values
    astropy's scaling gives, in native byte order.

    Read as stored (big-endian), a float image or an unsigned integer one stored
    the FITS way (signed, BZERO = 2**(bits-1)) is converted in place, with no second
    array; any other scaling (BSCALE, other BZERO, BLANK, compressed images) is read
    again with astropy's own scaling.
    """
    from astropy.io import fits

    data = hdu.data
    if data is None:
        return None
    header = hdu.header
    bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
    kind, bits = data.dtype.kind, 8 * data.dtype.itemsize
    plain = isinstance(hdu, (fits.ImageHDU, fits.PrimaryHDU)) and bscale == 1 \
        and not (kind in "iu" and "BLANK" in header)
    if plain and bzero == 0 and kind in "fiu":
        pass
    elif plain and kind == "i" and bits > 8 and bzero == 2 ** (bits - 1):
        if not data.flags.writeable:
            data = data.copy()
        order = data.dtype.byteorder if data.dtype.byteorder in "<>" else "="
        data = data.view(np.dtype(f"{order}u{data.dtype.itemsize}"))
        data ^= data.dtype.type(1 << (bits - 1))       # -2**(bits-1)..: 0.. (BZERO added)
    else:
        data = _rescaled(hdul, hdu)
    if not data.dtype.isnative:
        if not data.flags.writeable:
            data = data.copy()
        data = data.byteswap(inplace=True).view(data.dtype.newbyteorder("="))
    return data


def _rescaled(hdul, hdu):
    """`hdu`'s data scaled by astropy: the file read again (rare scalings only)."""
    from astropy.io import fits

    index = hdul.index(hdu)
    source = hdul._coron_source
    if hasattr(source, "seek"):
        source.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(source, memmap=False, lazy_load_hdus=False) as again:
            return np.asarray(again[index].data)


_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(data, path):
    """Whole gzip streams are inflated here, so a damaged one fails its CRC check.

    (astropy reads only as far as the headers ask and so returns garbage.)
    """
    if data[:2] != _GZIP_MAGIC:
        return data
    import gzip
    import zlib

    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"damaged gzip file ({_short(exc)})") from None


def _short(exc):
    text = str(exc).strip().splitlines()
    text = text[0] if text else type(exc).__name__
    return text[:160]


def _find(hdul, name):
    for hdu in hdul:
        if hdu.name.upper() == name:
            return hdu
    return None


def _squeeze_lead(shape):
    """Shape without leading axes of length 1: (1, ny, nx) and (ny, nx) are the same frames."""
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _as_float(data, path, what):
    arr = np.asarray(data)
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise InputError(path, f"{what} has unsupported data type {arr.dtype}")
    # no copy of an array already native float32 / float64 (read_product's own)
    if arr.dtype.kind == "f" and arr.dtype.itemsize <= 4:
        return arr.astype(np.float32, copy=False)
    if arr.dtype == np.float64:
        return arr.astype(np.float64, copy=False)
    return arr.astype(np.float32)


def read_product(path, *, ndims=(2, 3), what="exposure"):
    """Read a JWST-style product (or a plain FITS image) from a path or '-'.

    Parameters
    ----------
    path : str
        File name, or '-' for standard input.
    ndims : tuple of int
        Dimensionalities accepted for SCI. A 2-D image is returned as one
        integration (1, ny, nx) when 3 is among them.
    what : str
        What the file should be, for messages.

    Returns
    -------
    Product

    Raises
    ------
    InputError
        Missing, unreadable or truncated file; no SCI data; wrong dtype or
        dimensions; ERR or DQ of another shape; DQ not integer; every pixel
        flagged.
    """
    hdul = _open(path, raw=True)
    from astropy.io import fits
    from astropy.table import Table

    try:
        sci_hdu = _find(hdul, "SCI")
        primary_header = hdul[0].header
        if sci_hdu is None:
            if hdul[0].data is not None and np.ndim(hdul[0].data) > 0:
                sci_hdu = hdul[0]
            else:
                raise InputError(path, f"no SCI data (expected a {what} with a SCI extension "
                                       "or an image in the primary HDU)")
        if sci_hdu.data is None or not isinstance(sci_hdu, (fits.ImageHDU, fits.PrimaryHDU,
                                                             fits.CompImageHDU)):
            raise InputError(path, "SCI extension holds no image data")
        sci = _as_float(_image_data(hdul, sci_hdu), path, "SCI")
        if sci.size == 0:
            raise InputError(path, "SCI is empty")
        if sci.ndim == 2 and 3 in ndims:
            sci = sci[None]
        if sci.ndim not in ndims:
            want = " or ".join(f"{d}-D" for d in sorted(set(ndims) | ({2} if 3 in ndims else set())))
            raise InputError(path, f"SCI is {np.ndim(sci_hdu.data)}-D, a {what} must be {want}")
        err = None
        err_hdu = _find(hdul, "ERR")
        if err_hdu is not None and err_hdu.data is not None:
            err = _as_float(_image_data(hdul, err_hdu), path, "ERR")
            if err.shape != sci.shape and _squeeze_lead(err.shape) == _squeeze_lead(sci.shape):
                err = err.reshape(sci.shape)
            if err.shape != sci.shape:
                raise InputError(path, f"ERR shape {err_hdu.data.shape} differs from SCI shape "
                                       f"{sci_hdu.data.shape}")
        dq = None
        dq_hdu = _find(hdul, "DQ")
        if dq_hdu is not None and dq_hdu.data is not None:
            raw = _image_data(hdul, dq_hdu)
            if raw.dtype.kind not in "iu":
                raise InputError(path, f"DQ must be an integer array, not {raw.dtype}")
            if raw.shape != sci.shape and _squeeze_lead(raw.shape) == _squeeze_lead(sci.shape):
                raw = raw.reshape(sci.shape)
            if raw.shape != sci.shape:
                raise InputError(path, f"DQ shape {dq_hdu.data.shape} differs from SCI shape "
                                       f"{sci_hdu.data.shape}")
            dq = raw.astype(np.uint32, copy=False)
        else:
            dq = np.zeros(sci.shape, np.uint32)
        tables = {}
        images = {}
        for hdu in hdul[1:]:
            name = hdu.name.upper()
            if name in ("SCI", "ERR", "DQ"):
                continue
            if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                try:
                    tables[name] = Table.read(hdu)
                except Exception as exc:
                    raise InputError(path, f"table {name} unreadable ({_short(exc)})") from None
            elif hdu.data is not None:
                images[name] = (_image_data(hdul, hdu), _clean_header(hdu.header))
        primary = _clean_header(primary_header)
        sci_header = _clean_header(sci_hdu.header) if sci_hdu is not hdul[0] else fits.Header()
        if sci_hdu is hdul[0]:
            # keep WCS keywords of a plain image with the science header
            for key in list(primary.keys()):
                if key[:5] in ("CRPIX", "CRVAL", "CTYPE", "CDELT", "CUNIT", "PC1_1", "PC1_2",
                               "PC2_1", "PC2_2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
                               "STARC", "RADES", "EQUIN", "LONPO", "LATPO"):
                    sci_header[key] = primary[key]
    finally:
        hdul.close()
    product = Product(sci=sci, err=err, dq=dq, primary=primary, sci_header=sci_header,
                      tables=tables, images=images, path=path)
    return product


def read_image(path, name):
    """The data of one image extension of a FITS file, in native byte order (only that
    extension is read; the values are those of the file).

    Raises
    ------
    InputError
        Unreadable file, or no image extension `name`.
    """
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul[name]
            if not hdu.is_image or hdu.data is None:
                raise InputError(path, f"extension {name} holds no image")
            data = np.asarray(hdu.data)
    except KeyError:
        raise InputError(path, f"no {name} extension") from None
    except OSError as exc:
        raise InputError(path, f"not a readable FITS file ({_short(exc)})") from None
    if not data.dtype.isnative:
        data = data.byteswap(inplace=True).view(data.dtype.newbyteorder("="))
    return data


def read_contrast_table(path):
    """coron's contrast table of a ``_contrast`` product, with every column.

    The ``CONTRAST`` extension holds only the columns of JWST's ContrastModel
    (radius, sigma); coron's full table is ``CRN_CONTRAST``
    (:mod:`coron_cli.jwst`). Products written before the split have only
    ``CONTRAST``, with every column: that is read then.

    Raises
    ------
    InputError
        Unreadable file, or no contrast table.
    """
    from astropy.table import Table

    hdul = _open(path)
    try:
        for name in (CONTRAST_FULL, "CONTRAST"):
            hdu = _find(hdul, name)
            if hdu is not None:
                try:
                    return Table.read(hdu)
                except Exception as exc:
                    raise InputError(path, f"table {name} unreadable ({_short(exc)})") from None
    finally:
        hdul.close()
    raise InputError(path, "no CONTRAST table (not a _contrast product)")


def add_provenance(header, tool, params, history=()):
    """Record who made a product and how, in place on a header copy.

    The JWST cal-step keywords of the steps `tool` stands for are set too
    (``S_KLIP = 'COMPLETE'``..., :func:`coron_cli.jwst.cal_step_cards`), so that
    a product and what is made from it say the same whether the chain ran in
    one process or through files.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Primary header to annotate (a copy is returned).
    tool : str
        Command name, e.g. 'coron-klip'.
    params : dict
        Every parameter used; written as ``HIERARCH CORON <NAME>`` keywords
        and as one HISTORY line.
    history : sequence of str
        Further HISTORY lines.

    Returns
    -------
    astropy.io.fits.Header
    """
    from . import __version__

    out = header.copy()
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    out["CRN_TOOL"] = (tool, "coron tool that made this product")
    out["CRN_VER"] = (__version__, "coron version")
    out["CRN_DATE"] = (now, "UTC time the product was made")
    cal_step_cards(out, tool)
    for key, value in params.items():
        if value is None:
            value = "none"
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, (np.integer, np.floating)):
            value = value.item()
        if isinstance(value, str) and len(value) > 50:
            value = "..." + value[-47:]
        card_key = f"HIERARCH CORON {str(key).upper().replace('_', ' ')}"
        out[card_key] = value
    text = ", ".join(f"{k}={v}" for k, v in params.items())
    out.add_history(f"{now} {tool} {__version__}: {text}")
    for line in history:
        out.add_history(str(line))
    return out


def _hdus(product, dq=True, filename=None):
    """(HDUs up to ERR, HDUs after DQ); DQ itself between them when `dq`.

    The JWST parts (DATAMODL, FILENAME = `filename`, ERR's BUNIT, the CONTRAST
    table of the ContrastModel schema, the ASDF extension last) are made by
    :mod:`coron_cli.jwst`; an ASDF extension the product carries from its input
    is replaced.
    """
    from astropy.io import fits

    primary, sci_header, err_header = jwst_headers(product, filename)
    hdus = [fits.PrimaryHDU(header=primary)]
    if product.sci is not None:
        hdus.append(fits.ImageHDU(np.asarray(product.sci), header=sci_header, name="SCI"))
    if product.err is not None:
        hdus.append(fits.ImageHDU(np.asarray(product.err, dtype=np.float32), header=err_header,
                                  name="ERR"))
    if dq and product.dq is not None:
        hdus.append(fits.ImageHDU(np.asarray(product.dq, dtype=np.uint32), name="DQ"))
    after = []
    for name, (data, header) in product.images.items():
        if name.upper() == "ASDF":
            continue
        after.append(fits.ImageHDU(np.asarray(data), header=header, name=name))
    for name, table in product.tables.items():
        if name.upper() == "ASDF" or (name.upper() == CONTRAST_FULL
                                      and "CONTRAST" in product.tables):
            continue
        if name.upper() == "CONTRAST":
            after.extend(contrast_hdus(table))
            continue
        hdu = fits.table_to_hdu(table)
        hdu.name = name
        after.append(hdu)
    after.append(asdf_hdu(product, sci_header))
    return hdus, after


def _hdulist(product, filename=None):
    from astropy.io import fits

    before, after = _hdus(product, filename=filename)
    return fits.HDUList(before + after)


# DQ arrays from this size are written in slices: FITS keeps uint32 as int32 with
# BZERO = 2**31, and astropy converts the whole array to do so (a full copy)
_DQ_STREAM_BYTES = 64 * 2 ** 20
_DQ_SLICE = 2 ** 20              # values per slice (4 MB, one buffer reused)


def _extension_bytes(hdus):
    """The bytes astropy writes for `hdus` as extensions (after a primary HDU)."""
    from astropy.io import fits

    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU()] + list(hdus)).writeto(buf)
    raw = buf.getvalue()
    with fits.open(io.BytesIO(raw)) as h:
        start = h.fileinfo(1)["hdrLoc"]
    return raw[start:]


def _write_fits(product, fh, filename=None):
    """Write the product's FITS file to an open binary file.

    Byte for byte what ``_hdulist(product, filename).writeto(fh)`` writes, but a
    large DQ is converted to its on-disk form a slice at a time instead of all
    at once.
    """
    from astropy.io import fits

    dq = None if product.dq is None else np.asarray(product.dq)
    if dq is None or dq.size * 4 < _DQ_STREAM_BYTES or dq.dtype != np.uint32:
        _hdulist(product, filename).writeto(fh)
        return
    before, after = _hdus(product, dq=False, filename=filename)
    fits.HDUList(before).writeto(fh)
    # the header astropy writes for a uint32 image of this shape
    head = _extension_bytes([fits.ImageHDU(np.zeros((1,) * dq.ndim, np.uint32), name="DQ")])
    header = fits.Header.fromstring(head[:head.index(b"END" + b" " * 77) + 80].decode("ascii"))
    for k, n in enumerate(reversed(dq.shape)):
        header[f"NAXIS{k + 1}"] = n
    fh.write(header.tostring().encode("ascii"))
    flat = dq.reshape(-1)
    top = np.uint32(0x80000000)          # u - 2**31 as a 32-bit pattern is u ^ 2**31
    buf = np.empty(min(flat.size, _DQ_SLICE), np.uint32)
    for i in range(0, flat.size, _DQ_SLICE):
        part = buf[:flat[i:i + _DQ_SLICE].size]
        np.bitwise_xor(flat[i:i + _DQ_SLICE], top, out=part)
        part.byteswap(inplace=True)                 # big-endian, as astype(">u4") gives
        fh.write(memoryview(part))
    fh.write(b"\0" * (-flat.size * 4 % 2880))
    if after:
        fh.write(_extension_bytes(after))


def product_bytes(product):
    """The FITS file of a product as bytes (for stdout: no FILENAME, the name is not known)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _hdulist(product).writeto(buf)
    return buf.getvalue()


def write_product(product, path):
    """Write a product atomically, or to standard output when `path` is '-'.

    The file is written to a hidden temporary file in the destination folder
    and renamed over `path` only when complete, so an interrupted or failed
    write never leaves a partial product.

    Raises
    ------
    OutputError
        Missing or read-only folder, standard output a terminal, disk full,
        file-size limit.
    """
    if path == "-":
        stream = sys.stdout.buffer
        if sys.stdout.isatty():
            raise OutputError("-", "refusing to write binary FITS to a terminal; "
                                   "use -o FILE or pipe the output")
        view = memoryview(product_bytes(product))
        try:
            while view:
                # a pipe may take fewer bytes than offered; a closed one raises
                n = stream.write(view)
                if not n:
                    raise BrokenPipeError("standard output closed")
                view = view[n:]
            stream.flush()
        except BrokenPipeError:
            raise OutputClosed() from None
        return
    if os.path.isdir(path):
        raise OutputError(path, "is a directory")
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _write_fits(product, fh, filename=os.path.basename(path))
            fh.flush()
            os.fsync(fh.fileno())


def _os_error(exc):
    """The OSError behind an exception (astropy wraps some), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def star_center(header, shape, primary=None):
    """Star position (x, y), 0-based, from STARCENX/Y, else CRPIX, else the frame centre.

    coron writes STARCENX/Y 0-based, with a comment saying so. Other tools
    (Winnie, spaceKLIP) copy CRPIX into them, 1-based: a STARCENX/Y pair
    without that comment and equal to CRPIX is read as 1-based.

    An exposure's CRPIX is the aperture's reference point, where target
    acquisition puts the star; a resampled image's (the JWST stage's i2d,
    S_RESAMP = COMPLETE in `primary`) is only the output frame's reference:
    there the star is TARG_RA/TARG_DEC (from `primary`) through the WCS.

    Returns
    -------
    (x, y), str
        The position and where it came from.
    """
    if "STARCENX" in header and "STARCENY" in header:
        x, y = float(header["STARCENX"]), float(header["STARCENY"])
        if "0-based" not in str(header.comments["STARCENX"]) and "CRPIX1" in header \
                and "CRPIX2" in header and abs(x - float(header["CRPIX1"])) < 1e-6 \
                and abs(y - float(header["CRPIX2"])) < 1e-6:
            # written by another tool as a copy of CRPIX (Winnie/spaceKLIP): 1-based
            return (x - 1.0, y - 1.0), "STARCEN (1-based, = CRPIX)"
        return (x, y), "STARCEN"
    target = _target_pixel(header, primary)
    if target is not None:
        return target, "TARG_RA/TARG_DEC through the WCS"
    if "CRPIX1" in header and "CRPIX2" in header:
        return (float(header["CRPIX1"]) - 1.0, float(header["CRPIX2"]) - 1.0), "CRPIX"
    ny, nx = shape[-2:]
    return ((nx - 1) / 2.0, (ny - 1) / 2.0), "frame centre"


def _target_pixel(header, primary):
    """TARG_RA/TARG_DEC through the celestial WCS of a resampled image, 0-based, or None."""
    if primary is None or str(primary.get("S_RESAMP", "")).strip().upper() != "COMPLETE":
        return None
    try:
        ra, dec = float(primary["TARG_RA"]), float(primary["TARG_DEC"])
    except (KeyError, TypeError, ValueError):
        return None
    w = _celestial_wcs(header)
    if w is None:
        return None
    try:
        x, y = w.all_world2pix([[ra, dec]], 0)[0]
    except Exception:  # a WCS that cannot be inverted there
        return None
    return (float(x), float(y)) if np.isfinite(x) and np.isfinite(y) else None


def star_cards(header, center, source=None):
    """Write the star position (x, y), 0-based, as STARCENX/STARCENY, in place.

    The comment says "0-based" (what :func:`star_center` looks for) and,
    when given, where the position came from.
    """
    where = f" (from {source})" if source else ""
    header["STARCENX"] = (float(center[0]), f"star x, 0-based pixels{where}")
    header["STARCENY"] = (float(center[1]), f"star y, 0-based pixels{where}")
    return header


def _celestial_wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning

    if "CTYPE1" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header, naxis=2)
        except Exception:
            return None
    if not w.has_celestial:
        return None
    return w.celestial


def roll_angle(sci_header, primary):
    """Position angle of the detector +y axis (degrees east of north).

    Taken from the celestial WCS of the SCI header when there is one, else
    from PA_APER, else ROLL_REF - VPARITY * V3I_YANG, else ROLL_REF (or
    PA_V3), in either header.

    Returns
    -------
    float or None, str
        The angle and its source.
    """
    w = _celestial_wcs(sci_header)
    if w is not None:
        cd = w.pixel_scale_matrix
        return float(np.degrees(np.arctan2(cd[0, 1], cd[1, 1]))), "WCS"

    def number(key):
        for h in (sci_header, primary):
            if key in h:
                try:
                    return float(h[key])
                except (TypeError, ValueError):
                    pass
        return None

    # the aperture's angle on the sky: PA_APER, or ROLL_REF - VPARITY * V3I_YANG (the
    # V3 roll alone is ~5 degrees off for MIRI)
    pa_aper = number("PA_APER")
    if pa_aper is not None:
        return pa_aper, "PA_APER"
    roll, parity, yang = number("ROLL_REF"), number("VPARITY"), number("V3I_YANG")
    if roll is not None and parity is not None and yang is not None:
        return roll - parity * yang, "ROLL_REF - VPARITY*V3I_YANG"
    for key in ("ROLL_REF", "PA_V3"):
        value = number(key)
        if value is not None:
            return value, key
    return None, "none"


def pixel_scale_arcsec(sci_header):
    """Pixel scale in arcsec from the celestial WCS, or PIXSCALE; None if unknown."""
    w = _celestial_wcs(sci_header)
    if w is not None:
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.mean(proj_plane_pixel_scales(w)) * 3600.0)
    if "PIXSCALE" in sci_header:
        return float(sci_header["PIXSCALE"])
    return None


def exposure_root(path):
    """File name without folder, '.gz' and the known suffix: 'jw1_calints.fits' -> 'jw1'."""
    name = os.path.basename(path)
    for ext in (".gz", ".fz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    for ext in (".fits", ".fit", ".fts"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    for suffix in KNOWN_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exposure_product_name(exposure, kind, asn_id=None):
    """The name of an exposure's product: ('d/jw1_calints.fits', 'psfalign', 'c1001') ->
    'jw1_c1001_psfalign.fits' (the JWST stage's naming); '-' (stdin) -> 'stdin_...'."""
    root = "stdin" if exposure == "-" else exposure_root(exposure)
    return f"{root}_{asn_id}_{kind}.fits" if asn_id else f"{root}_{kind}.fits"


def replace_suffix(path, suffix):
    """'x/a_psfsub.fits', '_snr' -> 'a_snr.fits' (basename only)."""
    return exposure_root(path) + suffix + ".fits"


def sibling_path(path, suffix, ext=".fits", *, base=None):
    """Name after a product: ('out/a_snr.fits', '_contrast', '.ecsv') -> 'out/a_contrast.ecsv'.

    For standard output ('-') the name is made from `base` (the input) in
    the current folder.
    """
    if path == "-":
        return exposure_root(base or "stdin") + suffix + ext
    return os.path.join(os.path.dirname(path), exposure_root(path) + suffix + ext)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a hidden temporary path next to `path`; rename it over `path` on success.

    On any failure or interruption the temporary file is removed and `path`
    is left as it was.

    Raises
    ------
    OutputError
        Missing folder, or the write failed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(path, f"output folder {folder} does not exist")
    tmp = None
    try:
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                                       suffix=".part", dir=folder)
            os.close(fd)
        except OSError as exc:
            raise OutputError(path, f"cannot write in {folder} "
                                    f"({exc.strerror or exc})") from None
        yield tmp
        check_signals()  # never commit an output after a signal, even a swallowed one
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OutputError:
        if tmp:
            _unlink(tmp)
        raise
    except Exception as exc:
        if tmp:
            _unlink(tmp)
        cause = _os_error(exc)
        if cause is None:
            raise
        # astropy wraps some OSErrors (e.g. EFBIG under a file-size limit)
        reason = cause.strerror or "disk full or file-size limit"
        raise OutputError(path, f"write failed ({reason})") from None
    except BaseException:
        if tmp:
            _unlink(tmp)
        raise


def write_ecsv(table, path):
    """Write a table as ECSV (astropy's self-describing text format), atomically."""
    with atomic_output(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table.write(tmp, format="ascii.ecsv", overwrite=True)


def psfmask_beside(exposure_path):
    """The transmission map found beside an exposure, or None.

    Looks for ``<exposure>_psfmask.fits`` (``x_calints.fits`` ->
    ``x_calints_psfmask.fits``, as the JWST-prepared data of Winnie and
    spaceKLIP name it), then ``<root>_psfmask.fits`` (``x_psfmask.fits``),
    each also gzipped (``.fits.gz``).
    """
    if not exposure_path or exposure_path == "-":
        return None
    folder = os.path.dirname(exposure_path)
    name = os.path.basename(exposure_path)
    for ext in (".gz", ".fz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem = name[:-5] if name.lower().endswith(".fits") else name
    for base in (stem, exposure_root(exposure_path)):
        for ext in ("_psfmask.fits", "_psfmask.fits.gz"):
            path = os.path.join(folder, base + ext)
            if os.path.isfile(path):
                return path
    return None


def read_psfmask(path, shape):
    """A coronagraph transmission map (JWST PSFMASK) on an exposure's pixel grid.

    Parameters
    ----------
    path : str
        FITS file: a JWST PSFMASK reference file cut to the subarray, or an
        ``<exposure>_psfmask.fits``. The map is the first image whose shape
        is `shape`, looking at the SCI extensions first, then any image.
    shape : (ny, nx)
        The exposure's frame size.

    Returns
    -------
    ndarray of float64 of shape (ny, nx)
        Intensity transmission, 1 = unobstructed; non-finite values read as 0.

    Raises
    ------
    InputError
        Unreadable file, no image of the right size, or negative values.
    """
    from astropy.io import fits

    hdul = _open(path)
    try:
        images = [h for h in hdul if isinstance(h, (fits.ImageHDU, fits.PrimaryHDU,
                                                    fits.CompImageHDU)) and h.data is not None]
        images.sort(key=lambda h: h.name.upper() != "SCI")
        found = None
        for h in images:
            data = np.asarray(h.data)
            if data.shape != tuple(shape) and _squeeze_lead(data.shape) == tuple(shape):
                data = data.reshape(shape)
            if data.shape == tuple(shape):
                found = _as_float(data, path, "transmission map").astype(np.float64)
                break
        if found is None:
            sizes = ", ".join(f"{h.data.shape[-1]}x{h.data.shape[-2]}" for h in images
                              if np.ndim(h.data) >= 2) or "none"
            raise InputError(path, f"no transmission map of {shape[1]}x{shape[0]} pixels "
                                   f"(images: {sizes})")
    finally:
        hdul.close()
    found = np.where(np.isfinite(found), found, 0.0)
    if (found < 0).any():
        raise InputError(path, "transmission map has negative values")
    return found


def transmission_for(psfmask, exposure_path, shape):
    """The transmission map a psfmask setting gives an exposure, or None.

    `psfmask` is "auto" (the map beside the exposure, :func:`psfmask_beside`,
    when there is one), "none"/None, or a path.
    """
    if psfmask in (None, "none"):
        return None
    path = psfmask_beside(exposure_path) if psfmask == "auto" else psfmask
    return None if path is None else read_psfmask(path, shape)


def lambda_over_d_pix(primary, sci_header):
    """lambda/D of JWST (6.5 m) at the exposure's FILTER, in pixels; None if unknown."""
    from .core.optics import JWST_DIAMETER_M, filter_wavelength_um

    wave = filter_wavelength_um(primary.get("FILTER", sci_header.get("FILTER")))
    scale = pixel_scale_arcsec(sci_header) or primary.get("PIXSCALE")
    if not wave or not scale:
        return None
    try:
        return float(wave * 1e-6 / JWST_DIAMETER_M * 206264.806 / float(scale))
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def psf_fwhm_pix(primary, sci_header):
    """FWHM in pixels of the sharpest PSF the exposure can hold (diffraction limit); None."""
    from .core.optics import AIRY_FWHM_LOD

    lod = lambda_over_d_pix(primary, sci_header)
    return None if lod is None else AIRY_FWHM_LOD * lod
