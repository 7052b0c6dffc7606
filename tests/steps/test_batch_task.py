"""The task of a coron3 batch (coron_cli.batch.run_one), run in-process without dask: the
products of run_association, a failure as a one-line result, a stop between steps, and
the summary table."""

import logging
import os

import numpy as np
from astropy.io import fits

from coron_cli.batch import run_one, summary_table
from coron_cli.pipeline import run_association
from coron_cli.steps import PipelineConfig


def _assert_same_data(path, ref):
    """The same extensions with the same arrays and table columns (NaN equal to NaN)."""
    with fits.open(path) as a, fits.open(ref) as b:
        assert [h.name for h in a] == [h.name for h in b]
        for x, y in zip(a, b):
            if x.data is None or y.data is None:
                assert x.data is None and y.data is None, x.name
            elif x.data.dtype.names:
                for col in y.data.dtype.names:
                    np.testing.assert_array_equal(x.data[col], y.data[col], err_msg=col)
            else:
                np.testing.assert_array_equal(x.data, y.data, err_msg=x.name)


def test_a_task_gives_the_products_of_run_association(small_asn, tmp_path):
    config = PipelineConfig.from_options(truncate=[2])
    level = logging.getLogger("coron").level
    res = run_one(str(small_asn), str(tmp_path / "batch"), config, log_level=logging.INFO)
    ref = run_association(str(small_asn), str(tmp_path / "run"), config)
    assert res["status"] == "ok" and res["error"] is None and res["asn_id"] == "c1001"
    assert [p["kind"] for p in res["products"]] == [p["kind"] for p in ref["products"]]
    for mine, theirs in zip(res["products"], ref["products"]):
        assert mine["path"] == os.path.join(str(tmp_path / "batch"),
                                            os.path.basename(theirs["path"]))
        _assert_same_data(mine["path"], theirs["path"])
    # the run's messages come back instead of being printed, at the level asked
    assert any(level == "info" and "done in" in msg for level, msg in res["log"])
    assert res["seconds"] > 0 and set(res["timings"]) >= {"stack", "align", "klip"}
    # and the coron logger is as it was
    assert logging.getLogger("coron").level == level
    assert not any(type(h).__name__ == "_Collect" for h in logging.getLogger("coron").handlers)


def test_a_failure_is_a_one_line_result(tmp_path):
    bad = tmp_path / "bad_asn.json"
    bad.write_text("{not json")
    res = run_one(str(bad), str(tmp_path / "out"), PipelineConfig())
    assert res["status"] == "failed" and res["products"] == []
    assert res["error"].startswith(f"{bad}: not valid JSON (line 1") and "\n" not in res["error"]
    assert res["traceback"] is None
    missing = run_one(str(tmp_path / "nope_asn.json"), str(tmp_path / "out"), PipelineConfig())
    assert missing["error"] == f"{tmp_path / 'nope_asn.json'}: no such file"


def test_relative_paths_are_the_clients(small_asn, tmp_path, monkeypatch):
    """A worker elsewhere gets the client's folder: relative paths are taken from it."""
    monkeypatch.chdir(tmp_path.parent)
    name = os.path.join(tmp_path.name, small_asn.name)
    res = run_one(name, os.path.join(tmp_path.name, "out"), PipelineConfig.from_options(
        truncate=[2]), cwd=str(tmp_path.parent))
    assert res["status"] == "ok"
    monkeypatch.chdir("/")
    bad = run_one("nope_asn.json", "out", PipelineConfig(), cwd=str(tmp_path))
    # the error names the ASN as the client gave it
    assert bad["error"] == "nope_asn.json: no such file"


def test_a_stopped_task_leaves_only_complete_products(small_asn, tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2  # before the third step (the first klip)

    out = tmp_path / "out"
    res = run_one(str(small_asn), str(out), PipelineConfig.from_options(truncate=[2]), stop=stop)
    assert res["status"] == "cancelled" and res["error"] == "cancelled"
    assert sorted(os.listdir(out)) == ["targ1_c1001_psfalign.fits", "tiny_nircam_psfstack.fits"]
    for name in os.listdir(out):
        with fits.open(out / name) as hdul:
            assert hdul[0].header["CRN_TOOL"]


def test_summary_table():
    rows = [{"asn": "d/a_asn.json", "status": "ok", "seconds": 12.34, "products": [1] * 8},
            {"asn": "d/long_name_asn.json", "status": "failed", "seconds": 0.01, "products": []}]
    text = summary_table(rows, {"d/a_asn.json": "a_asn", "d/long_name_asn.json": "long_name_asn"})
    assert text.splitlines() == [
        "asn            status  seconds  products",
        "a_asn          ok         12.3         8",
        "long_name_asn  failed      0.0         0"]
