"""coron's products open with stdatamodels as the matching JWST data model.

Skipped without the JWST packages (``pip install 'coron[jwst]'``, Python >= 3.11).
"""

import io
import os
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

datamodels = pytest.importorskip(
    "stdatamodels.jwst.datamodels",
    reason="the JWST packages are not installed (pip install 'coron[jwst]', Python >= 3.11)")

pytestmark = pytest.mark.jwst

#: kind -> (model, the cal steps marked COMPLETE)
MODELS = {
    "psfstack": ("CubeModel", {"stack_psfs"}),
    "psfalign": ("CubeModel", {"stack_psfs", "align_psfs"}),
    "psfsub": ("CubeModel", {"stack_psfs", "align_psfs", "klip"}),
    "i2d": ("ImageModel", {"stack_psfs", "align_psfs", "klip", "resample"}),
    "snr": ("ImageModel", {"stack_psfs", "align_psfs", "klip", "resample"}),
    "contrast": ("ContrastModel", {"stack_psfs", "align_psfs", "klip", "resample"}),
}
INSTRUMENT = {"aumic": ("NIRCAM", "F356W", "MASKA335R", "NRC_CORON", "V* AU Mic"),
              "miri": ("MIRI", "F1140C", "4QPM_1140", "MIR_4QPM", "HD 106906")}


def _open(path):
    """datamodels.open, failing on any schema validation warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = datamodels.open(path)
    bad = [str(w.message) for w in caught if "Validation" in type(w.category).__name__
           or "Validation" in w.category.__name__]
    assert not bad, bad
    return model


@pytest.mark.parametrize("name", ["aumic", "miri"])
def test_every_product_opens_as_its_model_with_metadata(crop_products, name):
    paths = crop_products[name]["paths"]
    instrument, filt, mask, exp_type, target = INSTRUMENT[name]
    for kind, (model_name, steps) in MODELS.items():
        for path in paths[kind]:
            where = os.path.basename(path)
            with _open(path) as m:
                assert type(m) is getattr(datamodels, model_name), where
                assert m.meta.model_type == model_name
                assert m.meta.filename == where
                assert m.meta.instrument.name == instrument
                assert m.meta.instrument.filter == filt
                assert m.meta.instrument.coronagraph == mask
                assert m.meta.exposure.type == exp_type
                assert m.meta.target.ra is not None and m.meta.target.dec is not None
                if kind != "psfstack":  # the stack is the references' (their first star)
                    assert m.meta.target.catalog_name == target, where
                assert m.meta.observation.program_number
                for step in ("stack_psfs", "align_psfs", "klip", "resample"):
                    want = "COMPLETE" if step in steps else None
                    assert getattr(m.meta.cal_step, step) == want, (where, step)
                if kind in ("psfstack", "psfalign", "psfsub"):
                    # the exposure's pointing and frame, kept from its SCI header
                    assert m.meta.pointing.ra_v1 is not None and m.meta.pointing.pa_v3 is not None
                    assert m.meta.wcsinfo.roll_ref is not None
                    assert m.meta.wcsinfo.s_region.startswith("POLYGON ICRS")
                if kind == "contrast":
                    continue
                with fits.open(path) as h:
                    assert m.data.shape == h["SCI"].data.shape
                    if "ERR" in h:
                        assert m.meta.bunit_err == m.meta.bunit_data == "MJy/sr"


@pytest.mark.parametrize("name", ["aumic", "miri"])
def test_gwcs_matches_the_fits_wcs(crop_products, name):
    """meta.wcs (the gwcs of the ASDF extension) gives the sky of the FITS WCS, its SIP
    distortion included, and goes back (resample needs the inverse)."""
    for kind in ("psfstack", "psfalign", "psfsub", "i2d", "snr"):
        path = crop_products[name]["paths"][kind][0]
        with fits.open(path) as h, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = h["SCI"].header
            w = WCS(header, naxis=2)
            ny, nx = h["SCI"].data.shape[-2:]
        cx, cy = header.get("STARCENX", (nx - 1) / 2.0), header.get("STARCENY", (ny - 1) / 2.0)
        # the frame, and pixels 150 beyond it, where a SIP distortion has grown
        x = np.array([cx, 0.0, nx - 1.0, 0.0, nx - 1.0, -150.0, nx + 150.0])
        y = np.array([cy, 0.0, 0.0, ny - 1.0, ny - 1.0, -150.0, ny + 150.0])
        want = w.all_pix2world(np.column_stack([x, y]), 0)
        with datamodels.open(path) as m:
            ra, dec = m.meta.wcs(x, y, with_bounding_box=False)
            bx, by = m.meta.wcs.invert(ra, dec, with_bounding_box=False)
        scale = np.hypot(*w.pixel_scale_matrix[:, 0])
        dra = (ra - want[:, 0]) * np.cos(np.radians(want[:, 1]))
        assert np.hypot(dra, dec - want[:, 1]).max() < 1e-3 * scale, kind  # < 0.001 pixel
        # back through AP/BP, the header's own polynomial inverse of the distortion
        assert np.abs(bx - x)[:5].max() < 0.01 and np.abs(by - y)[:5].max() < 0.01, kind
        if kind == "psfsub":
            assert header["CTYPE1"] == "RA---TAN-SIP" and w.sip is not None  # it was there


def test_read_metadata_of_every_product(crop_products):
    """stpipe reads a path's metadata lazily, from the ASDF extension and the headers."""
    paths = crop_products["aumic"]["paths"]
    for kind, (model_name, _) in MODELS.items():
        meta = datamodels.read_metadata(paths[kind][0])
        assert meta["meta.model_type"] == model_name
        assert meta["meta.instrument.name"] == "NIRCAM"
        assert meta["meta.exposure.type"] == "NRC_CORON"


def test_contrast_model_table(crop_products):
    path = crop_products["aumic"]["paths"]["contrast"][0]
    with datamodels.ContrastModel(path) as m:
        table = m.contrast_table
        assert table.dtype.names == ("radius", "sigma")
        assert table.dtype["radius"] == np.float32 and table.dtype["sigma"] == np.float32
        assert len(table) > 5 and np.isfinite(table["sigma"]).any()
    with fits.open(path) as h:
        np.testing.assert_array_equal(table["radius"], np.float32(h["CRN_CONTRAST"].data["radius"]))


def test_without_gwcs_the_minimal_asdf_opens_too(crop_products, tmp_path, monkeypatch):
    """The dependency-free ASDF extension (no gwcs): valid ASDF, opens, read_metadata works."""
    import asdf

    from coron_cli import jwst
    from coron_cli.products import read_product, write_product

    raw = jwst._asdf_bytes_minimal()
    with asdf.open(io.BytesIO(raw)) as af:
        assert af.tree["asdf_library"]["name"] == "coron"
    monkeypatch.setattr(jwst, "_gwcs", lambda header, shape: None)
    path = str(tmp_path / "plain_psfsub.fits")
    write_product(read_product(crop_products["miri"]["paths"]["psfsub"][0]), path)
    with fits.open(path) as h:
        assert bytes(h["ASDF"].data["ASDF_METADATA"][0]) == raw
    with _open(path) as m:
        assert type(m) is datamodels.CubeModel and m.meta.instrument.name == "MIRI"
        assert m.meta.wcs is None
    assert datamodels.read_metadata(path)["meta.cal_step.klip"] == "COMPLETE"
