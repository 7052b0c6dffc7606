"""What makes a coron product a JWST product: data model, metadata, ASDF extension.

coron always writes its products itself, as plain FITS (:mod:`coron_cli.products`);
this module only decides the JWST-specific parts of them, so that
``stdatamodels.jwst.datamodels.open`` opens every product as the matching data
model and a JWST pipeline step can be called on its path:

- ``DATAMODL`` from the dimensionality of ``SCI`` (:data:`DATAMODELS`):
  ``ImageModel`` (``_i2d``, ``_snr``), ``CubeModel`` (``_psfstack``, ``_psfsub``,
  exposures), ``QuadModel`` (``_psfalign``); ``ContrastModel`` for ``_contrast``.
- ``FILENAME``: the product's own file name (none on standard output).
- ``S_PSFSTK``, ``S_PSFALI``, ``S_KLIP``, ``S_RESAMP`` = ``COMPLETE`` for the steps
  run to make the product (:func:`cal_step_cards`, set with the provenance).
- ``BUNIT`` of ``ERR``: that of ``SCI``; ``S_REGION`` of ``SCI``: the footprint of
  the product's own frame, from its celestial WCS (:func:`s_region`).
- The ``CONTRAST`` table as the ``ContrastModel`` schema has it (``radius``,
  ``sigma``, float32); coron's full table (every column) as ``CRN_CONTRAST``
  (:func:`contrast_hdus`), which :func:`coron_cli.products.read_contrast_table`
  reads (in memory, a product's ``tables["CONTRAST"]`` is the full table).
- An ``ASDF`` extension (:func:`asdf_hdu`), which stpipe reads a product's metadata
  from before it runs a step on a path. Its tree holds no FITS hash, so the FITS
  headers stay the one source of the metadata (edit a header with astropy and
  the data model sees it). Without the optional JWST packages it is a minimal ASDF
  document written here (no dependency). With ``asdf`` and ``gwcs`` importable
  (``pip install 'coron[jwst]'``) it also holds ``meta.wcs``: a gwcs made from the
  celestial FITS WCS of ``SCI`` (its TAN projection and SIP distortion), which
  JWST's ``resample`` needs.

Nothing here imports jwst or stdatamodels; ``asdf`` and ``gwcs`` are imported
only when a product is written, and only if installed.
"""

import functools
import io
import logging
import re
import warnings

import numpy as np

log = logging.getLogger("coron")

__all__ = ["DATAMODELS", "CONTRAST_FULL", "CONTRAST_SCHEMA", "datamodel_for", "cal_step_cards",
           "jwst_headers", "s_region", "contrast_hdus", "asdf_hdu", "carry_exposure_extensions"]

#: JWST data model by the number of dimensions of SCI.
DATAMODELS = {2: "ImageModel", 3: "CubeModel", 4: "QuadModel"}

#: Extension with coron's full contrast table (CONTRAST keeps the ContrastModel columns).
CONTRAST_FULL = "CRN_CONTRAST"

#: The columns of ContrastModel's contrast_table (stdatamodels contrast.schema).
CONTRAST_SCHEMA = (("radius", np.float32), ("sigma", np.float32))

#: Cal-step keywords a coron tool completes (the chain of JWST steps it stands for).
_CAL_STEPS = {
    "coron-stack": ("S_PSFSTK",),
    "coron-align": ("S_PSFSTK", "S_PSFALI"),
    "coron-klip": ("S_PSFSTK", "S_PSFALI", "S_KLIP"),
    "coron3 combine": ("S_RESAMP",),
}
_CAL_STEP_TITLES = {"S_PSFSTK": "PSF references stacked", "S_PSFALI": "PSF references aligned",
                    "S_KLIP": "PSF subtracted (KLIP)", "S_RESAMP": "resampled (north-up)"}

# keywords that name the file a header came from, not the product
_FILE_KEYS = ("FILENAME",)


def datamodel_for(product):
    """The JWST data model name of a product, or None when no model fits.

    By the dimensionality of SCI; a product without SCI is a ``ContrastModel``
    when it holds a CONTRAST table.
    """
    if product.sci is not None:
        return DATAMODELS.get(np.ndim(product.sci))
    if "CONTRAST" in (product.tables or {}):
        return "ContrastModel"
    return None


def cal_step_cards(header, tool):
    """Mark the JWST cal steps that `tool` completes, in place (``S_KLIP = 'COMPLETE'``...)."""
    for key in _CAL_STEPS.get(tool, ()):
        header[key] = ("COMPLETE", _CAL_STEP_TITLES[key])
    return header


