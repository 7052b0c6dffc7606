"""coron3 batch: many associations as dask tasks, on a local cluster of worker processes or
on a scheduler started separately. Products equal those of coron3 run; a broken
association is reported and the others finish; usage errors, missing dask, --help, the
progress bar and Ctrl-C.

Every process a test starts (workers, a scheduler, coron3 itself) is bounded by a timeout
and stopped at its end."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import click
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from coron_cli.cli import coron3
from tests.helpers import invoke, modules_loaded, option_flags, run_in_pty

BIN = os.path.dirname(sys.executable)
ENV = {k: v for k, v in os.environ.items()
       if k not in ("FORCE_COLOR", "FORCE_TERMINAL", "NO_COLOR", "COLUMNS")}
ENV.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONDONTWRITEBYTECODE="1")

#: options given to every run here, so that they are seen to reach the workers (with
#: --psf-offaxis FILE --detect 5, the off-axis PSF, sent once to every worker)
OPTS = ["--truncate", "5,10", "--noise-width", "3", "--detect", "5"]

BATCH = coron3.cli.commands["batch"]
RUN = coron3.cli.commands["run"]


# --------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def asns(demo_data, tmp_path_factory):
    """Three different associations of the small simulation (with planets, without, with
    six of the nine references) and a broken one, in a folder of their own; and the
    products of coron3 run on each of the good ones (reference/<name>/)."""
    folder = tmp_path_factory.mktemp("batch")
    with open(demo_data["paths"]["asn"]) as fh:
        full = json.load(fh)
    with open(os.path.join(demo_data["folder"], "demo_noplanet_asn.json")) as fh:
        noplanet = json.load(fh)
    fewer = json.loads(json.dumps(full))
    members = fewer["products"][0]["members"]
    psf = [m for m in members if m["exptype"] == "psf"]
    fewer["products"][0]["members"] = [m for m in members if m not in psf[6:]]
    paths = {}
    for name, asn in (("planets", full), ("noplanet", noplanet), ("sixrefs", fewer)):
        for m in asn["products"][0]["members"]:  # members by absolute path: any folder
            m["expname"] = os.path.join(str(demo_data["folder"]), os.path.basename(m["expname"]))
        paths[name] = folder / f"{name}_asn.json"
        paths[name].write_text(json.dumps(asn))
    paths["broken"] = folder / "broken_asn.json"
    paths["broken"].write_text('{"asn_id": "c1001", "products": [')
    opts = [*OPTS, "--psf-offaxis", demo_data["paths"]["offaxis"]]
    runner = _runner()
    for name in ("planets", "noplanet", "sixrefs"):
        r = invoke(runner, coron3, ["run", paths[name], "-d", folder / "reference" / f"{name}_asn",
                                    "-q", *opts], prog="coron3")
        assert r.exit_code == 0, r.stderr
    return {"folder": folder, "paths": paths, "reference": folder / "reference", "opts": opts}


def _runner():
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates them
        return CliRunner()


def _assert_same_products(folder, reference):
    """The same files, with the same arrays and table columns (NaN equal to NaN)."""
    assert sorted(os.listdir(folder)) == sorted(os.listdir(reference))
    for name in os.listdir(reference):
        if name.endswith(".ecsv"):
            a, b = Table.read(folder / name), Table.read(reference / name)
            assert a.colnames == b.colnames, name
            for col in b.colnames:
                np.testing.assert_array_equal(a[col], b[col], err_msg=f"{name} {col}")
            continue
        with fits.open(folder / name) as a, fits.open(reference / name) as b:
            assert [h.name for h in a] == [h.name for h in b], name
            for x, y in zip(a, b):
                if x.data is None or y.data is None:
                    assert x.data is None and y.data is None, (name, x.name)
                elif x.data.dtype.names:
                    for col in y.data.dtype.names:
                        np.testing.assert_array_equal(x.data[col], y.data[col],
                                                      err_msg=f"{name} {x.name} {col}")
                else:
                    np.testing.assert_array_equal(x.data, y.data, err_msg=f"{name} {x.name}")


def _leftovers(folder):
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
            if n.startswith(".") or n.endswith(".part")]


# --------------------------------------------------------------------------- local cluster

@pytest.fixture(scope="module")
def local_batch(asns):
    """One batch on a local cluster of 2 worker processes: the three associations with the
    broken one in the middle, --json."""
    p = asns["paths"]
    out = asns["folder"] / "out"
    t0 = time.monotonic()
    r = invoke(_runner(), coron3, ["batch", p["planets"], p["broken"], p["noplanet"],
                                   p["sixrefs"], "-d", out, "--workers", "2", "--json",
                                   *asns["opts"]],
               prog="coron3")
    return {"result": r, "out": out, "elapsed": time.monotonic() - t0}


def test_a_batch_equals_the_single_runs(asns, local_batch):
    for name in ("planets", "noplanet", "sixrefs"):
        _assert_same_products(local_batch["out"] / f"{name}_asn",
                              asns["reference"] / f"{name}_asn")
    # the three data sets differ: a product in the wrong folder would not pass
    with fits.open(local_batch["out"] / "planets_asn" / "demo_nircam_f444w_i2d.fits") as a, \
            fits.open(local_batch["out"] / "sixrefs_asn" / "demo_nircam_f444w_i2d.fits") as b:
        assert not np.array_equal(a["SCI"].data, b["SCI"].data, equal_nan=True)
    assert _leftovers(local_batch["out"]) == []


def test_a_broken_association_is_reported_and_the_others_finish(asns, local_batch):
    r = local_batch["result"]
    assert r.exit_code == 1, r.stderr
    broken = str(asns["paths"]["broken"])
    lines = r.stderr.splitlines()
    errors = [line for line in lines if line.startswith("coron3: error: ")]
    assert errors == [f"coron3: error: {broken}: not valid JSON (line 1, column 34: "
                      "Expecting value)"]
    assert "Traceback" not in r.stderr
    # the summary table on stderr, in the order given
    table = lines[lines.index(next(x for x in lines if x.startswith("asn "))):]
    assert re.split(r"\s+", table[0]) == ["asn", "status", "seconds", "products"]
    assert [re.split(r"\s+", row)[:2] for row in table[1:5]] == [
        ["planets_asn", "ok"], ["broken_asn", "failed"], ["noplanet_asn", "ok"],
        ["sixrefs_asn", "ok"]]
    assert [re.split(r"\s+", row)[3] for row in table[1:5]] == ["10", "0", "10", "10"]
    assert re.fullmatch(r"4 association\(s\): 3 ok, 1 failed; [\d.]+ s", table[5])
    assert not os.path.exists(local_batch["out"] / "broken_asn")
    # --json on stdout
    summary = json.loads(r.stdout)
    assert summary["tool"] == "coron3 batch" and summary["workers"] == 2
    assert (summary["ok"], summary["failed"]) == (3, 1)
    assert summary["parameters"]["klip"]["truncate"] == [5, 10]
    by_name = {os.path.basename(a["asn"]): a for a in summary["asns"]}
    assert [os.path.basename(a["asn"]) for a in summary["asns"]] == [
        "planets_asn.json", "broken_asn.json", "noplanet_asn.json", "sixrefs_asn.json"]
    assert by_name["broken_asn.json"]["status"] == "failed"
    assert by_name["broken_asn.json"]["error"].startswith(f"{broken}: not valid JSON")
    ok = by_name["sixrefs_asn.json"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["asn_id"] == "c1001"
    assert ok["outdir"] == str(local_batch["out"] / "sixrefs_asn")
    assert [p["kind"] for p in ok["products"]] == [
        "psfstack", "psfalign", "psfsub", "psfalign", "psfsub", "i2d", "snr", "contrast",
        "detections", "detections_ecsv"]
    assert summary["parameters"]["detect"]["threshold"] == 5.0
    assert all(os.path.isfile(p["path"]) for p in ok["products"])
    # the two ASNs that ran in parallel took about as long as one each
    print(f"batch of 4 on 2 workers: {local_batch['elapsed']:.1f} s")


# --------------------------------------------------------------------------- usage

@pytest.mark.parametrize("args, message", [
    (["nothing_asn.json"], "nothing_asn.json: no such file"),
    (["no*_asn.json"], "no*_asn.json: matches no file"),
    (["empty"], "empty: folder holds no association (*_asn.json)"),
    (["a_asn.json", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
     "give --scheduler or --workers, not both (see 'coron3 --help')"),
    (["a_asn.json", "d/a_asn.json"], "d/a_asn.json: has the name of a_asn.json: both would "
                                     "write into ./a_asn; rename one"),
    (["a_asn.json", "--truncate", "0"], "--truncate: must be positive integers, not '0'"),
    (["a_asn.json", "--workers", "0"], "Invalid value for '--workers': 0 is not in the range "
                                       "x>=1. (see 'coron3 --help')"),
    (["a_asn.json", "--contrast"], "--contrast: needs --psf-offaxis FILE (the unocculted PSF "
                                   "to inject)"),
    (["a_asn.json", "--scheduler", "head"], "--scheduler: cannot connect to head (missing port "
                                            "number in address 'head')"),
])
def test_usage_errors_are_one_line_exit_2_before_any_worker(runner, tmp_path, monkeypatch,
                                                            args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_asn.json").write_text("{}")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a_asn.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    t0 = time.monotonic()
    r = invoke(runner, coron3, ["batch", *args], prog="coron3")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"coron3: error: {message}"]
    assert r.stdout == "" and sorted(os.listdir(tmp_path)) == ["a_asn.json", "d", "empty"]
    assert time.monotonic() - t0 < 10  # no cluster was started


@pytest.mark.slow  # the connection is tried for 10 s
def test_an_unreachable_scheduler_is_a_usage_error(runner, tmp_path):
    (tmp_path / "a_asn.json").write_text("{}")
    r = invoke(runner, coron3, ["batch", tmp_path / "a_asn.json", "-d", tmp_path / "out",
                                "--scheduler", "tcp://127.0.0.1:9"], prog="coron3")
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("coron3: error: --scheduler: cannot connect to "
                               "tcp://127.0.0.1:9 (")


def test_without_dask_a_one_line_error_names_the_extra(runner, small_asn, tmp_path,
                                                       monkeypatch):
    for name in list(sys.modules):
        if name == "dask" or name.startswith(("dask.", "distributed")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask", None)          # import dask -> ImportError
    monkeypatch.setitem(sys.modules, "distributed", None)
    r = invoke(runner, coron3, ["batch", small_asn, "-d", tmp_path / "out"], prog="coron3")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        "coron3: error: coron3 batch: needs dask, the optional 'dask' extra: "
        "pip install 'coron[dask]'"]
    assert not (tmp_path / "out").exists()
    # the other commands do not need it
    r = invoke(runner, coron3, ["run", small_asn, "-d", tmp_path / "run", "-q", "-k", "2"],
               prog="coron3")
    assert r.exit_code == 0, r.stderr


def test_dask_is_imported_only_by_the_batch():
    mods = modules_loaded("import coron_cli.cli.coron3, coron_cli.batch, coron_cli.pipeline")
    assert sorted(m for m in mods if m.split(".")[0] in ("dask", "distributed")) == []


# --------------------------------------------------------------------------- help

def test_help_lists_every_option(runner):
    r = invoke(runner, coron3, ["batch", "--help"], prog="coron3")
    assert r.exit_code == 0 and r.stderr == ""
    text, words = r.stdout, " ".join(r.stdout.split())
    assert text.startswith("Usage: coron3 batch [OPTIONS] ASN...")
    flags, _ = option_flags(BATCH)
    for flag in flags:
        assert re.search(rf"(^|[\s,/\[]){re.escape(flag)}([\s,/=\]]|$)", text), flag
    ctx = click.Context(BATCH)
    for p in BATCH.get_params(ctx):
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help, p.name
            assert " ".join(p.help.split()[:4]) in words, p.name
    for needed in ("--scheduler", "--workers", "--outdir", "--json", "-v", "-q", "--debug"):
        assert needed in flags
    # the scheduler's workers must see the same files; dask is an extra
    assert "see the same files at the same paths" in words
    assert "pip install 'coron[dask]'" in words
    assert "coron3 batch" in r.stdout and "batch" in invoke(runner, coron3, ["--help"]).stdout


def test_every_option_of_run_is_an_option_of_batch():
    def described(command, leave_out):
        return [(p.name, tuple(p.opts), tuple(p.secondary_opts), p.default, p.multiple,
                 getattr(p, "is_flag", None), repr(p.type), p.help)
                for p in command.params if p.name not in leave_out]

    own = {"asn", "asns", "outdir", "scheduler", "workers", "as_json"}
    assert described(BATCH, own) == described(RUN, own)
    assert {p.name for p in BATCH.params} - {p.name for p in RUN.params} == {
        "asns", "scheduler", "workers"}


def test_the_defaults_give_coron3_runs_configuration():
    from coron_cli.cli.batch import config_from_options
    from coron_cli.steps import PipelineConfig

    ctx = BATCH.make_context("batch", ["x_asn.json"])
    own = {"asns", "outdir", "scheduler", "workers", "as_json", "verbose", "quiet", "debug"}
    config, mask, psf = config_from_options(
        {k: v for k, v in ctx.params.items() if k not in own})
    assert config.as_dict() == PipelineConfig().as_dict()
    assert mask is None and psf is None
    ctx = BATCH.make_context("batch", ["x_asn.json", "-k", "5,10", "--zones", "3",
                                       "--exclude", "1,2,3", "--detect", "4"])
    config, _, _ = config_from_options({k: v for k, v in ctx.params.items() if k not in own})
    assert config.as_dict() == PipelineConfig.from_options(
        truncate="5,10", zones=3, exclude=[(1.0, 2.0, 3.0)], detect=4.0).as_dict()


# --------------------------------------------------------------------------- a scheduler

def _stop(proc, timeout=30):
    """Stop a process this test started (and its group): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group is left
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@pytest.fixture
def scheduler(tmp_path):
    """A dask scheduler and a dask worker (2 processes of one thread) on 127.0.0.1, started
    here as a user would start them; its address."""
    from distributed import Client

    info = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "wb")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(info), "--idle-timeout", "300"],
            stdout=log, stderr=log, env=ENV, start_new_session=True))
        t0 = time.monotonic()
        while not (info.exists() and info.stat().st_size):
            assert time.monotonic() - t0 < 60, "the scheduler did not start"
            assert procs[0].poll() is None, (tmp_path / "dask.log").read_text()
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1",
             "--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--memory-limit", "0",
             "--death-timeout", "60"],
            stdout=log, stderr=log, env=ENV, start_new_session=True))
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()


