"""coron-combine, and every product of coron3 run made again by the single tools.

The i2d of ``coron3 run`` is ``combine_step`` of the psfsub products it has in
memory; ``coron-combine`` reads the same products from their files. The
end-to-end tests run ``coron3 run`` on the simulated data, chain coron-stack,
coron-align, coron-klip (per science exposure), coron-combine and coron-hlsp
by hand with the same options, and compare every product's data: images with
``np.array_equal`` (bit for bit, NaN where NaN), tables column by column, the
same way. Only provenance (CRN_DATE, the parameters, HISTORY) may differ.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from coron_cli.cli import align, combine, coron3, hlsp, klip, stack
from tests.helpers import policy_invoker

BIN = os.path.dirname(sys.executable)
PROGS = {stack: "coron-stack", align: "coron-align", klip: "coron-klip", hlsp: "coron-hlsp",
         combine: "coron-combine", coron3: "coron3"}


@pytest.fixture
def invoke(runner):
    """``invoke(module, args)``: the command under coron's error policy, in a CliRunner."""
    with policy_invoker(runner, PROGS) as _invoke:
        yield _invoke


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    return result


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _listing(folder):
    out = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(root, name), folder))
    return out


# ---------------------------------------------------------------------------------------------
# the tiny association of conftest: psfsubs made by hand


@pytest.fixture
def psfsubs(tmp_path, small_asn, invoke, monkeypatch):
    """The two psfsubs of the tiny association, made with the single tools in tmp_path."""
    monkeypatch.chdir(tmp_path)
    psf = [f"psf{i}_calints.fits" for i in (3, 4, 5)]
    _ok(invoke(stack, psf + ["-o", "tiny_psfstack.fits"]))
    out = []
    for t in ("targ1", "targ2"):
        _ok(invoke(align, [f"{t}_calints.fits", "tiny_psfstack.fits", "--asn-id", "c1001"]))
        _ok(invoke(klip, [f"{t}_calints.fits", f"{t}_c1001_psfalign.fits", "--truncate", "5"]))
        out.append(str(tmp_path / f"{t}_c1001_psfsub.fits"))
    return out