def jwst_headers(product, filename=None):
    """(primary, SCI, ERR) headers of a product as written: copies, with DATAMODL,
    FILENAME (`filename`, or none) and the ERR's BUNIT."""
    from astropy.io import fits

    primary = product.primary.copy()
    model = datamodel_for(product)
    if model:
        primary["DATAMODL"] = (model, "JWST data model (stdatamodels)")
    elif "DATAMODL" in primary:
        del primary["DATAMODL"]  # the input's model is not this product's
    for key in _FILE_KEYS:
        if filename:
            primary[key] = (filename, "name of this file")
        elif key in primary:
            del primary[key]
    sci_header = product.sci_header
    if product.sci is not None and np.ndim(product.sci) >= 2:
        region = s_region(sci_header, np.shape(product.sci))
        if region:
            sci_header = sci_header.copy()
            sci_header["S_REGION"] = (region, "spatial extent of the observation")
    err_header = fits.Header()
    if product.err is not None and "BUNIT" in sci_header:
        err_header["BUNIT"] = (sci_header["BUNIT"], "units of the error array")
    return primary, sci_header, err_header


def s_region(sci_header, shape):
    """The frame's footprint on the sky as JWST's S_REGION ('POLYGON ICRS ra dec ...'),
    from the celestial FITS WCS (pixel edges, SIP included); None without one."""
    from .products import _celestial_wcs

    w = _celestial_wcs(sci_header)
    if w is None:
        return None
    ny, nx = shape[-2:]
    corners = np.array([[-0.5, -0.5], [nx - 0.5, -0.5], [nx - 0.5, ny - 0.5], [-0.5, ny - 0.5]])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sky = w.all_pix2world(corners, 0)
    except Exception:
        return None
    if not np.isfinite(sky).all():
        return None
    return "POLYGON ICRS " + " ".join(f"{ra % 360.0:.9f} {dec:.9f}" for ra, dec in sky)


def contrast_hdus(table):
    """The HDUs of a contrast table: CONTRAST (ContrastModel's columns) and CRN_CONTRAST.

    A table without both ``radius`` and ``sigma`` is written as it is, as CONTRAST.
    """
    from astropy.io import fits
    from astropy.table import Table

    def hdu(t, name):
        h = fits.table_to_hdu(t)
        h.name = name
        return h

    if not all(name in table.colnames for name, _ in CONTRAST_SCHEMA):
        return [hdu(table, "CONTRAST")]
    short = Table()
    for name, dtype in CONTRAST_SCHEMA:
        short[name] = np.asarray(table[name], dtype=dtype)
        if table[name].unit is not None:
            short[name].unit = table[name].unit
    full = hdu(table, CONTRAST_FULL)
    full.header["COMMENT"] = "coron's contrast table; CONTRAST holds its radius and sigma"
    return [hdu(short, "CONTRAST"), full]


# --------------------------------------------------------------------------- ASDF extension

_MINIMAL_ASDF = ("#ASDF 1.0.0\n#ASDF_STANDARD 1.5.0\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
                 "--- !core/asdf-1.1.0\n"
                 "asdf_library: !core/software-1.0.0 {{name: coron, version: '{version}'}}\n"
                 "...\n")


def _asdf_bytes_minimal():
    from . import __version__

    return _MINIMAL_ASDF.format(version=__version__).encode("ascii")


def _sip_distortion(sip, models):
    """The SIP polynomials as an astropy model of the pixel offsets from CRPIX (u, v) ->
    (u + A, v + B), with AP/BP as its inverse; None without the inverse polynomials."""
    if sip is None or sip.a is None or sip.b is None or sip.ap is None or sip.bp is None:
        return None

    def plus(coeffs, axis):
        """u + A(u, v) (axis 0) or v + B(u, v) (axis 1) as a Polynomial2D."""
        coeffs = np.array(coeffs, dtype=np.float64)
        degree = coeffs.shape[0] - 1
        coeffs[1 - axis, axis] += 1.0  # a[i, j] multiplies u**i v**j
        return models.Polynomial2D(degree, **{f"c{i}_{j}": coeffs[i, j]
                                              for i in range(degree + 1)
                                              for j in range(degree + 1 - i)})

    forward = models.Mapping((0, 1, 0, 1)) | plus(sip.a, 0) & plus(sip.b, 1)
    forward.inverse = models.Mapping((0, 1, 0, 1)) | plus(sip.ap, 0) & plus(sip.bp, 1)
    return forward


