"""End to end on the simulated data: planets recovered, inputs untouched."""

import json
import os

import numpy as np
import pytest
from astropy.io import fits

from coron_cli.demo import measure_planets
from coron_cli.pipeline import run_association
from coron_cli.steps import PipelineConfig


@pytest.fixture(scope="module")
def demo_run(demo_data, tmp_path_factory):
    from tests.helpers import sha256

    folder = str(demo_data["folder"])
    before = {p: sha256(os.path.join(folder, p)) for p in os.listdir(folder)}
    out = str(tmp_path_factory.mktemp("demo_products"))
    summary = run_association(demo_data["paths"]["asn"], out,
                              PipelineConfig.from_options(truncate=[50]))
    after = {p: sha256(os.path.join(folder, p)) for p in os.listdir(folder)}
    return {"summary": summary, "out": out, "before": before, "after": after,
            "truth": demo_data["truth"]}


def _i2d(demo_run):
    path = next(p["path"] for p in demo_run["summary"]["products"] if p["kind"] == "i2d")
    with fits.open(path) as h:
        return h["SCI"].data.astype(float), h["ERR"].data.astype(float), h["SCI"].header


def test_brightest_planet_detected(demo_run):
    sci, err, hdr = _i2d(demo_run)
    rows = measure_planets(sci, err, (hdr["STARCENX"], hdr["STARCENY"]), demo_run["truth"])
    brightest = max(rows, key=lambda r: r["contrast"])
    assert brightest["snr_map"] >= 5
    assert brightest["snr_aperture"] >= 5


def test_planet_lands_at_true_sky_position(demo_run):
    sci, _, hdr = _i2d(demo_run)
    truth = demo_run["truth"]
    p = max(truth["planets"], key=lambda p: p["contrast"])
    x = hdr["STARCENX"] + p["xy_north_up"][0]
    y = hdr["STARCENY"] + p["xy_north_up"][1]
    yy, xx = np.indices(sci.shape)
    near = np.hypot(xx - x, yy - y) <= 2.5
    w = np.where(near, np.clip(np.nan_to_num(sci), 0, None), 0)
    cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    assert np.hypot(cx - x, cy - y) < 0.5


def test_inputs_byte_identical(demo_run):
    assert demo_run["before"] == demo_run["after"]


def test_all_products_written_and_no_temp_files(demo_run):
    names = sorted(os.listdir(demo_run["out"]))
    assert not [n for n in names if n.startswith(".")]
    kinds = [p["kind"] for p in demo_run["summary"]["products"]]
    assert kinds.count("psfalign") == 2 and kinds.count("psfsub") == 2
    assert {"psfstack", "i2d", "snr", "contrast"} <= set(kinds)
    # what is written is what the summary lists, nothing else
    assert sorted(os.path.basename(p["path"]) for p in demo_run["summary"]["products"]) == names


def test_products_shapes_and_values(demo_run):
    """The small simulation: 64 x 64 frames, 3 integrations per exposure, 3 reference
    exposures of 9 dithered integrations (27 slices), 2 science rolls."""
    # the references are registered once per exposure (the default): a 3-D psfalign
    shapes = {"psfstack": (27, 64, 64), "psfalign": (27, 64, 64), "psfsub": (3, 64, 64),
              "i2d": (64, 64), "snr": (64, 64)}
    seen = set()
    for p in demo_run["summary"]["products"]:
        with fits.open(p["path"]) as h:
            if p["kind"] == "contrast":
                t = h["CONTRAST"].data
                assert len(t) >= 10 and np.all(np.diff(t["radius"]) > 0)
                assert np.isfinite(t["sigma"]).all() and (t["sigma"] > 0).all()
                continue
            sci = h["SCI"].data
            assert sci.shape == shapes[p["kind"]] and sci.dtype == np.dtype(">f4"), p
            assert h["DQ"].data.shape == sci.shape and h["DQ"].data.dtype == np.uint32, p
            if p["kind"] != "snr":
                assert h["ERR"].data.shape == sci.shape, p
            if p["kind"] in ("psfalign", "psfsub"):
                assert np.isfinite(sci).all(), p                # bad pixels repaired
                good = (h["DQ"].data & 1) == 0                  # they stay flagged
                assert 0.95 < good.mean() < 1, p
                e = h["ERR"].data[good]
                assert np.isfinite(e).all() and (e > 0).all(), p
            if p["kind"] == "psfalign":
                assert len(h["SHIFTS"].data) == 3 * 27
            if p["kind"] in ("i2d", "snr"):
                # rotated north-up: only the corners no exposure covers are empty, and
                # every empty pixel is flagged
                hdr = h["SCI"].header
                yy, xx = np.indices(sci.shape)
                inner = np.hypot(xx - hdr["STARCENX"], yy - hdr["STARCENY"]) < 28
                flagged = (h["DQ"].data & 1) != 0
                assert np.isfinite(sci[inner & ~flagged]).all(), p
                assert flagged[~np.isfinite(sci)].all(), p
                assert (inner & flagged).sum() < 5, p
                assert 0.8 < np.isfinite(sci).mean() < 1.0, p
            seen.add(p["kind"])
    assert seen == set(shapes)
    # two rolls combined: the i2d is quieter 10-25 px from the star than one exposure's
    # psfsub (averaged over its integrations; median absolute deviations), the ERR
    # defined wherever the image is
    sci, err, hdr = _i2d(demo_run)
    assert np.isfinite(err[np.isfinite(sci)]).all() and (err[np.isfinite(sci)] > 0).all()
    sub = next(p["path"] for p in demo_run["summary"]["products"] if p["kind"] == "psfsub")
    with fits.open(sub) as h:
        one, sub_hdr = h["SCI"].data.astype(float).mean(axis=0), h["SCI"].header
    yy, xx = np.indices(sci.shape)

    def ring(cx, cy):
        r = np.hypot(xx - cx, yy - cy)
        return (r > 10) & (r < 25)

    def mad(v):                             # robust: the planets left out
        v = v[np.isfinite(v)]
        return np.median(np.abs(v - np.median(v)))

    assert mad(sci[ring(hdr["STARCENX"], hdr["STARCENY"])]) < \
        mad(one[ring(sub_hdr["STARCENX"], sub_hdr["STARCENY"])])


def test_demo_command(tmp_path, runner):
    import click

    from coron_cli.cli import coron3
    from coron_cli.cli.common import run

    @click.command()
    def wrapper():
        run(coron3.cli, "coron3", ["demo", "--outdir", str(tmp_path / "d"), "--size", "small", "-q"])

    r = runner.invoke(wrapper, [], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].split()[:3] == ["planet", "sep_lod", "pa_deg"]
    snr = [float(ln.split()[-2]) for ln in lines[1:]]
    assert len(snr) >= 2 and max(snr) >= 5
    assert json.loads((tmp_path / "d" / "demo_asn.json").read_text())["products"]
