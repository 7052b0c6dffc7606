"""coron-select: on a synthetic library of small frames (copies of the science PSF with a
little noise, other PSFs, frames of another set-up), the matching frames are picked, the
result is the same with 1 and 2 workers, the other set-ups are left out and counted, the
association passes 'coron3 check'; the frames selected are named as each psf member's
"integrations" (--top, --threshold, both); bad input, missing dask."""

import json
import os
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from coron_cli.cli import coron3
from coron_cli.cli import select as select_cli
from tests.helpers import gaussian, gaussian_psf, invoke, modules_loaded, write_exposure

SETUP = {"INSTRUME": "NIRCAM", "CORONMSK": "MASKA335R", "FILTER": "F335M",
         "SUBARRAY": "SUB320A335R"}
N = 32
STAR = (15.5, 15.5)


def _psf(star, speckles, shape=(N, N)):
    """A star with speckles at fixed offsets from it."""
    img = gaussian_psf(shape, *star)
    for dx, dy, a in speckles:
        img = img + a * gaussian(shape, star[0] + dx, star[1] + dy, 1.2)
    return img


def _write(path, frames, star, **setup):
    primary = fits.Header()
    for key, value in {**SETUP, **setup}.items():
        if value is not None:
            primary[key] = value
    sci_header = fits.Header()
    sci_header["STARCENX"] = (star[0], "star x, 0-based pixels")
    sci_header["STARCENY"] = (star[1], "star y, 0-based pixels")
    return write_exposure(path, np.asarray(frames), primary=primary, sci_header=sci_header)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A science exposure; a library of 4 matching files (2 integrations, star moved by up
    to a pixel and a half), 10 others (3 integrations: other speckles, or drifted), 2 of
    another filter, 1 of another size, 1 without CORONMSK."""
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("select")
    lib = folder / "lib"
    lib.mkdir()
    speckles = [(6, 2, 0.4), (-5, 7, 0.3), (3, -8, 0.5), (-9, -4, 0.35), (10, 9, 0.25)]
    sci = np.array([_psf(STAR, speckles) + 0.01 * rng.normal(size=(N, N)) for _ in range(2)])
    science = _write(folder / "sci_calints.fits", sci, STAR)
    match = []
    for k, star in enumerate([(15.5, 15.5), (16.5, 15.5), (14.8, 16.2), (15.5, 14.5)]):
        frames = [_psf(star, speckles) + 0.02 * rng.normal(size=(N, N)) for _ in range(2)]
        match.append(_write(lib / f"ref{k:02d}_calints.fits", frames, star))
    for k in range(10):
        if k < 5:   # other speckles
            other = [(rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(0.2, 0.5))
                     for _ in range(5)]
            frames = [_psf(STAR, other) + 0.02 * rng.normal(size=(N, N)) for _ in range(3)]
        else:       # the same speckles drifted, the header not knowing
            d = 2.0 + k * 0.3
            frames = [_psf((STAR[0] + d, STAR[1] - d), speckles) + 0.02 * rng.normal(size=(N, N))
                      for _ in range(3)]
        _write(lib / f"oth{k:02d}_calints.fits", frames, STAR)
    for k in range(2):
        _write(lib / f"f444w{k}_calints.fits", sci, STAR, FILTER="F444W")
    _write(lib / "big_calints.fits", [_psf((19.5, 19.5), speckles, (40, 40))], (19.5, 19.5))
    _write(lib / "nomask_calints.fits", sci, STAR, CORONMSK=None)
    (lib / "notes.txt").write_text("not a library file\n")
    return {"folder": folder, "lib": lib, "science": science, "match": match}


@pytest.fixture(scope="module")
def selections(library, tmp_path_factory):
    """coron-select --top 8 with 1 worker (the library as a folder) and with 2 (as a list
    file and a glob)."""
    runner = _runner()
    out = {}
    lst = library["folder"] / "library.txt"
    lst.write_text("# the library\nlib/ref0*_calints.fits\n\nlib\n")
    for workers, lib_args in ((1, ["--library", library["lib"]]),
                              (2, ["-L", f"@{lst}", "-L", str(library["lib"] / "oth*.fits")])):
        folder = tmp_path_factory.mktemp(f"w{workers}")
        asn = folder / "sel_asn.json"
        r = invoke(runner, select_cli, [library["science"], *lib_args, "--top", 8,
                                        "--workers", workers, "-o", asn, "-v"],
                   prog="coron-select")
        out[workers] = {"result": r, "asn": asn, "folder": folder}
    return out


def _runner():
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def test_the_matching_frames_are_picked(selections, library):
    sel = selections[1]
    r = sel["result"]
    assert r.exit_code == 0, r.stderr
    with open(sel["asn"]) as fh:
        asn = json.load(fh)
    assert asn["asn_type"] == "coron3"
    members = asn["products"][0]["members"]
    assert asn["products"][0]["name"] == "sel"
    assert members[0]["exptype"] == "science"
    assert os.path.samefile(sel["folder"] / members[0]["expname"], library["science"])
    psf = [os.path.basename(m["expname"]) for m in members if m["exptype"] == "psf"]
    assert sorted(psf) == sorted(os.path.basename(p) for p in library["match"])
    t = Table.read(sel["folder"] / "sel_refscores.ecsv")
    chosen = t[t["selected"]]
    assert len(chosen) == 8
    assert {os.path.basename(f) for f in chosen["file"]} == set(psf)
    assert np.all(chosen["score"] > 0.9)
    assert np.all(t[~t["selected"]]["score"] < chosen["score"].min())
    assert list(t["rank"]) == list(range(1, len(t) + 1))
    assert len(t) == 4 * 2 + 10 * 3        # the candidates only


def _psf_members(asn_path):
    with open(asn_path) as fh:
        members = json.load(fh)["products"][0]["members"]
    return {os.path.basename(m["expname"]): m.get("integrations")
            for m in members if m["exptype"] == "psf"}


def test_every_psf_member_names_its_selected_integrations(selections):
    sel = selections[1]
    t = Table.read(sel["folder"] / "sel_refscores.ecsv")
    chosen = t[t["selected"]]
    want = {}
    for f, i in zip(chosen["file"], chosen["integration"]):
        want.setdefault(os.path.basename(f), []).append(int(i))
    assert _psf_members(sel["asn"]) == {f: sorted(v) for f, v in want.items()}


@pytest.mark.parametrize("args, n", [(["--top", 3], 3), (["--threshold", 0.9], 8),
                                     (["--threshold", 0.9, "--top", 5], 5)])
def test_top_and_threshold_select_frames_not_files(library, tmp_path, args, n):
    asn = tmp_path / "part_asn.json"
    r = invoke(_runner(), select_cli, [library["science"], "-L", library["lib"], *args,
                                       "-o", asn], prog="coron-select")
    assert r.exit_code == 0, r.stderr
    t = Table.read(tmp_path / "part_refscores.ecsv")
    chosen = t[t["selected"]]
    assert len(chosen) == n
    assert list(chosen["rank"]) == list(range(1, n + 1))     # the best ones
    if "--threshold" in args:
        assert np.all(chosen["score"] >= 0.9)
        assert t.meta["THRESH"] == 0.9
    members = _psf_members(asn)
    assert sum(len(v) for v in members.values()) == n
    assert {(f, i) for f, v in members.items() for i in v} == \
        {(os.path.basename(f), int(i)) for f, i in zip(chosen["file"], chosen["integration"])}
    if n == 3:   # two-integration files: one of them is used in part
        assert sorted(len(v) for v in members.values()) == [1, 2]
        r = invoke(_runner(), coron3, ["check", asn, "-d", tmp_path / "out", "-v"],
                   prog="coron3")
        assert r.exit_code == 0, r.stderr
        assert "1 of its 2 integration(s)" in r.stderr


def test_a_threshold_no_frame_reaches_is_one_line(library, tmp_path):
    r = invoke(_runner(), select_cli, [library["science"], "-L", library["lib"],
                                       "--threshold", 1, "-o", tmp_path / "a.json"],
               prog="coron-select")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("coron-select: error: --threshold: no frame scores 1 or more "
                                "(the best scores 0.9")
    assert not (tmp_path / "a.json").exists()


def test_other_setups_are_left_out_and_counted(selections):
    sel = selections[1]
    with fits.open(sel["folder"] / "sel_refscores.fits") as hdul:
        hdr = hdul["REFSCORES"].header
        assert hdr["NEXCLUDE"] == 2 * 2 + 1 + 2      # F444W, 40x40, no CORONMSK
        assert hdr["NEXCLFIL"] == 4
        assert hdr["NCANDID"] == 38
        assert set(hdul["REFSCORES"].columns.names) == {"file", "integration", "science",
                                                        "score", "rank", "selected"}
    assert "7 frame(s) of 4 file(s) left out" in sel["result"].stderr
    assert "FILTER F444W (science F335M)" in sel["result"].stderr


def test_same_result_with_one_and_two_workers(selections):
    a, b = selections[1], selections[2]
    assert b["result"].exit_code == 0, b["result"].stderr
    assert "on 2 worker(s)" in b["result"].stderr
    ja, jb = json.loads(a["asn"].read_text()), json.loads(b["asn"].read_text())
    assert [os.path.basename(m["expname"]) for m in ja["products"][0]["members"]] == \
        [os.path.basename(m["expname"]) for m in jb["products"][0]["members"]]
    ta = Table.read(a["folder"] / "sel_refscores.ecsv")
    tb = Table.read(b["folder"] / "sel_refscores.ecsv")
    assert [os.path.basename(f) for f in ta["file"]] == [os.path.basename(f) for f in tb["file"]]
    for col in ("integration", "score", "rank", "selected"):
        np.testing.assert_array_equal(ta[col], tb[col])


def test_the_association_passes_coron3_check(selections, tmp_path):
    r = invoke(_runner(), coron3, ["check", selections[1]["asn"], "-d", tmp_path / "out"],
               prog="coron3")
    assert r.exit_code == 0, r.stderr
    assert "psfsub" in r.stdout


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "no-candidate",
                                  "empty-folder"])
def test_bad_input_is_one_line_naming_the_file(library, tmp_path, case):
    lib = ["--library", library["lib"]]
    if case == "missing":
        lib = ["--library", tmp_path / "nope_calints.fits"]
        name = "nope_calints.fits: no such file"
    elif case == "garbage":
        bad = tmp_path / "bad_calints.fits"
        bad.write_bytes(b"SIMPLE  = not fits at all" * 20)
        lib += ["--library", bad]
        name = "bad_calints.fits: not a readable FITS file"
    elif case == "truncated":  # headers fine: found by the worker reading the data
        data = (library["lib"] / "ref00_calints.fits").read_bytes()
        bad = tmp_path / "cut_calints.fits"
        bad.write_bytes(data[:-4000])
        lib += ["--library", bad]
        name = "cut_calints.fits: truncated FITS file"
    elif case == "no-candidate":
        lib = ["--library", library["lib"] / "f444w0_calints.fits"]
        name = "--library: no frame has the set-up"
    else:
        (tmp_path / "empty").mkdir()
        lib = ["--library", tmp_path / "empty"]
        name = "folder holds no reference file"
    r = invoke(_runner(), select_cli, [library["science"], *lib, "-o", tmp_path / "a.json"],
               prog="coron-select")
    assert r.exit_code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("coron-select: error: ")]
    assert errors == lines[-1:], r.stderr          # one error line, last
    assert name in errors[0]
    assert len(lines) == 1 or case == "truncated"  # (there: the other set-ups' warning)
    assert not (tmp_path / "a.json").exists()


def test_without_dask_a_one_line_error_names_the_extra(library, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)          # import dask -> ImportError
    r = invoke(_runner(), select_cli, [library["science"], "-L", library["lib"],
                                       "-o", tmp_path / "a.json"], prog="coron-select")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "coron-select: error: needs dask, the optional 'dask' extra: pip install 'coron[dask]'"]


def test_scheduler_and_workers_together_is_a_usage_error(library, tmp_path):
    r = invoke(_runner(), select_cli, [library["science"], "-L", library["lib"], "--workers", 2,
                                       "--scheduler", "tcp://127.0.0.1:1", "-o",
                                       tmp_path / "a.json"], prog="coron-select")
    assert r.exit_code == 2 and "not both" in r.stderr


def test_a_science_exposure_is_never_its_own_reference(library, tmp_path):
    r = invoke(_runner(), select_cli, [library["science"], "-L", library["folder"],
                                       "-o", tmp_path / "a.json"], prog="coron-select")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "coron-select: error: --library: holds no file but the science exposures"]


def test_on_a_scheduler_the_result_is_the_same(library, selections, tmp_path):
    """--scheduler: a scheduler and a worker started in this process, over TCP."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  protocol="tcp://", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        asn = tmp_path / "sel_asn.json"
        r = invoke(_runner(), select_cli, [library["science"], "-L", library["lib"], "--top", 8,
                                           "--scheduler", cluster.scheduler_address, "-o", asn],
                   prog="coron-select")
    assert r.exit_code == 0, r.stderr
    a = Table.read(selections[1]["folder"] / "sel_refscores.ecsv")
    b = Table.read(tmp_path / "sel_refscores.ecsv")
    for col in ("file", "integration", "score", "rank", "selected"):
        np.testing.assert_array_equal(a[col], b[col])


