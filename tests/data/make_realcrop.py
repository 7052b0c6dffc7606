"""Cut the small real-JWST test data set under tests/data from the full exposures.

Run by hand, not by the tests::

    .venv/bin/python tests/data/make_realcrop.py [--src /work/shared/realdata] [--dest tests/data]

Where the data come from
------------------------
Public JWST data, from the tutorial data of the open-source Winnie project
(github.com/kdlawson/Winnie: ``tutorials/aumic_rdi_example/coadded`` and, on its
``miri_fqpm_support`` branch, ``tutorials/hd106906_4qpm_example/coadded``). They are stage-2
``*_calints.fits`` products of ``calwebb_image2`` whose integrations Winnie's tutorial
co-added into one; each ``<exposure>_calints_psfmask.fits`` is the coronagraph's
transmission map (the CRDS ``PSFMASK`` reference file cut to the subarray).

- ``aumic-f356w``: NIRCam ``MASKA335R`` / ``F356W``, GTO program 1184 (PI Schlieder).
  Science AU Mic (obs 001, 002: two rolls), references G 80-21 (obs 003, 004), G 7-34
  (obs 005, 006) and G 161-71 (obs 013, 014).
- ``hd106906-miri``: MIRI ``4QPM_1140`` / ``F1140C``. Science HD 106906 (program 1277,
  obs 019), reference HD 218261 in a 9-point small-grid dither (program 1194, obs 015),
  backgrounds of program 1277 obs 022 (two) and program 1194 obs 019 (one).

What is cut
-----------
For every exposure of the two associations: a square box of ``size`` pixels around the
star, which sits at ``CRPIX1/2`` (1-based) of the SCI header: 64 x 64 for AU Mic (4"), 48 x
48 for HD 106906 (5.3"; smaller because noisy float data hardly compress and the set has 13
exposures). The box starts at column ``floor(CRPIX1 - 1 + 0.5) - size // 2`` (0-based), and
likewise for rows, in the frame of the file as distributed (Winnie's MIRI files were already
cut from the 288 x 224 ``MASK1140`` subarray, at ``CROP_SHIFTX/Y`` = 13, 7 pixels). The HD
106906 box leaves out the companion HD 106906 b (~64 px from the star).

Each crop keeps:

- the primary header, every keyword unchanged (``SUBSTRT*``/``SUBSIZE*`` still describe the
  detector readout, not the crop), plus HISTORY lines naming the source file and the box;
- the ``SCI`` header, every keyword, with the pixel positions moved to the crop:
  ``CRPIX1/2`` and, where present, Winnie's ``STARCENX/Y`` and ``MASKCENX/Y`` (which, like
  ``CRPIX``, are 1-based) lowered by the box origin; ``S_REGION`` recomputed for the crop's
  footprint; ``XCROP0``/``YCROP0`` added (the box origin, 0-based, in the source file). The
  SIP distortion is a polynomial in (pixel - CRPIX), so it holds unchanged after a
  whole-pixel shift; :func:`check_wcs` confirms that the star's sky position from the
  crop's WCS equals the original's;
- ``SCI`` (float32), ``ERR`` (stored float32; float64 in the source) and ``DQ`` (uint32),
  shape (1, size, size). The other extensions (AREA, INT_TIMES, ASDF with the gWCS,
  VAR_*, IMSHIFTS, MASKOFFS) are dropped;
- the transmission map, cut by the same box, as ``<exposure>_calints_psfmask.fits.gz``:
  the source's primary header and one ``SCI`` image extension (float32) with the source
  ``SCI`` header, ``CRPIX`` moved as above when it has a WCS. The MIRI source files hold the
  uncut 288 x 224 map in the primary HDU and nine more copies of it after the cut ``SCI``;
  only the ``SCI`` extension of the exposure's size is kept.

Every file is written gzip-compressed (``.fits.gz``, reproducibly: no name or time in the
gzip header), which coron reads; and one CORON association per set lists the members as the
original does (science, psf, background), with the ``.fits.gz`` names.

Regenerate
----------
Run the command above; it overwrites the two folders' files in place and prints their
sizes. The output is byte-for-byte reproducible from the same source files.
"""

import argparse
import gzip
import io
import json
import os
import sys
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

SIZE = 64