def test_help_lists_the_options(invoke):
    r = _ok(invoke(combine, ["--help"]))
    for opt in ("PSFSUB...", "-o, --output", "--noise-width", "[default: 2", "-v, --verbose",
                "-q, --quiet", "--debug", "--version", "--help", "north-up",
                "inverse-variance"):
        assert opt in r.stdout, opt
    # through the console script: in one process, click's version option (shared by every
    # command through options.common) keeps the program name of the first --version asked
    p = subprocess.run([f"{BIN}/coron-combine", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("coron-combine (coron) "), p.stdout


def test_no_arguments_prints_help_and_exits_2(invoke):
    r = invoke(combine, [])
    assert r.exit_code == 2 and "Usage" in r.stderr
    # the whole help, on stderr, and nothing on stdout
    assert r.stderr == _ok(invoke(combine, ["--help"])).stdout and r.stdout == ""


def test_combines_with_the_default_name(psfsubs, invoke, tmp_path):
    _ok(invoke(combine, [os.path.basename(p) for p in psfsubs]))
    path = tmp_path / "targ1_c1001_i2d.fits"
    with fits.open(path) as h:
        assert h[0].header["CRN_TOOL"] == "coron3 combine"
        assert h[0].header["HIERARCH CORON NOISE WIDTH"] == 2
        assert h["SCI"].data.shape == (32, 32) and h["ERR"].data.shape == (32, 32)
        assert h["DQ"].data.shape == (32, 32)
        assert h["SCI"].header["CTYPE1"] == "RA---TAN"
        assert h["SCI"].header["STARCENX"] == 15.5 and h["SCI"].header["NCOMBINE"] == 2
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_equals_combine_step_and_leaves_inputs_unchanged(psfsubs, invoke, tmp_path):
    from coron_cli.products import read_product
    from coron_cli.steps import CombineConfig, combine_step

    before = {p: _sha(p) for p in psfsubs}
    _ok(invoke(combine, psfsubs + ["--noise-width", "3", "-o", "out_i2d.fits"]))
    assert {p: _sha(p) for p in psfsubs} == before
    ref = combine_step([read_product(p) for p in psfsubs], CombineConfig(noise_width=3))
    with fits.open("out_i2d.fits") as h:
        assert h[0].header["HIERARCH CORON NOISE WIDTH"] == 3
        assert np.array_equal(h["SCI"].data, ref.sci, equal_nan=True)
        assert np.array_equal(h["ERR"].data, np.asarray(ref.err, np.float32), equal_nan=True)
        assert np.array_equal(h["DQ"].data, ref.dq)
    # the annulus width reaches the error calibration
    _ok(invoke(combine, psfsubs + ["-o", "w2_i2d.fits"]))
    with fits.open("out_i2d.fits") as a, fits.open("w2_i2d.fits") as b:
        assert np.array_equal(a["SCI"].data, b["SCI"].data, equal_nan=True)
        assert not np.array_equal(a["ERR"].data, b["ERR"].data, equal_nan=True)


def test_old_spelling_of_the_noise_width_still_works(psfsubs, invoke):
    """--annuli-width is --noise-width's old name (a warning), as in the other tools."""
    r = _ok(invoke(combine, psfsubs + ["--annuli-width", "3", "-o", "old_i2d.fits"]))
    assert "--annuli-width is deprecated" in r.stderr
    with fits.open("old_i2d.fits") as h:
        assert h[0].header["HIERARCH CORON NOISE WIDTH"] == 3


def test_reads_standard_input_and_writes_standard_output(psfsubs, invoke, tmp_path):
    _ok(invoke(combine, [psfsubs[0], "-o", "file_i2d.fits"]))
    with open(psfsubs[0], "rb") as fh:
        r = _ok(invoke(combine, ["-", "-o", "-"], input=fh.read()))
    (tmp_path / "piped_i2d.fits").write_bytes(r.stdout_bytes)
    with fits.open("file_i2d.fits") as a, fits.open("piped_i2d.fits") as b:
        for ext in ("SCI", "ERR", "DQ"):
            assert np.array_equal(a[ext].data, b[ext].data, equal_nan=True), ext


def test_real_pipe_from_coron_klip(psfsubs, tmp_path):
    cmd = (f"{BIN}/coron-klip targ1_calints.fits targ1_c1001_psfalign.fits --truncate 5 -o - "
           f"| {BIN}/coron-combine - targ2_c1001_psfsub.fits -o piped_i2d.fits")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and "coron-combine" not in p.stderr
    p = subprocess.run([f"{BIN}/coron-combine"] + psfsubs + ["-o", "file_i2d.fits"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    with fits.open(tmp_path / "file_i2d.fits") as a, fits.open(tmp_path / "piped_i2d.fits") as b:
        for ext in ("SCI", "ERR", "DQ"):
            assert np.array_equal(a[ext].data, b[ext].data, equal_nan=True), ext


# ---------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming the file, no traceback, no output


def _crop(src, dst, n=30):
    """A psfsub with smaller frames (same headers)."""
    with fits.open(src) as h:
        for hdu in h[1:]:
            if hdu.is_image and hdu.data is not None:
                hdu.data = hdu.data[..., :n, :n]
        h.writeto(dst)
    return str(dst)


def _bad_cases(tmp_path, psfsubs):
    """(name, args, the file the message must name, a word of the problem)."""
    good = psfsubs[0]
    text = tmp_path / "notes_psfsub.fits"
    text.write_text("not a FITS file\n")
    small = _crop(psfsubs[1], tmp_path / "small_psfsub.fits")
    return [
        ("missing file", [good, "missing_psfsub.fits"], "missing_psfsub.fits", "no such file"),
        ("not FITS", [good, str(text)], "notes_psfsub.fits", "fits"),
        ("an exposure, not a psfsub", [good, "targ2_calints.fits"], "targ2_calints.fits",
         "not a psfsub"),
        ("a psfstack", ["tiny_psfstack.fits", good], "tiny_psfstack.fits", "coron-stack"),
        ("a psfalign", [good, "targ2_c1001_psfalign.fits"], "targ2_c1001_psfalign.fits",
         "psfsub"),
        ("frames of another size", [good, small], "small_psfsub.fits", "30x30"),
        ("two inputs from stdin", ["-", "-"], "-", "standard input"),
    ]


def test_bad_input_exit_2_one_line_no_output(psfsubs, invoke, tmp_path):
    cases = _bad_cases(tmp_path, psfsubs)
    hashes = {n: _sha(tmp_path / n) for n in os.listdir(tmp_path)
              if os.path.isfile(tmp_path / n)}
    for name, args, culprit, word in cases:
        before = _listing(tmp_path)
        r = invoke(combine, args + ["-o", "out_i2d.fits"])
        assert r.exit_code == 2, (name, r.exit_code, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout, name
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (name, r.stderr)
        assert lines[0].startswith("coron-combine: error: "), (name, lines[0])
        assert culprit in lines[0] and word.lower() in lines[0].lower(), (name, lines[0])
        assert _listing(tmp_path) == before, name
        assert not os.path.exists(tmp_path / "out_i2d.fits"), name
    assert {n: _sha(tmp_path / n) for n in hashes} == hashes


def test_refuses_to_overwrite_an_input(psfsubs, invoke):
    before = _sha(psfsubs[1])
    r = invoke(combine, psfsubs + ["-o", psfsubs[1]])
    assert r.exit_code == 2 and "is also an input" in r.stderr
    assert _sha(psfsubs[1]) == before


def test_bad_input_through_the_console_script(psfsubs, tmp_path):
    small = _crop(psfsubs[1], tmp_path / "small_psfsub.fits")
    for args, culprit in ((["nope_psfsub.fits"], "nope_psfsub.fits"),
                          ([psfsubs[0], small], "small_psfsub.fits"),
                          ([psfsubs[0], "targ1_calints.fits"], "targ1_calints.fits")):
        p = subprocess.run([f"{BIN}/coron-combine", *args, "-o", "x_i2d.fits"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and culprit in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        assert not os.path.exists(tmp_path / "x_i2d.fits")


def test_throughput_tables_are_not_combined_and_say_so(psfsubs, invoke, tmp_path):
    from astropy.table import Table

    sub = tmp_path / "with_tp_psfsub.fits"
    shutil.copy(psfsubs[0], sub)
    with fits.open(sub, mode="update") as h:
        h.append(fits.table_to_hdu(Table({"radius": [4.0], "throughput": [0.5]})))
        h[-1].name = "THROUGHPUT"
    r = _ok(invoke(combine, [str(sub), psfsubs[1], "-o", "tp_i2d.fits"]))
    assert "THROUGHPUT" in r.stderr and "with_tp_psfsub.fits" in r.stderr
    with fits.open("tp_i2d.fits") as h:
        assert "THROUGHPUT" not in h


# ---------------------------------------------------------------------------------------------
# every product of coron3 run, by hand


def _compare_products(run_dir, hand_dir, names, skip_tables=()):
    """Every HDU's data of every named product equal in both folders (bit for bit)."""
    for name in names:
        a_path, b_path = os.path.join(run_dir, name), os.path.join(hand_dir, name)
        if name.endswith(".ecsv"):
            from astropy.table import Table

            _tables_equal(Table.read(a_path), Table.read(b_path), name)
            continue
        with fits.open(a_path) as a, fits.open(b_path) as b:
            assert [h.name for h in a] == [h.name for h in b], name
            for ha, hb in zip(a, b):
                where = f"{name}[{ha.name}]"
                if ha.name in skip_tables:
                    continue
                if ha.is_image:
                    if ha.data is None:
                        assert hb.data is None, where
                        continue
                    assert ha.data.dtype == hb.data.dtype, where
                    assert np.array_equal(ha.data, hb.data, equal_nan=True), where
                    for key in ("STARCENX", "STARCENY", "CRPIX1", "CRPIX2", "CRVAL1",
                                "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "NCOMBINE",
                                "KLMODES", "KLPROTEC", "ALIGNMTH"):
                        assert ha.header.get(key) == hb.header.get(key), (where, key)
                else:
                    from astropy.table import Table

                    _tables_equal(Table.read(ha), Table.read(hb), where)


def _tables_equal(ta, tb, where):
    assert ta.colnames == tb.colnames, where
    for col in ta.colnames:
        ca, cb = np.asarray(ta[col]), np.asarray(tb[col])
        if ca.dtype.kind == "f":
            assert np.array_equal(ca, cb, equal_nan=True), (where, col)
        else:
            assert np.array_equal(ca, cb), (where, col)


def _run_and_chain(invoke, asn_path, folder, *, run_opts=(), klip_opts=(), combine_opts=(),
                   hlsp_opts=()):
    """coron3 run into folder/run and the single tools into folder/hand; their products."""
    from coron_cli.asn import read_asn
    from coron_cli.products import exposure_root

    asn = read_asn(str(asn_path))
    inputs = {p: _sha(p) for prod in asn.products for p in prod.science + prod.psf}
    run_dir, hand = os.path.join(folder, "run"), os.path.join(folder, "hand")
    _ok(invoke(coron3, ["run", asn_path, "--outdir", run_dir, "-q", *run_opts]))
    os.makedirs(hand)
    names = []
    for prod in asn.products:
        stack_name = f"{prod.name}_psfstack.fits"
        _ok(invoke(stack, [*prod.psf, "-o", os.path.join(hand, stack_name), "-q"]))
        names.append(stack_name)
        subs = []
        for sci in prod.science:
            root = f"{exposure_root(sci)}_{asn.asn_id}"
            _ok(invoke(align, [sci, os.path.join(hand, stack_name), "--asn-id", asn.asn_id,
                               "-o", os.path.join(hand, f"{root}_psfalign.fits"), "-q"]))
            # the other rolls as references, as coron3 run takes them from the association
            rolls = [a for o in prod.science if o != sci for a in ("--roll-ref", o)]
            _ok(invoke(klip, [sci, os.path.join(hand, f"{root}_psfalign.fits"), *klip_opts,
                              *rolls, "-o", os.path.join(hand, f"{root}_psfsub.fits"), "-q"]))
            names += [f"{root}_psfalign.fits", f"{root}_psfsub.fits"]
            subs.append(os.path.join(hand, f"{root}_psfsub.fits"))
        i2d = os.path.join(hand, f"{prod.name}_i2d.fits")
        _ok(invoke(combine, [*subs, *combine_opts, "-o", i2d, "-q"]))
        _ok(invoke(hlsp, [i2d, *hlsp_opts, "-o", os.path.join(hand, f"{prod.name}_snr.fits"),
                          "--contrast-output", os.path.join(hand, f"{prod.name}_contrast.fits"),
                          "-q"]))
        names += [f"{prod.name}_i2d.fits", f"{prod.name}_snr.fits",
                  f"{prod.name}_contrast.fits"]
    assert {p: _sha(p) for p in inputs} == inputs, "an input changed"
    assert sorted(os.listdir(run_dir)) == sorted(os.listdir(hand))
    assert set(names) <= set(os.listdir(run_dir))
    names += sorted(set(os.listdir(run_dir)) - set(names))  # detections, ecsv
    return run_dir, hand, names


def test_coron3_run_equals_single_tools_on_the_demo(demo_data, invoke, tmp_path):
    """The classic small simulation with the defaults: every product, i2d included."""
    run_dir, hand, names = _run_and_chain(invoke, demo_data["paths"]["asn"], str(tmp_path))
    assert len(names) == 8
    _compare_products(run_dir, hand, names)


def test_coron3_run_equals_single_tools_with_options(demo_data, invoke, tmp_path):
    """Options that reach every step: truncations, annuli, zones, sky, star flux, detection."""
    offaxis = demo_data["paths"]["offaxis"]
    klip_opts = ["--truncate", "5,10", "--noise-width", "3", "--zone-width", "none",
                 "--sky-order", "0", "--protect", "4"]
    hlsp_opts = ["--noise-width", "3", "--psf-offaxis", offaxis, "--snr-method", "mawet",
                 "--detect", "5", "--format", "ecsv"]
    run_opts = klip_opts + hlsp_opts[2:]
    run_dir, hand, names = _run_and_chain(
        invoke, demo_data["paths"]["asn"], str(tmp_path), run_opts=run_opts,
        klip_opts=klip_opts, combine_opts=["--noise-width", "3"], hlsp_opts=hlsp_opts)
    assert {"demo_nircam_f444w_detections.fits", "demo_nircam_f444w_detections.ecsv",
            "demo_nircam_f444w_contrast.ecsv"} <= set(names)
    with fits.open(os.path.join(hand, "demo_nircam_f444w_i2d.fits")) as h:
        assert h[0].header["HIERARCH CORON NOISE WIDTH"] == 3
    _compare_products(run_dir, hand, names)


def test_coron3_run_equals_single_tools_with_transmission_maps(tmp_path, invoke):
    """The bar-mask set-up, whose exposures have a transmission map beside them: the
    psfsubs and the i2d carry TRANSMIS (rotated and combined in the i2d)."""
    from coron_cli.demo import write_simulation
    from coron_cli.simulate import simulate_dataset

    data = tmp_path / "data"
    data.mkdir()
    paths = write_simulation(simulate_dataset("small", seed=1, setup="nircam-bar-5bar"),
                             str(data))
    run_dir, hand, names = _run_and_chain(invoke, paths["asn"], str(tmp_path))
    i2d = next(n for n in names if n.endswith("_i2d.fits"))
    with fits.open(os.path.join(hand, i2d)) as h:
        assert "TRANSMIS" in h
        # the bar's map, rotated north-up: a transmission (0 to 1), low behind the bar
        t = h["TRANSMIS"].data
        assert t.shape == h["SCI"].data.shape
        seen = np.isfinite(t)
        assert seen.mean() > 0.8
        assert (t[seen] >= 0).all() and (t[seen] <= 1 + 1e-6).all()
        assert t[seen].min() < 0.1 and np.median(t[seen]) > 0.5
    _compare_products(run_dir, hand, names)


@pytest.fixture(scope="module")
def contrast_runs(demo_data, tmp_path_factory):
    """coron3 run --contrast and the single tools with --contrast (klip) and --psf-offaxis."""
    from click.testing import CliRunner

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    offaxis = demo_data["paths"]["offaxis"]
    folder = str(tmp_path_factory.mktemp("contrast"))
    with policy_invoker(runner, PROGS) as _invoke:
        out = _run_and_chain(
            _invoke, demo_data["paths"]["asn"], folder,
            run_opts=["--contrast", "--psf-offaxis", offaxis],
            klip_opts=["--contrast", "--psf-offaxis", offaxis],
            hlsp_opts=["--psf-offaxis", offaxis])
    return out


@pytest.mark.slow
def test_contrast_run_psfsubs_and_i2d_images_equal_single_tools(contrast_runs):
    """With --contrast every product but the i2d's THROUGHPUT table (and what the contrast
    table computes from it) is reproduced by hand."""
    run_dir, hand, names = contrast_runs
    _compare_products(run_dir, hand, [n for n in names if not n.endswith(
        ("_i2d.fits", "_contrast.fits"))])
    i2d = next(n for n in names if n.endswith("_i2d.fits"))
    with fits.open(os.path.join(run_dir, i2d)) as a, fits.open(os.path.join(hand, i2d)) as b:
        for ext in ("SCI", "ERR", "DQ"):
            assert np.array_equal(a[ext].data, b[ext].data, equal_nan=True), ext
        for sub in (n for n in names if n.endswith("_psfsub.fits")):
            with fits.open(os.path.join(hand, sub)) as h:
                assert "THROUGHPUT" in h, sub


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "coron3 run --contrast makes the i2d's THROUGHPUT table from the fake planets' KLIP "
    "residuals (steps.combine_injections), which stay in memory: coron-klip --contrast "
    "writes only the per-exposure THROUGHPUT table, not the injected and recovered fakes, so "
    "coron-combine cannot combine them and coron-hlsp has no throughput for the "
    "calibrated contrast"))
def test_contrast_run_i2d_throughput_and_contrast_table_by_hand(contrast_runs):
    run_dir, hand, names = contrast_runs
    _compare_products(run_dir, hand, [n for n in names if n.endswith(
        ("_i2d.fits", "_contrast.fits"))])