@functools.lru_cache(maxsize=1)
def _gwcs_installed():
    """Whether gwcs and asdf can be imported (found, not imported)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("gwcs", "asdf"))


def _gwcs(sci_header, shape):
    """A gwcs of the frame (detector -> ICRS) from the celestial FITS WCS, or None.

    The TAN projection of the header with its SIP distortion when the header gives
    both ways of it (A/B and AP/BP); None when the header has no celestial WCS or
    gwcs is not installed.
    """
    from .products import _celestial_wcs

    if not _gwcs_installed():
        return None       # before astropy.modeling and .coordinates (0.1-0.15 s to import)
    w = _celestial_wcs(sci_header)
    if w is None or [c[4:8] for c in w.wcs.ctype] != ["-TAN", "-TAN"]:
        return None
    try:
        import astropy.units as u
        from astropy.coordinates import ICRS
        from astropy.modeling import models
        from gwcs import WCS as GWCS
        from gwcs import coordinate_frames as cf
    except ImportError:
        return None
    crpix = np.asarray(w.wcs.crpix, dtype=np.float64) - 1.0  # 0-based pixels
    cd = np.asarray(w.wcs.get_pc(), dtype=np.float64) * np.asarray(w.wcs.cdelt)[:, None]
    lonpole = float(w.wcs.lonpole) if np.isfinite(w.wcs.lonpole) else 180.0
    transform = models.Shift(-crpix[0], name="crpix1") & models.Shift(-crpix[1], name="crpix2")
    sip = _sip_distortion(w.sip, models)
    if sip is not None:
        transform = transform | sip
    transform = (transform | models.AffineTransformation2D(matrix=cd, name="cd_matrix")
                 | models.Pix2Sky_TAN()
                 | models.RotateNative2Celestial(*w.wcs.crval, lonpole, name="crval"))
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=ICRS(), name="world", unit=(u.deg, u.deg))
    gw = GWCS(forward_transform=transform, input_frame=detector, output_frame=sky)
    ny, nx = shape[-2:]
    gw.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return gw


def _asdf_bytes(product, sci_header):
    """The ASDF document of the extension: with meta.wcs when asdf and gwcs can make it."""
    if product.sci is None or np.ndim(product.sci) < 2:
        return _asdf_bytes_minimal()
    try:
        gw = _gwcs(sci_header, np.shape(product.sci))
        if gw is None:
            return _asdf_bytes_minimal()
        import asdf

        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            asdf.AsdfFile({"meta": {"wcs": gw}}).write_to(buf, all_array_storage="inline")
        return _sorted_extensions(buf.getvalue())
    except Exception as exc:  # an incompatible asdf/gwcs must never stop a product
        log.debug("no gwcs in the ASDF extension (%s: %s)", type(exc).__name__, exc)
        return _asdf_bytes_minimal()


def _sorted_extensions(raw):
    """The ASDF document with its ``history: extensions:`` list in a fixed order.

    asdf lists the extensions it used in the order of a set, which changes from one
    Python process to the next (string hashing): sorted, the same product has the
    same bytes whichever process wrote it.
    """
    head, sep, rest = raw.partition(b"\nhistory:\n  extensions:\n")
    if not sep:
        return raw
    end = re.search(rb"(?m)^(?! |-)", rest)  # the next top-level key
    block, tail = (rest[:end.start()], rest[end.start():]) if end else (rest, b"")
    items = re.split(rb"(?m)^  - ", block)
    if items[0].strip():
        return raw  # not the block-style list asdf writes
    items = sorted(items[1:])
    return head + sep + b"".join(b"  - " + item for item in items) + tail


def asdf_hdu(product, sci_header=None):
    """The ``ASDF`` extension (one row, column ``ASDF_METADATA``), as JWST products have."""
    from astropy.io import fits

    raw = _asdf_bytes(product, product.sci_header if sci_header is None else sci_header)
    data = np.frombuffer(raw, dtype=np.uint8)[None, :]
    column = fits.Column(name="ASDF_METADATA", format=f"{data.shape[1]}B", array=data)
    return fits.BinTableHDU.from_columns([column], name="ASDF")


# --------------------------------------------------------------------------- carried arrays

#: Image extensions of a JWST exposure carried into a product of the same shape.
_VARIANCES = ("VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")


def carry_exposure_extensions(product, exposure):
    """`product` with the exposure's VAR_* arrays, AREA and INT_TIMES table (a copy).

    As JWST's klip step keeps them in its ``_psfsub`` (a copy of the science
    exposure): the variance components of the science data (what ``resample``'s
    ``ivm`` weighting reads, VAR_RNOISE), the pixel area map and the integration
    times. Arrays are carried only when their shape is the product's (VAR_*) or
    its frame's (AREA); the empty VAR_* of co-added exposures are left out.
    """
    from dataclasses import replace

    images = dict(product.images or {})
    tables = dict(product.tables or {})
    src_images = exposure.images or {}
    shape = np.shape(product.sci)
    for name in _VARIANCES:
        entry = src_images.get(name)
        if entry is not None and np.shape(entry[0]) == shape and name not in images:
            images[name] = (np.asarray(entry[0], dtype=np.float32), entry[1])
    area = src_images.get("AREA")
    if area is not None and np.shape(area[0]) == shape[-2:] and "AREA" not in images:
        images["AREA"] = area
    if "INT_TIMES" in (exposure.tables or {}) and "INT_TIMES" not in tables:
        tables["INT_TIMES"] = exposure.tables["INT_TIMES"]
    return replace(product, images=images, tables=tables)
