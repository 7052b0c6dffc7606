"""Unix manners and reliability, through real subprocesses, pipes, signals and make.

Exit codes, a closed pipe, interruption by SIGINT/SIGTERM at several points of
``coron3 run``, a write that fails on a file-size limit, the progress bar (on a
terminal only), ``coron3 run --json``, ``coron3 check``, examples/Makefile under
``make -j2``, and shell completion.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from astropy.io import fits

from coron_cli.cli import coron3
from coron_cli.cli.common import run
from tests.helpers import ROOT, run_in_pty

BIN = os.path.dirname(sys.executable)
MAKEFILE = os.path.join(ROOT, "examples", "Makefile")

#: one BLAS thread: steadier timings on a busy machine, and the same arithmetic in every run
ENV = {k: v for k, v in os.environ.items()
       if k not in ("FORCE_COLOR", "FORCE_TERMINAL", "NO_COLOR", "COLUMNS")}
ENV.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONDONTWRITEBYTECODE="1")

TINY_PRODUCTS = sorted(["tiny_nircam_psfstack.fits", "targ1_c1001_psfalign.fits",
                        "targ1_c1001_psfsub.fits", "targ2_c1001_psfalign.fits",
                        "targ2_c1001_psfsub.fits", "tiny_nircam_i2d.fits",
                        "tiny_nircam_snr.fits", "tiny_nircam_contrast.fits"])

_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def _hash(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _hashes(folder):
    return {n: _hash(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


def _product_hash(path):
    """Hash of a product's bytes with its creation time stamps (CRN_DATE, HISTORY) blanked."""
    with open(path, "rb") as fh:
        return hashlib.sha256(_STAMP.sub(b"X" * 19, fh.read())).hexdigest()


def _assert_complete_fits(path):
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            _ = hdu.data
        assert hdul[0].header["CRN_TOOL"]


def _leftovers(*folders):
    return [os.path.join(f, n) for f in folders for n in os.listdir(f)
            if n.startswith(".") or n.endswith(".part")]


def _tool(name):
    return os.path.join(BIN, name)


