"""Every tool through click's CliRunner, plus real subprocesses and a real pipe."""

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from coron_cli.cli import align, coron3, hlsp, klip, stack
from coron_cli.cli.common import run
from tests.conftest import run_in_pty

BIN = os.path.dirname(sys.executable)


def invoke(runner, module, args, prog="coron-test", **kw):
    """Invoke a command through coron's error policy (coron_cli.cli.common.run)."""
    import click

    @click.command()
    def wrapper():
        run(module.cli, prog, args)

    return runner.invoke(wrapper, [], catch_exceptions=False, **kw)


@pytest.fixture
def chained(tmp_path, small_asn, runner, monkeypatch):
    """Run the single tools by hand on the tiny association; return the paths."""
    monkeypatch.chdir(tmp_path)
    psf = [str(tmp_path / f"psf{i}_calints.fits") for i in (3, 4, 5)]
    r = invoke(runner, stack, psf + ["-o", "tiny_nircam_psfstack.fits", "--asn-id", "x"]
               if False else psf + ["-o", "tiny_nircam_psfstack.fits"])
    assert r.exit_code == 0, r.stderr
    out = {"psfstack": tmp_path / "tiny_nircam_psfstack.fits"}
    for t in ("targ1", "targ2"):
        r = invoke(runner, align, [f"{t}_calints.fits", "tiny_nircam_psfstack.fits",
                                   "--asn-id", "c1001"])
        assert r.exit_code == 0, r.stderr
        r = invoke(runner, klip, [f"{t}_calints.fits", f"{t}_c1001_psfalign.fits",
                                  "--truncate", "50"])
        assert r.exit_code == 0, r.stderr
        out[t] = tmp_path / f"{t}_c1001_psfsub.fits"
    return out


def test_stack_product(chained):
    with fits.open(chained["psfstack"]) as h:
        assert h["SCI"].data.shape == (9, 32, 32)
        assert h["ERR"].data.shape == (9, 32, 32) and h["DQ"].data.shape == (9, 32, 32)
        refs = h["REFS"].data
        assert list(refs["file"][:4]) == ["psf3_calints.fits"] * 3 + ["psf4_calints.fits"]
        assert list(refs["integration"][:4]) == [0, 1, 2, 0]
        assert (h["DQ"].data[:, 3, 4] & 1).all()
        assert h[0].header["CRN_TOOL"] == "coron-stack"
        assert any("coron-stack" in str(c) for c in h[0].header["HISTORY"])


