"""--background and --psfmask through the single tools (the real MIRI crop)."""

import os

import numpy as np
from astropy.io import fits
from numpy.testing import assert_allclose

from tests.helpers import invoke, miri_copy, write_map


def test_single_tools_chain_with_backgrounds_equals_coron3_run(tmp_path, runner, monkeypatch):
    """The MIRI crop by hand (stack --asn takes the reference backgrounds; align and klip get
    the science's with --background) gives the psfsub coron3 run gives."""
    from coron_cli.cli import align, klip, stack
    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    asn = miri_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    run_association(asn, str(tmp_path / "run"),
                    PipelineConfig.from_options(truncate=(9,), background="subtract"))
    r = invoke(runner, stack, ["--asn", asn, "--background", "subtract", "-o", "s.fits"])
    assert r.exit_code == 0, r.stderr
    sci = "jw01277019001_04101_00001_mirimage_calints.fits.gz"
    bkg = ["--background", "subtract",
           "--background", "jw01277022001_02101_00001_mirimage_calints.fits.gz",
           "--background", "jw01277022001_02101_00002_mirimage_calints.fits.gz"]
    r = invoke(runner, align, [sci, "s.fits", "-o", "a.fits"] + bkg)
    assert r.exit_code == 0, r.stderr
    r = invoke(runner, klip, [sci, "a.fits", "-o", "k.fits", "--truncate", "9"] + bkg)
    assert r.exit_code == 0, r.stderr
    with fits.open("k.fits") as a, \
            fits.open(tmp_path / "run" / "jw01277019001_04101_00001_mirimage_c1001_psfsub.fits") \
            as b:
        assert a[0].header["BKGSUB"] is True
        assert_allclose(a["SCI"].data, b["SCI"].data, atol=1e-6)
        assert_allclose(a["TRANSMIS"].data, b["TRANSMIS"].data)

def test_bad_background_and_psfmask_options_exit_2(tmp_path, runner, monkeypatch):
    from coron_cli.cli import align

    miri_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    sci = "jw01277019001_04101_00001_mirimage_calints.fits.gz"
    ref = "jw01194015001_04101_00001_mirimage_calints.fits.gz"
    r = invoke(runner, align, [sci, ref, "--background", "auto", "--background", "off",
                               "-o", "a.fits"])
    assert r.exit_code == 2 and "--background" in r.stderr and not os.path.exists("a.fits")
    wrong = write_map(tmp_path / "wrong_psfmask.fits", np.ones((5, 5)))
    r = invoke(runner, align, [sci, ref, "--psfmask", wrong, "-o", "a.fits"])
    assert r.exit_code == 2 and "wrong_psfmask.fits" in r.stderr and "48x48" in r.stderr
    assert not os.path.exists("a.fits")
    r = invoke(runner, align, [sci, ref, "--background", "missing.fits", "-o", "a.fits"])
    assert r.exit_code == 2 and "missing.fits" in r.stderr and not os.path.exists("a.fits")


def test_bad_zone_width_exits_2(tmp_path, runner, monkeypatch):
    """(The command-line half of tests/steps/test_psfmask_background.py's zone-width test.)"""
    from coron_cli.cli import klip

    miri_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    name = "jw01277019001_04101_00001_mirimage_calints.fits.gz"
    r = invoke(runner, klip, [name, name, "--zone-width", "2 lod x", "-o", "k.fits"])
    assert r.exit_code == 2 and "--zone-width" in r.stderr and not os.path.exists("k.fits")