def test_dask_is_imported_only_when_a_selection_runs():
    mods = modules_loaded("import coron_cli.cli.select, coron_cli.select, "
                          "coron_cli.core.select")
    assert sorted(m for m in mods if m.split(".")[0] in ("dask", "distributed")) == []


def test_a_cosmic_ray_on_the_science_does_not_decide_the_ranking(library, tmp_path):
    """An unflagged cosmic ray in one science integration, inside the scored region, would
    hold most of the science vector's variance; it is repaired (as KLIP's preparation
    repairs it) before scoring, so the matching frames are still the best 8."""
    with fits.open(library["science"]) as h:
        sci = h["SCI"].data.copy()
    sci[0, 15, 27] += 200.0 * sci.max()           # 11.5 px from the star, one pixel
    hit = _write(tmp_path / "hit_calints.fits", sci, STAR)
    _top8_are_the_matching_frames(hit, library["lib"], library, tmp_path)


def test_a_cosmic_ray_on_a_library_frame_does_not_push_it_down(library, tmp_path):
    """A matching library file with an unflagged cosmic ray in the scored region keeps its
    frames among the best (the ray is blanked before scoring)."""
    import shutil

    lib = tmp_path / "lib"
    shutil.copytree(library["lib"], lib)
    hit = lib / os.path.basename(library["match"][0])
    with fits.open(hit, mode="update") as h:
        h["SCI"].data[0, 15, 27] += 200.0 * np.nanmax(h["SCI"].data)
    _top8_are_the_matching_frames(library["science"], lib, library, tmp_path)