#: source (and output) folder, association file and box size, in the order processed
SETS = [
    ("aumic-f356w", "jw01184-c1001_coron3_asn.json", 64),
    ("hd106906-miri", "jw01277-c1001_coron3_asn.json", 48),
]

#: SCI header keywords that are pixel positions, 1-based, moved with the crop
_PIXEL_KEYS = (("CRPIX1", "x"), ("CRPIX2", "y"), ("STARCENX", "x"), ("STARCENY", "y"),
               ("MASKCENX", "x"), ("MASKCENY", "y"))

_STRUCTURAL = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3",
               "EXTEND", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "CHECKSUM", "DATASUM")


def crop_box(sci_header, shape, size=SIZE):
    """(x0, y0): 0-based origin of the size x size box around the star at CRPIX."""
    ny, nx = shape[-2:]
    x0 = int(np.floor(sci_header["CRPIX1"] - 1.0 + 0.5)) - size // 2
    y0 = int(np.floor(sci_header["CRPIX2"] - 1.0 + 0.5)) - size // 2
    if not (0 <= x0 and x0 + size <= nx and 0 <= y0 and y0 + size <= ny):
        raise SystemExit(f"a {size} px box at ({x0}, {y0}) leaves the {nx}x{ny} frame")
    return x0, y0


def _plain(header):
    """A header copy without the cards astropy writes itself."""
    out = header.copy()
    for key in _STRUCTURAL:
        while key in out:
            del out[key]
    return out