@pytest.mark.slow
def test_a_scheduler_started_separately(asns, scheduler, tmp_path):
    p = asns["paths"]
    out = tmp_path / "out"
    r = invoke(_runner(), coron3, ["batch", p["sixrefs"], p["planets"], "-d", out,
                                   "--scheduler", scheduler, "--json", "-q", *asns["opts"]],
               prog="coron3")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""                                   # -q: no summary
    summary = json.loads(r.stdout)
    assert summary["scheduler"] == scheduler and summary["workers"] == 2
    assert [a["status"] for a in summary["asns"]] == ["ok", "ok"]
    # each ran in a worker process of the scheduler, not here
    assert all(a["worker"] and not a["worker"].endswith(f":{os.getpid()}")
               for a in summary["asns"])
    for name in ("sixrefs", "planets"):
        _assert_same_products(out / f"{name}_asn", asns["reference"] / f"{name}_asn")
    assert _leftovers(out) == []


# --------------------------------------------------------------------------- terminal, Ctrl-C

@pytest.mark.slow
def test_progress_bar_on_a_terminal_only(asns, tmp_path):
    p = asns["paths"]
    env = dict(ENV, TERM="xterm-256color", NO_COLOR="1")
    argv = [os.path.join(BIN, "coron3"), "batch", str(p["planets"]), str(p["broken"]),
            "-d", str(tmp_path / "out"), "--workers", "2", "-k", "5"]
    code, text = run_in_pty(argv, tmp_path, env)
    assert code == 1, text
    assert "\u2501".encode() in text and re.search(rb"2/2", text)       # one bar, 2 ASNs
    assert re.search(rb"broken_asn +failed", text)
    p2 = subprocess.run(argv, capture_output=True, env=env, timeout=300)
    assert p2.returncode == 1 and p2.stdout == b""
    assert b"\x1b" not in p2.stderr and "\u2501".encode() not in p2.stderr
    assert p2.stderr.decode().splitlines()[0].startswith("coron3: error: ")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_the_batch_and_leaves_only_complete_products(asns, tmp_path, sig):
    """The signal goes to the whole process group, as a Ctrl-C on a terminal does: the
    workers must not print tracebacks, the pending tasks are cancelled, the cluster is
    stopped and no temporary file is left."""
    src = asns["paths"]
    many = tmp_path / "asns"
    many.mkdir()
    for i in range(8):
        shutil.copy(src[("planets", "noplanet", "sixrefs")[i % 3]], many / f"n{i}_asn.json")
    out = tmp_path / "out"
    proc = subprocess.Popen([os.path.join(BIN, "coron3"), "batch", str(many), "-d", str(out),
                             "--workers", "2", "-k", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                            start_new_session=True,
                            # SIGINT may be ignored here (a background job): not in the child
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while not any(n.endswith(".fits") for _, _, names in os.walk(out) for n in names):
            assert time.monotonic() - t0 < 120 and proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.1)
        os.killpg(proc.pid, sig)
        t1 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - t1
    finally:
        _stop(proc)
    stderr = stderr.decode()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), stderr
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert stderr.splitlines()[-1] == f"coron3: error: {word}"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and stdout == b""
    assert stopped_in < 30
    # not all ran; what is there is complete, and nothing temporary is left
    assert re.search(r"\d+ interrupted", stderr)
    assert _leftovers(out) == []
    for folder, _, names in os.walk(out):
        for name in names:
            with fits.open(os.path.join(folder, name), memmap=False) as hdul:
                for hdu in hdul:
                    _ = hdu.data
                assert hdul[0].header["CRN_TOOL"]
    # and no process of the batch is left (the workers were in its process group)
    t0 = time.monotonic()
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() - t0 < 20, "a worker process outlived the batch"
        time.sleep(0.1)