def _top8_are_the_matching_frames(science, lib, library, tmp_path):
    """coron-select --top 8 of `science` in `lib` picks the library's matching frames,
    each scoring above 0.9."""
    asn = tmp_path / "hit_asn.json"
    r = invoke(_runner(), select_cli, [science, "-L", lib, "--top", 8, "--workers", 1,
                                       "-o", asn], prog="coron-select")
    assert r.exit_code == 0, r.stderr
    assert sorted(_psf_members(asn)) == sorted(os.path.basename(p) for p in library["match"])
    t = Table.read(tmp_path / "hit_refscores.ecsv")
    assert np.all(t[t["selected"]]["score"] > 0.9)


def test_the_sciences_own_companion_is_left_out_of_the_scores(library, tmp_path):
    """Two science rolls with a companion brighter than the star's speckles, which turns
    between them: where the rolls differ is left out of the region (NSOURCE pixels), so
    the matching frames, which have no companion, still score above 0.9 and are the
    best 8 (with the companion in, it would hold most of the science's variance)."""
    from tests.helpers import write_exposure

    with fits.open(library["science"]) as h:
        sci = h["SCI"].data.astype(np.float64)
        primary, header = h[0].header.copy(), h["SCI"].header.copy()
    paths = []
    for k, (dx, dy) in enumerate([(8.0, 3.0), (-3.0, 8.0)]):
        frames = sci + 3.0 * gaussian((N, N), STAR[0] + dx, STAR[1] + dy, 1.0)
        paths.append(write_exposure(tmp_path / f"roll{k + 1}_calints.fits", frames,
                                    err=np.full(sci.shape, 0.01), primary=primary,
                                    sci_header=header))
    asn = tmp_path / "roll_asn.json"
    r = invoke(_runner(), select_cli, [*paths, "-L", library["lib"], "--top", 8,
                                       "--workers", 1, "-o", asn], prog="coron-select")
    assert r.exit_code == 0, r.stderr
    t = Table.read(tmp_path / "roll_refscores.ecsv")
    assert np.all(t[t["selected"]]["score"] > 0.9)
    assert sorted(_psf_members(asn)) == sorted(os.path.basename(p) for p in library["match"])
    assert t.meta["NSOURCE"] > 0
