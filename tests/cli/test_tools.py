"""Every tool through click's CliRunner, plus real subprocesses and a real pipe."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from coron_cli.cli import align, combine, coron3, hlsp, klip, stack
from tests.helpers import invoke, option_flags, run_in_pty

BIN = os.path.dirname(sys.executable)


@pytest.fixture
def chained(tmp_path, small_asn, runner, monkeypatch):
    """Run the single tools by hand on the tiny association; return the paths."""
    monkeypatch.chdir(tmp_path)
    psf = [str(tmp_path / f"psf{i}_calints.fits") for i in (3, 4, 5)]
    r = invoke(runner, stack, psf + ["-o", "tiny_nircam_psfstack.fits", "--asn-id", "x"]
               if False else psf + ["-o", "tiny_nircam_psfstack.fits"])
    assert r.exit_code == 0, r.stderr
    out = {"psfstack": tmp_path / "tiny_nircam_psfstack.fits"}
    for t, other in (("targ1", "targ2"), ("targ2", "targ1")):
        r = invoke(runner, align, [f"{t}_calints.fits", "tiny_nircam_psfstack.fits",
                                   "--asn-id", "c1001"])
        assert r.exit_code == 0, r.stderr
        # the other roll as a reference, as coron3 run takes it from the association
        r = invoke(runner, klip, [f"{t}_calints.fits", f"{t}_c1001_psfalign.fits",
                                  "--truncate", "50", "--roll-ref", f"{other}_calints.fits"])
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
        # registered once on the mean of the 3 integrations (the default): 3-D
        assert h["SCI"].data.shape == (9, 32, 32)
        assert h["ERR"].data.shape == (9, 32, 32)
        sh = h["SHIFTS"].data
        assert len(sh) == 27 and set(sh.columns.names) >= {"sci_int", "ref", "dx", "dy", "scale"}
        # targ1 star at +0.1,-0.2 and psf3 at +0.2,+0.3: shift = science - reference
        first = sh[(sh["sci_int"] == 0) & (sh["ref"] == 0)][0]
        assert abs(first["dx"] - (0.1 - 0.2)) < 0.05 and abs(first["dy"] - (-0.2 - 0.3)) < 0.05
        assert abs(first["scale"] - 1.0) < 0.05
        # every pair: psf3, psf4, psf5 (3 integrations each) at (+0.2,+0.3), (-0.3,+0.1),
        # (0,-0.25); the science integrations all at (+0.1,-0.2)
        assert list(sh["sci_int"]) == [i for i in range(3) for _ in range(9)]
        assert list(sh["ref"]) == list(range(9)) * 3
        ref_xy = np.repeat([[0.2, 0.3], [-0.3, 0.1], [0.0, -0.25]], 3, axis=0)[sh["ref"]]
        np.testing.assert_allclose(sh["dx"], 0.1 - ref_xy[:, 0], atol=0.05)
        np.testing.assert_allclose(sh["dy"], -0.2 - ref_xy[:, 1], atol=0.05)
        np.testing.assert_allclose(sh["scale"], 1.0, atol=0.05)
        # the star where the science's CRPIX puts it (0-based)
        assert h["SCI"].header["STARCENX"] == 15.5 and h["SCI"].header["STARCENY"] == 15.5
        assert h[0].header["ASN_ID"] == "c1001" and h[0].header["CRN_TOOL"] == "coron-align"
        assert h["SCI"].data.dtype == np.dtype(">f4")
        assert np.isfinite(h["SCI"].data).all()


def test_klip_product(chained):
    with fits.open(chained["targ1"]) as h:
        assert h["SCI"].data.shape == (3, 32, 32)
        assert h["ERR"].data.shape == (3, 32, 32)
        assert (h["DQ"].data[:, 3, 4] & 1).all()
        assert np.isfinite(h["SCI"].data).all()
        assert h["SCI"].data.dtype == np.dtype(">f4") and h["DQ"].data.dtype == np.uint32
        # the parameter as asked, the modes as used (9 references), the star at CRPIX - 1
        assert h[0].header["HIERARCH CORON TRUNCATE"] == "50"
        assert h["SCI"].header["KLMODES"] == "9" and h["SCI"].header["KLPROTEC"] == 0
        assert (h["SCI"].header["STARCENX"], h["SCI"].header["STARCENY"]) == (15.5, 15.5)
        with fits.open(chained["targ1"].parent / "targ1_calints.fits") as s:
            raw = s["SCI"].data
            # the DQ is the science's; the ERR adds the references' noise to the science's
            assert np.array_equal(h["DQ"].data, s["DQ"].data)
            assert (h["ERR"].data >= s["ERR"].data).all() and np.isfinite(h["ERR"].data).all()
            # the star (peak ~900) is gone: the residual is about the unit noise
            assert np.std(h["SCI"].data) < 1.5 < 0.02 * np.nanstd(raw)


def test_klip_several_truncations(chained, tmp_path, runner):
    out = tmp_path / "multi.fits"
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "--truncate", "2,5,10", "-o", str(out),
                              "--roll-ref", "targ2_calints.fits"])
    assert r.exit_code == 0, r.stderr
    with fits.open(out) as h, fits.open(chained["targ1"]) as full:
        kl = h["KLSUB"].data
        assert kl.shape == (3, 3, 32, 32)
        assert np.array_equal(h["SCI"].data, kl[0])
        assert h["KLSUB"].header["KLMODES"] == "2,5,10"
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
    with fits.open(chained["targ1"]) as s:
        mean = s["SCI"].data.astype(np.float64).mean(axis=0)
        err_mean = np.sqrt((s["ERR"].data.astype(np.float64) ** 2).sum(axis=0)) / 3
    yy, xx = np.indices(mean.shape)
    radius = np.hypot(xx - 15.5, yy - 15.5)
    with fits.open(tmp_path / "targ1_c1001_contrast.fits") as h:
        t = h["CRN_CONTRAST"].data
        assert {"radius", "sigma", "npix", "contrast_5sigma"} <= set(t.columns.names)
        assert t["radius"][0] == 1.5 and np.all(np.diff(t["radius"]) == 3)
        assert h[0].header["STARFLUX"] == 900.0 and h[0].header["STARFMTH"] == "peak"
        # annuli 3 pixels wide about the star: their pixel count and the (sample)
        # standard deviation of the mean residual in them (inside the flagged pixel's ring)
        for row in t[t["radius"] < 15]:
            ring = (radius >= row["radius"] - 1.5) & (radius < row["radius"] + 1.5)
            assert row["npix"] == ring.sum()
            np.testing.assert_allclose(row["sigma"], np.std(mean[ring], ddof=1), rtol=1e-4)
        # the 5-sigma contrast: the Student-t factor of 2 pi r / fwhm elements (fwhm 2)
        from coron_cli.core import student_t_factor

        np.testing.assert_allclose(
            t["contrast_5sigma"],
            student_t_factor(2 * np.pi * t["radius"] / 2.0) * t["sigma"] / 900.0, rtol=1e-10)
    with fits.open(tmp_path / "targ1_c1001_snr.fits") as h:
        assert h["SCI"].data.shape == mean.shape
        # SCI / ERR of the mean over the integrations
        np.testing.assert_allclose(h["SCI"].data, mean / err_mean, rtol=1e-5)
        assert h["SCI"].header["SNRMETH"] == "ratio"


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
        hdr = h["SCI"].header
        assert h["SCI"].data.shape == (32, 32) and h["ERR"].data.shape == (32, 32)
        assert np.isfinite(h["SCI"].data).all() and (h["ERR"].data > 0).all()
        assert hdr["NCOMBINE"] == 2 and (hdr["STARCENX"], hdr["STARCENY"]) == (15.5, 15.5)
        # north up, east left, the input's pixel scale, the star at CRPIX
        assert (hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"]) == \
            (-1.75e-5, 0.0, 0.0, 1.75e-5)
        assert (hdr["CRPIX1"], hdr["CRPIX2"]) == (16.5, 16.5)
        # the i2d of two exposures is quieter than either exposure's mean residual
        with fits.open(outdir / "targ1_c1001_psfsub.fits") as one:
            assert np.std(h["SCI"].data) < np.std(one["SCI"].data.mean(axis=0))


def test_version_and_help(runner):
    for module in (stack, align, klip, hlsp, coron3):
        r = invoke(runner, module, ["--help"])
        assert r.exit_code == 0 and "Usage" in r.stdout
    r = invoke(runner, klip, ["--version"])
    assert r.exit_code == 0 and "0.1.0" in r.stdout
    assert r.stdout.strip().endswith("(coron) 0.1.0")


TOOLS = {"coron-stack": (stack, []), "coron-align": (align, []), "coron-klip": (klip, []),
         "coron-combine": (combine, []), "coron-hlsp": (hlsp, []),
         "coron3 run": (coron3, ["run"]), "coron3 check": (coron3, ["check"]),
         "coron3 demo": (coron3, ["demo"])}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_documents_every_option_and_argument(runner, tool):
    """--help lists every visible flag of the command's click parameters, each with its
    help text, names the arguments in its usage line, and shows the defaults it says."""
    import click

    module, sub = TOOLS[tool]
    command = module.cli.commands[sub[0]] if sub else module.cli
    r = invoke(runner, module, sub + ["--help"])
    assert r.exit_code == 0 and r.stderr == ""
    text = r.stdout
    flags, args = option_flags(command)
    usage = text.split("\n\n")[0].replace("\n", " ")
    assert usage.startswith("Usage: ") and " [OPTIONS]" in usage
    for metavar in args:
        assert metavar in usage, (tool, metavar, usage)
    words = " ".join(text.split())
    for flag in flags:
        assert re.search(rf"(^|[\s,/\[]){re.escape(flag)}([\s,/=\]]|$)", text), (tool, flag)
    ctx = click.Context(command)
    for p in command.get_params(ctx):
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help, (tool, p.name, "has no help text")
            # the first words of its help text (click rewraps the lines)
            start = " ".join(p.help.split()[:4]).split("\b")[0].strip()
            assert start in words, (tool, p.name, start)
            # its default, where the option shows one, as the help says it
            shown = re.search(r"\[default: ([^\]]*)\]", p.get_help_record(ctx)[1])
            if shown:
                assert f"[default: {shown.group(1)}]" in words, (tool, p.name, shown.group(1))
    for flag in ("--help", "-v", "--verbose", "-q", "--quiet", "--debug", "--version"):
        if sub and flag == "--version":
            continue
        assert flag in flags, (tool, flag)


def test_coron3_help_lists_its_subcommands(runner):
    r = invoke(runner, coron3, ["--help"])
    assert r.exit_code == 0
    commands = r.stdout.split("Commands:")[1].split()
    for name, sub in coron3.cli.commands.items():
        if not sub.hidden:
            assert name in commands, name


def test_refuses_to_overwrite_an_input(chained, runner, tmp_path):
    before = (tmp_path / "targ1_calints.fits").read_bytes()
    r = invoke(runner, klip, ["targ1_calints.fits", "targ1_c1001_psfalign.fits",
                              "-o", "targ1_calints.fits"])
    assert r.exit_code == 2 and "input" in r.stderr
    assert (tmp_path / "targ1_calints.fits").read_bytes() == before


def test_real_pipe_through_stdin_and_stdout(chained, small_asn, tmp_path):
    d = tmp_path
    cmd = (f"{BIN}/coron-stack psf3_calints.fits psf4_calints.fits psf5_calints.fits -o - "
           f"| {BIN}/coron-align targ1_calints.fits - -o - "
           f"| {BIN}/coron-klip targ1_calints.fits - -o piped_psfsub.fits "
           f"--roll-ref targ2_calints.fits")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=d, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    with fits.open(d / "piped_psfsub.fits") as h:
        assert h["SCI"].data.shape == (3, 32, 32)
        # bit for bit what the same tools give through files (the chained fixture; the
        # default truncation is its --truncate 50)
        with fits.open(chained["targ1"]) as f:
            for ext in ("SCI", "ERR", "DQ"):
                assert np.array_equal(h[ext].data, f[ext].data, equal_nan=True), ext


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
        # ALIGNMTH lists the methods of the SHIFTS table
        assert set(h["SCI"].header["ALIGNMTH"].split(",")) == set(h["SHIFTS"].data["method"])
    # both land on the simulator's star positions (measured: 0.012 and 0.019 px at most,
    # for shifts of ~0.37 px)
    ds = demo_data["dataset"]
    ref_xy = np.concatenate([e.star_xy for e in ds.exposures if e.exptype == "psf"])
    sci_xy = next(e for e in ds.exposures if e.name == "demo_sci_roll1_calints.fits").star_xy
    assert [os.path.basename(r) for r in refs] == [e.name for e in ds.exposures
                                                  if e.exptype == "psf"]
    for path in (out, out2):
        with fits.open(path) as h:
            t = h["SHIFTS"].data
        true = sci_xy[t["sci_int"]] - ref_xy[t["ref"]]
        assert np.hypot(t["dx"] - true[:, 0], t["dy"] - true[:, 1]).max() < 0.05, path
