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
    """JWST 3's klip takes 3-D references aligned once; so is coron's _psfalign (aligned
    once per exposure by default: a CubeModel), taken as it is."""
    from jwst.coron import KlipStep

    with datamodels.open(crop_products["aumic"]["paths"]["psfalign"][0]) as cube:
        assert isinstance(cube, datamodels.CubeModel)
        result = KlipStep.call(science, cube, truncate=5)
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


# ------------------------------------------------------------------ the other way round:
# the JWST stage's products (written by stdatamodels) given to coron's tools

def _tool(name, *args, cwd):
    import subprocess
    import sys

    module = {"coron-align": "align", "coron-klip": "klip", "coron-hlsp": "hlsp",
              "coron-combine": "combine"}[name]
    return subprocess.run([sys.executable, "-c", f"from coron_cli.cli.{module} import main; "
                           "main()", *args], cwd=cwd, capture_output=True, text=True)


def test_coron_tools_take_the_stage_s_psfstack_and_3d_psfalign(crop_products, science,
                                                                tmp_path):
    from coron_cli.products import read_product

    # a psfstack and a psfalign as the JWST stage writes them: CubeModels saved by
    # stdatamodels, the psfalign 3-D (references aligned once, jwst >= 1.16)
    with datamodels.open(crop_products["aumic"]["paths"]["psfstack"][0]) as ours:
        stack = datamodels.CubeModel(data=ours.data, err=ours.err, dq=ours.dq)
        stack.update(ours)
        stack.meta.cal_step.stack_psfs = "COMPLETE"
        stack.save(str(tmp_path / "jw_psfstack.fits"))
    with datamodels.open(crop_products["aumic"]["paths"]["psfalign"][0]) as ours:
        aligned = datamodels.CubeModel(data=ours.data, err=ours.err, dq=ours.dq)
        aligned.update(ours)
        aligned.meta.cal_step.align_psfs = "COMPLETE"
        aligned.save(str(tmp_path / "jw_psfalign.fits"))
    r = _tool("coron-align", science, "jw_psfstack.fits", "-o", "ours_psfalign.fits",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _tool("coron-klip", science, "jw_psfalign.fits", "-k", "5", "-o", "x_psfsub.fits",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sub = read_product(str(tmp_path / "x_psfsub.fits"))
    sci = read_product(science)
    assert sub.sci.shape == sci.sci.shape and np.isfinite(sub.sci).mean() > 0.9
    assert _rms(sub.sci) < 0.5 * _rms(sci.sci)                   # the star is subtracted
    with datamodels.open(str(tmp_path / "x_psfsub.fits")) as m:
        assert isinstance(m, datamodels.CubeModel) and m.meta.cal_step.klip == "COMPLETE"


def test_coron_hlsp_on_the_stage_s_psfsub_and_resampled_i2d(crop_products, science,
                                                            tmp_path):
    from astropy.io import fits
    from jwst.coron import KlipStep
    from jwst.datamodels import ModelContainer, ModelLibrary
    from jwst.pipeline.calwebb_coron3 import to_container
    from jwst.resample import ResampleStep

    psfsub = KlipStep.call(science, crop_products["aumic"]["paths"]["psfstack"][0],
                           truncate=5)
    psfsub.save(str(tmp_path / "jw_psfsub.fits"))
    r = _tool("coron-hlsp", "jw_psfsub.fits", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fits.getdata(tmp_path / "jw_snr.fits", "SCI").shape == psfsub.data.shape[1:]
    container = ModelContainer()
    for path in crop_products["aumic"]["paths"]["psfsub"]:
        for image in to_container(datamodels.open(path)):
            container.append(image)
    i2d = ResampleStep.call(ModelLibrary(container, on_disk=False), blendheaders=False)
    i2d.save(str(tmp_path / "jw_i2d.fits"))
    r = _tool("coron-hlsp", "jw_i2d.fits", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the star is the target's coordinates through the i2d's WCS, not its CRPIX
    h = fits.getheader(tmp_path / "jw_snr.fits", "SCI")
    x, y = i2d.meta.wcs.invert(i2d.meta.target.ra, i2d.meta.target.dec,
                               with_bounding_box=False)
    assert abs(h["STARCENX"] - x) < 0.05 and abs(h["STARCENY"] - y) < 0.05
    assert "TARG_RA" in h.comments["STARCENX"]