def _wcs(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


def shift_header(header, x0, y0, size=SIZE):
    """The SCI header of the crop: pixel positions moved, S_REGION recomputed."""
    out = _plain(header)
    for key, axis in _PIXEL_KEYS:
        if key in out:
            # rounded so that 106.24 - 81 reads 25.24 (the shift itself is exact)
            out[key] = round(float(out[key]) - (x0 if axis == "x" else y0), 9)
    if "CTYPE1" in out and "S_REGION" in out:
        w = _wcs(out)
        corners = w.all_pix2world(np.array([[-0.5, -0.5], [size - 0.5, -0.5],
                                            [size - 0.5, size - 0.5], [-0.5, size - 0.5]]), 0)
        out["S_REGION"] = "POLYGON ICRS  " + " ".join(f"{a:.9f} {d:.9f}" for a, d in corners)
    out["XCROP0"] = (x0, "crop: first column in the source file, 0-based")
    out["YCROP0"] = (y0, "crop: first row in the source file, 0-based")
    return out


def check_wcs(original, cropped, x0, y0):
    """The star's sky position (and a few others) agree between crop and source.

    Returns the largest disagreement in arcsec.
    """
    if "CTYPE1" not in original:
        return 0.0
    w0, w1 = _wcs(original), _wcs(cropped)
    sx, sy = original["CRPIX1"] - 1.0, original["CRPIX2"] - 1.0
    pts = np.array([[sx, sy], [sx - 20.3, sy + 11.7], [sx + 25.0, sy - 30.2]])
    a = w0.all_pix2world(pts, 0)
    b = w1.all_pix2world(pts - [x0, y0], 0)
    dra = (a[:, 0] - b[:, 0]) * np.cos(np.radians(a[:, 1]))
    err = float(np.max(np.hypot(dra, a[:, 1] - b[:, 1])) * 3600.0)
    if err > 1e-6:
        raise SystemExit(f"crop WCS differs from the source by {err:.2e} arcsec")
    return err


def _history(header, source, x0, y0, size=SIZE):
    """HISTORY of a crop, in lines short enough not to wrap; `source` is None for a
    transmission map (so that identical maps give identical files, stored once by git)."""
    header.add_history(f"coron tests/data/make_realcrop.py: {size}x{size} px cut of")
    header.add_history(source or "the transmission map of the exposure of this name")
    header.add_history(f"columns {x0}:{x0 + size}, rows {y0}:{y0 + size} (0-based, end excluded)")
    if source:
        header.add_history("SCI, ERR (stored float32), DQ kept; other extensions dropped")


def _gz_bytes(hdul):
    raw = io.BytesIO()
    hdul.writeto(raw)
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def crop_exposure(src, dest, size=SIZE):
    """Write the crop of one exposure; return (x0, y0, WCS check in arcsec)."""
    with fits.open(src) as h:
        sci_hdr = h["SCI"].header
        x0, y0 = crop_box(sci_hdr, h["SCI"].data.shape, size)
        box = (Ellipsis, slice(y0, y0 + size), slice(x0, x0 + size))
        primary = _plain(h[0].header)
        _history(primary, os.path.basename(src), x0, y0, size)
        new_sci = shift_header(sci_hdr, x0, y0, size)
        check = check_wcs(sci_hdr, new_sci, x0, y0)
        hdus = [fits.PrimaryHDU(header=primary),
                fits.ImageHDU(np.asarray(h["SCI"].data[box], np.float32), header=new_sci,
                              name="SCI"),
                fits.ImageHDU(np.asarray(h["ERR"].data[box], np.float32),
                              header=_plain(h["ERR"].header), name="ERR"),
                fits.ImageHDU(np.asarray(h["DQ"].data[box], np.uint32),
                              header=_plain(h["DQ"].header), name="DQ")]
        shape = h["SCI"].data.shape[-2:]
    with open(dest, "wb") as fh:
        fh.write(_gz_bytes(fits.HDUList(hdus)))
    return x0, y0, shape, check


def crop_psfmask(src, dest, x0, y0, shape, size=SIZE):
    """Write the transmission map of one exposure cut by the exposure's box."""
    with fits.open(src) as h:
        ext = next(hdu for hdu in h[1:] if hdu.name == "SCI" and hdu.data is not None
                   and hdu.data.shape[-2:] == tuple(shape))
        header = shift_header(ext.header, x0, y0, size) if "CRPIX1" in ext.header else \
            _plain(ext.header)
        if "CRPIX1" not in ext.header:
            header["XCROP0"] = (x0, "crop: first column in the source file, 0-based")
            header["YCROP0"] = (y0, "crop: first row in the source file, 0-based")
        primary = _plain(h[0].header)
        _history(primary, None, x0, y0, size)
        data = np.asarray(ext.data[..., y0:y0 + size, x0:x0 + size], np.float32)
        hdul = fits.HDUList([fits.PrimaryHDU(header=primary),
                             fits.ImageHDU(data, header=header, name="SCI")])
    with open(dest, "wb") as fh:
        fh.write(_gz_bytes(hdul))


def crop_set(src_dir, dest_dir, asn_name, size=SIZE):
    """Crop every member of one association and write its association."""
    os.makedirs(dest_dir, exist_ok=True)
    with open(os.path.join(src_dir, asn_name)) as fh:
        asn = json.load(fh)
    rows = []
    for product in asn["products"]:
        for member in product["members"]:
            name = member["expname"]
            stem = name[:-len(".fits")]
            x0, y0, shape, check = crop_exposure(os.path.join(src_dir, name),
                                                 os.path.join(dest_dir, name + ".gz"), size)
            mask = stem + "_psfmask.fits"
            if os.path.exists(os.path.join(src_dir, mask)):
                crop_psfmask(os.path.join(src_dir, mask), os.path.join(dest_dir, mask + ".gz"),
                             x0, y0, shape, size)
            member["expname"] = name + ".gz"
            rows.append((name, member["exptype"], x0, y0, check))
    with open(os.path.join(dest_dir, asn_name), "w") as fh:
        json.dump(asn, fh, indent=1)
        fh.write("\n")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="/work/shared/realdata",
                        help="folder holding aumic-f356w/ and hd106906-miri/")
    parser.add_argument("--dest", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder to write the two crop folders into")
    args = parser.parse_args(argv)
    total = 0
    for folder, asn_name, size in SETS:
        dest = os.path.join(args.dest, folder)
        for name, kind, x0, y0, check in crop_set(os.path.join(args.src, folder), dest,
                                                  asn_name, size):
            print(f"{folder}/{name}: {kind}, box origin ({x0}, {y0}), "
                  f"WCS agrees to {check:.1e} arcsec", file=sys.stderr)
        size = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest))
        total += size
        print(f"{folder}: {len(os.listdir(dest))} files, {size / 1024:.0f} kB", file=sys.stderr)
    print(f"total: {total / 1024:.0f} kB", file=sys.stderr)


if __name__ == "__main__":
    main()
