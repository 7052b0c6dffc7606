"""JWST pipeline steps run on coron's products (klip, resample), offline.

Neither step has reference files, so CRDS is never asked; stpipe's parameter
reference files are turned off (STPIPE_DISABLE_CRDS_STEPPARS). Skipped without the
JWST packages (``pip install 'coron[jwst]'``, Python >= 3.11).
"""

import numpy as np
import pytest

datamodels = pytest.importorskip(
    "stdatamodels.jwst.datamodels",
    reason="the JWST packages are not installed (pip install 'coron[jwst]', Python >= 3.11)")
pytest.importorskip("jwst.coron", reason="the jwst package is not installed "
                                         "(pip install 'coron[jwst]', Python >= 3.11)")

pytestmark = pytest.mark.jwst


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "True")


@pytest.fixture
def science(crop_products, tmp_path):
    """The AU Mic science exposure written by coron (the crop has no ASDF extension, which
    stpipe needs of a path), with the products of the run."""
    from coron_cli.products import read_product, write_product

    path = str(tmp_path / "aumic_sci_calints.fits")
    write_product(read_product(crop_products["aumic"]["science"]), path)
    return path


def _rms(a):
    a = np.asarray(a, dtype=np.float64)
    return float(np.sqrt(np.nanmean((a - np.nanmean(a)) ** 2)))


def test_klip_step_on_coron_psfstack(crop_products, science):
    from jwst.coron import KlipStep

    stack = crop_products["aumic"]["paths"]["psfstack"][0]
    result = KlipStep.call(science, stack, truncate=5)
    assert isinstance(result, datamodels.CubeModel)
    assert result.meta.cal_step.klip == "COMPLETE"
    with datamodels.open(science) as sci:
        assert result.data.shape == sci.data.shape
        assert np.isfinite(result.data).all()
        assert _rms(result.data) < 0.5 * _rms(sci.data)  # the star is subtracted


def test_klip_step_on_coron_aligned_references(crop_products, science):
    """JWST 3's klip takes 3-D references aligned once; coron's _psfalign holds a layer of
    them for each science integration (QuadModel): each layer is such a cube."""
    from jwst.coron import KlipStep

    with datamodels.open(crop_products["aumic"]["paths"]["psfalign"][0]) as quad:
        assert isinstance(quad, datamodels.QuadModel)
        layer = datamodels.CubeModel(data=quad.data[0], err=quad.err[0], dq=quad.dq[0])
        layer.update(quad)
    result = KlipStep.call(science, layer, truncate=5)
    assert result.meta.cal_step.klip == "COMPLETE"
    with datamodels.open(science) as sci:
        assert np.isfinite(result.data).all()
        assert _rms(result.data) < 0.5 * _rms(sci.data)


def test_resample_step_on_coron_psfsubs(crop_products):
    """What calwebb_coron3 does with its psfsubs: every integration an ImageModel, resampled
    together; coron's psfsubs carry what it needs (gwcs, S_REGION, wcsinfo)."""
    from jwst.datamodels import ModelContainer, ModelLibrary
    from jwst.pipeline.calwebb_coron3 import to_container
    from jwst.resample import ResampleStep

    container = ModelContainer()
    for path in crop_products["aumic"]["paths"]["psfsub"]:
        for image in to_container(datamodels.open(path)):
            container.append(image)
    assert len(container) == 2
    result = ResampleStep.call(ModelLibrary(container, on_disk=False), blendheaders=False)
    assert isinstance(result, datamodels.ImageModel)
    assert result.meta.cal_step.resample == "COMPLETE"
    assert result.meta.wcs is not None and result.meta.wcsinfo.s_region
    assert min(result.data.shape) >= 64 and np.isfinite(result.data).mean() > 0.5
    # the star (coron's i2d reference point) falls inside the resampled frame
    with datamodels.open(crop_products["aumic"]["paths"]["i2d"][0]) as i2d:
        ra, dec = i2d.meta.wcs(*[(n - 1) / 2.0 for n in i2d.data.shape[::-1]])
    x, y = result.meta.wcs.invert(ra, dec)
    ny, nx = result.data.shape
    assert 0 <= x < nx and 0 <= y < ny