def _sigterm_caught(pid):
    """True once the process has installed its SIGTERM handler (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- medium data set

@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """The medium simulation (seed 1) and one full `coron3 run --json -v` of it (~10 s: the
    tests that use it are marked slow)."""
    from coron_cli.demo import write_simulation
    from coron_cli.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("medium")
    data = root / "data"
    data.mkdir()
    paths = write_simulation(simulate_dataset("medium", seed=1), str(data))
    inputs = _hashes(data)
    out = root / "out"
    out.mkdir()
    t0 = time.perf_counter()
    p = subprocess.run([_tool("coron3"), "run", paths["asn"], "-d", str(out), "--json", "-v"],
                       capture_output=True, env=ENV, timeout=300)
    elapsed = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr.decode()
    reference = {n: _product_hash(out / n) for n in os.listdir(out)}
    full = root / "full"
    os.rename(out, full)
    return {"root": root, "data": data, "asn": paths["asn"], "inputs": inputs,
            "reference": reference, "full": full, "run": p, "elapsed": elapsed}


@pytest.mark.slow
def test_full_run_json_and_messages(medium):
    p = medium["run"]
    summary = json.loads(p.stdout)  # stdout holds the JSON and nothing else
    kinds = [q["kind"] for q in summary["products"]]
    assert kinds == ["psfstack", "psfalign", "psfsub", "psfalign", "psfsub", "i2d", "snr",
                     "contrast"]
    assert sorted(os.path.basename(q["path"]) for q in summary["products"]) == \
        sorted(medium["reference"])
    assert summary["asn_id"] == "c1001" and summary["asn"] == medium["asn"]
    assert summary["coron_version"] == "0.1.0"
    assert summary["parameters"]["klip"]["truncate"] == [50]
    assert set(summary["timings"]) == {"stack", "align", "klip", "combine", "hlsp"}
    assert summary["elapsed"] > 0
    err = p.stderr.decode()
    # stderr is a pipe: -v timings, but no progress bar and no colour
    for step in ("stack", "align", "klip", "combine", "hlsp"):
        assert f"coron3: {step} done in " in err
    assert "\x1b" not in err and "\u2501" not in err and "Traceback" not in err
    assert medium["inputs"] == _hashes(medium["data"])


@pytest.mark.slow
@pytest.mark.parametrize("sig, when", [
    (signal.SIGINT, 0.0),          # as soon as coron handles signals
    (signal.SIGTERM, 0.0),
    (signal.SIGINT, 0.5),
    (signal.SIGTERM, 1.5),
    (signal.SIGINT, 3.0),
    (signal.SIGTERM, "stacked"),   # while the psfstack is being written
    (signal.SIGINT, "aligned"),    # while the first psfalign (69 MB) is being written
], ids=["int-at-once", "term-at-once", "int-0.5s", "term-1.5s", "int-3s", "term-writing-psfstack", "int-writing-psfalign"])
def test_interrupted_run_leaves_only_complete_products(medium, sig, when):
    out = medium["root"] / "out"  # the same folder name as the full run: same provenance
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    proc = subprocess.Popen([_tool("coron3"), "run", medium["asn"], "-d", str(out), "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                            # SIGINT may be ignored here (a background job): not in the child
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while _sigterm_caught(proc.pid) is False and time.monotonic() - t0 < 30:
            time.sleep(0.01)  # signals before coron's handlers are set are not our business
        if isinstance(when, float):
            # never so late that the run would be over
            time.sleep(max(0.0, min(when, 0.6 * medium["elapsed"]) - (time.monotonic() - t0)))
            head = b""
        else:
            head = b""
            while True:
                line = proc.stderr.readline()
                head += line
                if not line or when.encode() in line:
                    break
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (head + stderr).decode()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), stderr
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert stderr.splitlines()[-1] == f"coron3: error: {word}"
    assert "Traceback" not in stderr and stdout == b""
    assert _leftovers(out, medium["data"]) == []
    present = sorted(os.listdir(out))
    assert set(present) <= set(medium["reference"])
    # products are written in plan order: what exists is a prefix of the full run's list
    order = [q["path"] for q in json.loads(medium["run"].stdout)["products"]]
    order = [os.path.basename(q) for q in order]
    assert sorted(order[:len(present)]) == present
    for name in present:
        _assert_complete_fits(out / name)
        assert _product_hash(out / name) == medium["reference"][name], name
    if when == "aligned":
        assert "demo_nircam_f444w_psfstack.fits" in present
    assert medium["inputs"] == _hashes(medium["data"])


def _stack_into_head(medium):
    """coron-stack of the 9 references (a 14 MB product) to stdout, into 'head -c 10'."""
    refs = sorted(str(medium["data"] / n) for n in os.listdir(medium["data"])
                  if "_ref_" in n)
    p1 = subprocess.Popen([_tool("coron-stack"), *refs, "-o", "-"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=ENV)
    p2 = subprocess.Popen(["head", "-c", "10"], stdin=p1.stdout, stdout=subprocess.PIPE)
    p1.stdout.close()
    head, _ = p2.communicate(timeout=120)
    stderr = p1.stderr.read()
    p1.stderr.close()
    return p1.wait(timeout=120), head, stderr


@pytest.mark.slow
def test_closed_pipe_ends_quietly(medium):
    code, head, stderr = _stack_into_head(medium)
    assert head == b"SIMPLE  = "
    assert stderr == b""  # no message, no traceback
    assert code in (0, 141)


@pytest.mark.slow
def test_closed_pipe_is_not_reported_as_success(medium):
    code, _, stderr = _stack_into_head(medium)
    assert stderr == b"" and code == 141  # 128 + SIGPIPE, as a shell reports it


# --------------------------------------------------------------------------- failed writes

def _limit_file_size(nbytes):
    def preexec():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return preexec


def _run_with_fsize_limit(small_asn, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    before = _hashes(tmp_path)
    # the psfstack (~125 kB) fits under the limit, the first psfalign (~335 kB, aligned on
    # every integration) does not
    p = subprocess.run([_tool("coron3"), "run", str(small_asn), "-d", str(out),
                        "--align-per", "integration"],
                       capture_output=True, text=True, env=ENV, timeout=120,
                       preexec_fn=_limit_file_size(200_000))
    return p, out, before


def test_failing_write_keeps_earlier_products_and_no_partial_file(small_asn, tmp_path):
    p, out, before = _run_with_fsize_limit(small_asn, tmp_path)
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("coron3: error: ")
    assert "Traceback" not in p.stderr
    assert sorted(os.listdir(out)) == ["tiny_nircam_psfstack.fits"]
    _assert_complete_fits(out / "tiny_nircam_psfstack.fits")
    assert _leftovers(out, tmp_path) == []
    assert _hashes(tmp_path) == before




def test_failing_write_is_exit_2_naming_the_product(small_asn, tmp_path):
    p, _, _ = _run_with_fsize_limit(small_asn, tmp_path)
    assert p.returncode == 2, p.stderr
    assert "targ1_c1001_psfalign.fits: write failed" in p.stderr


def test_failed_overwrite_keeps_the_old_product(small_asn, tmp_path):
    psf = [str(tmp_path / f"psf{i}_calints.fits") for i in (3, 4, 5)]
    target = tmp_path / "old_psfstack.fits"
    target.write_bytes(b"an older product\n")
    before = _hashes(tmp_path)
    p = subprocess.run([_tool("coron-stack"), *psf, "-o", str(target)], capture_output=True,
                       text=True, env=ENV, timeout=120, preexec_fn=_limit_file_size(50_000))
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("coron-stack: error: ")
    assert _hashes(tmp_path) == before
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- progress, -q

_run_in_pty = run_in_pty


def test_progress_bar_on_a_terminal_only(small_asn, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(ENV, TERM="xterm-256color", NO_COLOR="1")
    code, text = _run_in_pty([_tool("coron3"), "run", str(small_asn), "-d", str(out)],
                             tmp_path, env)
    assert code == 0, text
    assert "\u2501".encode() in text                 # the bar
    assert b"stack tiny_nircam" in text and b"klip targ2_calints.fits" in text
    assert re.search(rb"\d/7", text)                  # 7 steps: stack, 2 x (align, klip), ...
    assert b"\x1b[3" not in text                      # NO_COLOR: no colours, still a bar
    assert sorted(os.listdir(out)) == TINY_PRODUCTS
    # -q on a terminal: nothing at all
    code, text = _run_in_pty([_tool("coron3"), "run", str(small_asn), "-d", str(out), "-q"],
                             tmp_path, env)
    assert code == 0 and text == b""


def test_quiet_run_through_pipes_prints_nothing(small_asn, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run([_tool("coron3"), "run", str(small_asn), "-d", str(out), "-q"],
                       capture_output=True, env=ENV, timeout=120)
    assert p.returncode == 0 and p.stdout == b"" and p.stderr == b""
    assert sorted(os.listdir(out)) == TINY_PRODUCTS


# --------------------------------------------------------------------------- coron3 check

def _invoke(runner, args):
    import click

    @click.command()
    def wrapper():
        run(coron3.cli, "coron3", args)

    return runner.invoke(wrapper, [], catch_exceptions=False)


def test_check_prints_the_plan_and_writes_nothing(small_asn, tmp_path, runner):
    out = tmp_path / "out"
    out.mkdir()
    before = _hashes(tmp_path)
    r = _invoke(runner, ["check", str(small_asn), "--outdir", str(out)])
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [k for k, _ in rows] == ["psfstack", "psfalign", "psfsub", "psfalign", "psfsub",
                                    "i2d", "snr", "contrast"]
    assert sorted(os.path.basename(p) for _, p in rows) == TINY_PRODUCTS
    assert all(os.path.dirname(p) == str(out) for _, p in rows)
    assert r.stderr == ""
    assert os.listdir(out) == [] and _hashes(tmp_path) == before
    r = _invoke(runner, ["check", str(small_asn), "--outdir", str(out), "-v"])
    assert r.exit_code == 0 and "targ1_calints.fits: science exposure" in r.stderr


def _edit_asn(path, edit):
    data = json.loads(path.read_text())
    edit(data["products"][0]["members"])
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case, expect", [
    ("missing member", "psf4_calints.fits"),
    ("not fits", "psf5_calints.fits: not a readable FITS file"),
    ("other size", "psf3_calints.fits: frames are 20x24 pixels but"),
    ("no psf", "has no psf members"),
    ("all flagged", "targ2_calints.fits: all pixels are flagged"),
    ("outdir that cannot be made", "output folder cannot be created"),
])
def test_check_rejects_bad_associations(small_asn, tmp_path, runner, case, expect):
    import numpy as np

    outdir = str(tmp_path)
    if case == "missing member":
        os.remove(tmp_path / "psf4_calints.fits")
    elif case == "not fits":
        (tmp_path / "psf5_calints.fits").write_text("SIMPLE = garbage\n")
    elif case == "other size":
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((2, 24, 20), np.float32),
                                                       name="SCI")]
                     ).writeto(tmp_path / "psf3_calints.fits", overwrite=True)
    elif case == "no psf":
        _edit_asn(small_asn, lambda ms: ms.__setitem__(slice(None), ms[:2]))
    elif case == "all flagged":
        with fits.open(tmp_path / "targ2_calints.fits") as h:
            h["DQ"].data[:] = 1
            h.writeto(tmp_path / "flagged.fits")
        os.replace(tmp_path / "flagged.fits", tmp_path / "targ2_calints.fits")
    elif case == "outdir that cannot be made":
        (tmp_path / "a_file").write_text("not a folder\n")
        outdir = str(tmp_path / "a_file" / "nowhere")
    before = _hashes(tmp_path)
    r = _invoke(runner, ["check", str(small_asn), "--outdir", outdir])
    assert r.exit_code == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("coron3: error: ")
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert _hashes(tmp_path) == before


# --------------------------------------------------------------------------- make, completion

def _make(tmp_path, *extra):
    out = tmp_path / "mk"
    args = ["make", "-j2", "-f", MAKEFILE, f"DIR={tmp_path}", f"OUT={out}",
            "PRODUCT=tiny_nircam", "ASN_ID=c1001", "SCIENCE=targ1 targ2",
            "REFS=psf3 psf4 psf5", f"BIN={BIN}/", "KLIP_FLAGS=-q", *extra]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_makefile_builds_in_parallel_and_rebuilds_only_what_changed(small_asn, tmp_path):
    out = tmp_path / "mk"  # made by make
    p = _make(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    # one run makes both snr and contrast: one per exposure and one for the i2d
    assert p.stdout.count("coron-hlsp") == 3 and p.stdout.count("coron-combine") == 1
    names = sorted(os.listdir(out))
    i2d = ["tiny_nircam_i2d.fits", "tiny_nircam_snr.fits", "tiny_nircam_contrast.fits"]
    assert names == sorted(["tiny_nircam_psfstack.fits"] + i2d + [
        f"{t}_c1001_{s}.fits" for t in ("targ1", "targ2")
        for s in ("psfalign", "psfsub", "snr", "contrast")])
    for name in names:
        _assert_complete_fits(out / name)
    assert "coron-" not in _make(tmp_path, "-n").stdout  # up to date
    # age everything by 100 s (keeping the order), then touch one science exposure
    for folder in (tmp_path, out):
        for name in os.listdir(folder):
            path = folder / name
            if path.is_file():
                st = path.stat()
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 100 * 10**9))
    os.utime(tmp_path / "targ1_calints.fits")
    dry = _make(tmp_path, "-n").stdout
    commands = [line for line in dry.splitlines() if "coron-" in line]
    # targ1's align, klip and hlsp, then the combination and its hlsp
    assert len(commands) == 5 and all("targ1" in c for c in commands[:3]), dry
    assert "coron-combine" in commands[3] and "tiny_nircam_i2d" in commands[4], dry
    assert "targ2_c1001_psfalign" not in dry and "coron-stack" not in dry
    before = {n: os.stat(out / n).st_mtime_ns for n in names}
    p = _make(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    changed = sorted(n for n in names if os.stat(out / n).st_mtime_ns != before[n])
    assert changed == sorted(i2d + [f"targ1_c1001_{s}.fits"
                                    for s in ("psfalign", "psfsub", "snr", "contrast")])


def test_shell_completion_scripts():
    env = dict(ENV, _CORON_KLIP_COMPLETE="bash_source")
    p = subprocess.run([_tool("coron-klip")], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0 and p.stderr == ""
    assert "_coron_klip_completion()" in p.stdout and "complete " in p.stdout
    for shell in ("zsh", "fish"):
        env = dict(ENV, _CORON3_COMPLETE=f"{shell}_source")
        p = subprocess.run([_tool("coron3")], capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 0 and "_coron3_completion" in p.stdout
    env = dict(ENV, _CORON3_COMPLETE="bash_complete", COMP_WORDS="coron3 ch", COMP_CWORD="1")
    p = subprocess.run([_tool("coron3")], capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.split() == ["plain,check"]


def test_man_pages_explain_completion():
    from coron_cli.manpages import render_all

    pages = render_all()
    assert "_CORON_KLIP_COMPLETE=bash_source" in pages["coron-klip.1"]
    assert ".SH COMPLETION" in pages["coron3.1"] and "\\-\\-json" in pages["coron3.1"]
    assert "coron3 check" in pages["coron3.1"]


def test_run_creates_a_missing_outdir_and_check_accepts_one(small_asn, tmp_path, runner):
    """coron3 run --outdir new/sub makes the folders (a user's first run); coron3 check
    writes nothing, but accepts a folder that can be made."""
    outdir = tmp_path / "new" / "products"
    r = _invoke(runner, ["check", str(small_asn), "--outdir", str(outdir)])
    assert r.exit_code == 0, r.stderr
    assert not outdir.exists()
    r = _invoke(runner, ["run", str(small_asn), "--outdir", str(outdir), "-q"])
    assert r.exit_code == 0, r.stderr
    assert any(p.name.endswith("_i2d.fits") for p in outdir.iterdir())
    assert sorted(os.listdir(outdir)) == TINY_PRODUCTS
    for name in TINY_PRODUCTS:
        _assert_complete_fits(outdir / name)


def test_members_may_be_absolute_or_climb_with_dotdot(small_asn, tmp_path, runner):
    """As in the JWST pipeline: a member name is relative to the association's folder
    ('..' allowed) or absolute. The same file named two ways is still an error."""
    data = json.loads(small_asn.read_text())
    members = data["products"][0]["members"]
    members[0]["expname"] = str(tmp_path / members[0]["expname"])           # absolute
    for m in members[1:]:
        m["expname"] = "../" + m["expname"]                                  # one folder up
    sub = tmp_path / "asn_here"
    sub.mkdir()
    asn = sub / "moved_asn.json"
    asn.write_text(json.dumps(data))
    r = _invoke(runner, ["check", str(asn), "--outdir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.stderr
    r = _invoke(runner, ["run", str(asn), "--outdir", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == TINY_PRODUCTS
    with fits.open(tmp_path / "out" / "tiny_nircam_psfstack.fits") as h:
        assert list(h["REFS"].data["file"]) == [f"psf{i}_calints.fits" for i in (3, 4, 5)
                                                for _ in range(3)]
    members.append({"exptype": "psf", "expname": str(tmp_path / "psf3_calints.fits")})
    asn.write_text(json.dumps(data))
    r = _invoke(runner, ["check", str(asn), "--outdir", str(tmp_path / "out")])
    assert r.exit_code == 2 and "listed twice" in r.stderr


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_a_signal_that_c_code_turned_into_another_error_still_ends_the_run(sig, code, word,
                                                                           runner):
    """numpy's dtype parsing, interrupted, raises TypeError("data type 'i4' not
    understood") in place of the handler's exception: the run still ends as the signal
    does (130 / 143, one line), not as an internal error."""
    import types

    import click

    from tests.helpers import invoke

    @click.command()
    def cli():
        try:
            # to this thread (a signal to the process may land on another thread and reach
            # the handler only later); the handler runs between bytecodes: wait for it
            signal.pthread_kill(threading.get_ident(), sig)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(0.001)
        except BaseException:  # noqa: BLE001 (what C code does with it)
            raise TypeError("data type 'i4' not understood") from None

    # coron takes Ctrl-C only where Python's own handler is in place: a shell's
    # background job (`cmd &`) starts with SIGINT ignored, and coron leaves it so
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = invoke(runner, types.SimpleNamespace(cli=cli), [])
    finally:
        signal.signal(signal.SIGINT, before)
    assert r.exit_code == code
    assert r.stderr.strip() == f"coron-test: error: {word}"