def test_stack_order_follows_arguments(tmp_path, make_exposure, runner):
    a = make_exposure("a_calints.fits", nint=1, scale=10.0)
    b = make_exposure("b_calints.fits", nint=2, scale=1000.0)
    out = tmp_path / "s.fits"
    r = invoke(runner, stack, [b, a, "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as h:
        peaks = h["SCI"].data.max(axis=(1, 2))
        assert peaks[0] > 500 and peaks[1] > 500 and peaks[2] < 50
        assert list(h["REFS"].data["file"]) == ["b_calints.fits"] * 2 + ["a_calints.fits"]


def test_align_product(chained, tmp_path):
    with fits.open(tmp_path / "targ1_c1001_psfalign.fits") as h:
        assert h["SCI"].data.shape == (3, 9, 32, 32)
        assert h["ERR"].data.shape == (3, 9, 32, 32)
        sh = h["SHIFTS"].data
        assert len(sh) == 27 and set(sh.columns.names) >= {"sci_int", "ref", "dx", "dy", "scale"}
        # targ1 star at +0.1,-0.2 and psf3 at +0.2,+0.3: shift = science - reference
        first = sh[(sh["sci_int"] == 0) & (sh["ref"] == 0)][0]
        assert abs(first["dx"] - (0.1 - 0.2)) < 0.05 and abs(first["dy"] - (-0.2 - 0.3)) < 0.05
        assert abs(first["scale"] - 1.0) < 0.05
        assert "STARCENX" in h["SCI"].header


def test_klip_product(chained):
    with fits.open(chained["targ1"]) as h:
        assert h["SCI"].data.shape == (3, 32, 32)
        assert h["ERR"].data.shape == (3, 32, 32)
        assert (h["DQ"].data[:, 3, 4] & 1).all()
        assert np.isfinite(h["SCI"].data).all()
        assert "TRUNCATE" in " ".join(h[0].header.keys())


def test_klip_several_truncations(chained, tmp_path, runner):
    out = tmp_path / "multi.fits"
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--truncate", "2,5,9", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as h, fits.open(chained["targ1"]) as full:
        kl = h["KLSUB"].data
        assert kl.shape == (3, 3, 32, 32)
        assert np.array_equal(h["SCI"].data, kl[0])
        assert h["KLSUB"].header["KLMODES"] == "2,5,9"
        np.testing.assert_allclose(kl[2], full["SCI"].data, atol=1e-4)


def test_klip_protect_option(chained, tmp_path, runner):
    out = tmp_path / "p0.fits"
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--truncate", "5", "--protect", "0", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as h:
        assert h["SCI"].header["KLPROTEC"] == 0
        assert h[0].header["HIERARCH CORON PROTECT"] == "off"
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--protect", "-1", "-o", str(tmp_path / "bad.fits")])
    assert r.exit_code == 2 and "--protect" in r.stderr


def test_klip_weights_option(chained, tmp_path, runner):
    out = tmp_path / "w.fits"
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--truncate", "5", "-o", str(out)])        # default: none
    assert r.exit_code == 0, r.stderr
    noise = tmp_path / "n.fits"
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--truncate", "5", "--weights", "noise", "-o", str(noise)])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as a, fits.open(noise) as b:
        assert a[0].header["HIERARCH CORON WEIGHTS"] == "none"
        assert b[0].header["HIERARCH CORON WEIGHTS"] == "noise"
        # the tiny exposures have a uniform ERR: inverse-variance weights are uniform,
        # and weighted KLIP is then classic KLIP
        np.testing.assert_allclose(a["SCI"].data, b["SCI"].data, atol=1e-4)
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--weights", "flat", "-o", str(tmp_path / "bad.fits")])
    assert r.exit_code == 2 and "--weights" in r.stderr
    assert not (tmp_path / "bad.fits").exists()


def test_klip_clamps_truncation_with_warning(chained, tmp_path, runner):
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--truncate", "100", "-o", str(tmp_path / "c.fits")])
    assert r.exit_code == 0
    assert "100 KL modes asked for, but there are 9 references" in r.stderr


def test_hlsp_products_and_names(chained, tmp_path, runner):
    r = invoke(runner, hlsp, [str(chained["targ1"]), "--annuli-width", "3",
                              "--star-flux", "900"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "targ1_c1001_snr.fits").exists()
    with fits.open(tmp_path / "targ1_c1001_contrast.fits") as h:
        t = h["CONTRAST"].data
        assert {"radius", "sigma", "npix", "contrast_5sigma"} <= set(t.columns.names)
        assert t["radius"][0] == 1.5 and np.all(np.diff(t["radius"]) == 3)
    with fits.open(tmp_path / "targ1_c1001_snr.fits") as h, fits.open(chained["targ1"]) as s:
        sci = s["SCI"].data.mean(axis=0)
        assert h["SCI"].data.shape == sci.shape


def test_run_equals_chained_tools(chained, small_asn, tmp_path, runner):
    outdir = tmp_path / "run"
    outdir.mkdir()
    r = invoke(runner, coron3, ["run", str(small_asn), "--outdir", str(outdir)])
    assert r.exit_code == 0, r.stderr
    # the default (up to 50 modes) is not warned about when there are fewer references
    assert "references; using at most" not in r.stderr
    r = invoke(runner, coron3, ["run", str(small_asn), "--outdir", str(tmp_path / "k"),
                                "--truncate", "60"])
    assert r.exit_code == 0, r.stderr
    # a choice is; the same warning for both exposures is given once
    assert r.stderr.count("60 KL modes asked for, but there are 9 references") == 1, r.stderr
    names = sorted(os.listdir(outdir))
    assert names == sorted(["tiny_nircam_psfstack.fits", "targ1_c1001_psfalign.fits",
                            "targ1_c1001_psfsub.fits", "targ2_c1001_psfalign.fits",
                            "targ2_c1001_psfsub.fits", "tiny_nircam_i2d.fits",
                            "tiny_nircam_snr.fits", "tiny_nircam_contrast.fits"])
    for name in ["tiny_nircam_psfstack.fits", "targ1_c1001_psfalign.fits",
                 "targ1_c1001_psfsub.fits", "targ2_c1001_psfsub.fits"]:
        with fits.open(outdir / name) as a, fits.open(tmp_path / name) as b:
            assert np.array_equal(a["SCI"].data, b["SCI"].data, equal_nan=True), name
            assert np.array_equal(a["ERR"].data, b["ERR"].data, equal_nan=True), name
            assert np.array_equal(a["DQ"].data, b["DQ"].data), name
    with fits.open(outdir / "tiny_nircam_i2d.fits") as h:
        assert h["SCI"].data.ndim == 2
        assert h["SCI"].header["CTYPE1"] == "RA---TAN"


def test_version_and_help(runner):
    for module in (stack, align, klip, hlsp, coron3):
        r = invoke(runner, module, ["--help"])
        assert r.exit_code == 0 and "Usage" in r.stdout
    r = invoke(runner, klip, ["--version"])
    assert r.exit_code == 0 and "0.1.0" in r.stdout


def test_refuses_to_overwrite_an_input(chained, runner, tmp_path):
    before = (tmp_path / "targ1_calints.fits").read_bytes()
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "-o", "targ1_calints.fits"])
    assert r.exit_code == 2 and "input" in r.stderr
    assert (tmp_path / "targ1_calints.fits").read_bytes() == before


def test_real_pipe_through_stdin_and_stdout(small_asn, tmp_path):
    d = tmp_path
    cmd = (f"{BIN}/coron-stack psf3_calints.fits psf4_calints.fits psf5_calints.fits -o - "
           f"| {BIN}/coron-align targ1_calints.fits - -o - "
           f"| {BIN}/coron-klip targ1_calints.fits - -o piped_psfsub.fits")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=d, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    with fits.open(d / "piped_psfsub.fits") as h:
        assert h["SCI"].data.shape == (3, 32, 32)


def test_subprocess_exit_codes(tmp_path):
    p = subprocess.run([f"{BIN}/coron-klip", "nope.fits", "nope2.fits"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "nope.fits" in p.stderr
    assert "Traceback" not in p.stderr


def test_binary_output_never_to_terminal(chained, tmp_path):
    # a pseudo-terminal on stdout: the tool must refuse
    code, out = run_in_pty([f"{BIN}/coron-hlsp", str(chained["targ1"]), "-o", "-"], tmp_path)
    assert code == 2
    assert b"terminal" in out and b"SIMPLE" not in out


def test_align_dither_method_needs_dithers(chained, tmp_path, runner):
    out = tmp_path / "d_psfalign.fits"
    r = invoke(runner, align, ["targ1_calints.fits", "tiny_nircam_psfstack.fits", "--method",
                               "dither", "-o", str(out)])
    assert r.exit_code == 2 and "dither" in r.stderr and not out.exists()
    r = invoke(runner, align, ["targ1_calints.fits", "tiny_nircam_psfstack.fits", "--method",
                               "fourier", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as h:
        assert h["SCI"].header["ALIGNMTH"] == "fourier"


def test_align_uses_dither_model_on_dithered_references(demo_data, tmp_path, runner):
    folder = demo_data["folder"]
    refs = sorted(str(folder / n) for n in os.listdir(folder) if "_ref_" in n)
    stack_out = tmp_path / "s_psfstack.fits"
    assert invoke(runner, stack, refs + ["-o", str(stack_out)]).exit_code == 0
    with fits.open(stack_out) as h:
        assert np.isfinite(h["REFS"].data["xoffset"]).all()
    out = tmp_path / "a_psfalign.fits"
    sci = str(folder / "demo_sci_roll1_calints.fits")
    r = invoke(runner, align, [sci, str(stack_out), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as h:
        # auto: the rigid fits corrected by the gain measured on the dithered references
        assert h["SCI"].header["ALIGNMTH"] == "fourier+gain"
        assert 1.05 < h["SCI"].header["ALGAIN11"] < 1.4          # ~1.2 behind the round mask
        assert set(h["SHIFTS"].data["method"]) == {"fourier+gain"}
    out2 = tmp_path / "d_psfalign.fits"
    r = invoke(runner, align, [sci, str(stack_out), "-o", str(out2), "--method", "dither"])
    assert r.exit_code == 0, r.stderr
    with fits.open(out2) as h:
        assert "dither" in h["SCI"].header["ALIGNMTH"]
