"""The target's other rolls as references (--roll-refs, coron-klip --roll-ref)."""

import json
import os

import numpy as np
import pytest
from numpy.testing import assert_allclose

from coron_cli import core, steps
from coron_cli.cli import klip as klip_cli
from coron_cli.products import read_product
from coron_cli.steps.rolls import RollReferences, roll_subtract, rotated_fakes
from tests.helpers import invoke


def test_roll_groups_follow_the_chord_a_source_moves():
    shape, center = (41, 41), (20.0, 20.0)
    labels, allowed = core.roll_groups(shape, center, [10.0], 2.0)
    r = np.hypot(*(np.indices(shape) - 20.0))
    need = 2.0 / (2 * np.sin(np.deg2rad(5.0)))              # radius where the chord is 2 px
    assert allowed.tolist() == [[False], [True]]
    assert (labels[r < need - 1e-9] == 0).all() and (labels[r >= need + 1e-9] == 1).all()
    # two rolls, 5 and 20 degrees: three groups (none, the 20-degree one, both)
    labels, allowed = core.roll_groups(shape, center, [5.0, -20.0], 2.0)
    assert allowed.tolist() == [[False, False], [False, True], [True, True]]
    assert labels[20, 20] == 0 and labels[20, 40] == 1 and labels[0, 0] == 2
    # none: one group; no rolls: one group using nothing
    labels, allowed = core.roll_groups(shape, center, [10.0], 1e6)
    assert allowed.tolist() == [[False]] and (labels == 0).all()
    labels, allowed = core.roll_groups(shape, center, [], 1.0)
    assert allowed.shape == (1, 0) and (labels == 0).all()


def _rolls_data(seed=3, shape=(32, 32), nref=6, nroll=1):
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=(1, nref) + shape).astype(np.float32) + 2.0
    extra = rng.normal(size=(nroll,) + shape).astype(np.float32) + 2.0
    sci = (0.6 * extra[0] + 0.3 * refs[0, 0] + 0.1 * rng.normal(size=shape))[None]
    rolls = RollReferences(sci=extra, err=np.full(extra.shape, 0.1, np.float32),
                           rotation=np.full(nroll, 10.0), names=["other"] * nroll,
                           shifts=np.zeros((nroll, 2)))
    return sci.astype(np.float32), refs, rolls


@pytest.mark.parametrize("zones", [None, "annuli"])
def test_roll_subtract_is_klip_with_the_rolls_where_allowed_and_without_elsewhere(zones):
    sci, refs, rolls = _rolls_data()
    center = (15.5, 15.5)
    z = None if zones is None else core.annulus_zones(sci.shape[-2:], center, annuli=3)
    var = np.full(refs.shape, 0.01, np.float32)
    kw = {"truncations": [4, 7], "reference_variance": var, "zones": z}
    move = 2.0
    res, mv, nm = roll_subtract(sci, refs, rolls, center=center, min_move=move, **kw)
    without, _, _ = core.klip_subtract(sci, refs, **kw)
    both = np.concatenate([refs, rolls.sci[None]], axis=1)
    with_var = np.concatenate([var, np.square(rolls.err)[None]], axis=1)
    # every zone keeps its own fit region though only part of it uses the rolls
    fz = None if z is None else {int(k): z == k for k in np.unique(z)}
    withr, rv, _ = core.klip_subtract(sci, both, **dict(kw, reference_variance=with_var),
                                      fit_zones=fz)
    labels, _ = core.roll_groups(sci.shape[-2:], center, rolls.rotation, move)
    far = labels == 1
    assert far.any() and (~far).any()
    assert_allclose(res[..., ~far], without[..., ~far], rtol=1e-4, atol=1e-4)
    assert_allclose(res[..., far], withr[..., far], rtol=1e-4, atol=1e-4)
    assert_allclose(mv[..., far], rv[..., far], rtol=1e-4, atol=1e-6)
    # the roll that makes the science helps where it may be used
    assert np.std(res[-1][0][far]) < 0.5 * np.std(without[-1][0][far])
    assert (nm <= 7).all()
    # no rolls: klip_subtract itself
    plain, _, _ = roll_subtract(sci, refs, None, center=center, min_move=move, **kw)
    assert_allclose(plain, without)


def test_a_fake_in_the_other_roll_is_partly_subtracted_with_the_star():
    """The fake's image is KLIP(science + fake, rolls holding it) - KLIP(science): a
    source that has not moved far loses more than one that has."""
    sci, refs, rolls = _rolls_data(shape=(48, 48))
    center = (23.5, 23.5)
    fake = np.zeros((2, 48, 48), np.float32)
    yy, xx = np.indices((48, 48))
    fake[0] = 5.0 * np.exp(-((xx - 23.5 - 6) ** 2 + (yy - 23.5) ** 2) / 2.0)    # r = 6
    fake[1] = 5.0 * np.exp(-((xx - 23.5 - 20) ** 2 + (yy - 23.5) ** 2) / 2.0)   # r = 20
    rf = rotated_fakes(fake, rolls.rotation, center)
    assert rf.shape == (2, 1, 48, 48)
    # the rotated copy sits 10 degrees round the star (north_up's rotation)
    y, x = np.unravel_index(np.argmax(rf[1, 0]), (48, 48))
    assert abs(np.hypot(x - 23.5, y - 23.5) - 20) < 1.0
    assert abs(abs(np.degrees(np.arctan2(y - 23.5, x - 23.5))) - 10.0) < 3.0
    targets = np.concatenate([sci[:, None], fake[None]], axis=1)
    kw = {"truncations": [7], "center": center, "min_move": 0.0}
    res, _, _ = roll_subtract(targets, refs, rolls, roll_fakes=rf, **kw)
    naive, _, _ = roll_subtract(targets, refs, rolls, **kw)
    near = np.hypot(xx - 29.5, yy - 23.5) <= 2
    kept = res[0, 0, 1][near].sum() / fake[0][near].sum()
    kept_naive = naive[0, 0, 1][near].sum() / fake[0][near].sum()
    assert kept < kept_naive - 0.1      # the other roll's copy, barely moved, takes flux away


def test_other_rolls_skip_the_same_roll_and_the_science_itself(small_asn):
    from coron_cli.asn import read_asn
    from coron_cli.steps.rolls import other_rolls

    prod = read_asn(str(small_asn)).products[0]
    a, b = (read_product(p) for p in prod.science)
    keep, rot = other_rolls(a, [a, b])
    assert [k.path for k in keep] == [b.path]
    assert abs(abs(rot[0]) - 10.0) < 1e-6
    keep, _ = other_rolls(a, [a])
    assert keep == []


def test_coron3_run_with_roll_refs_and_the_single_tool_agree(demo_data, tmp_path, runner):
    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    asn = demo_data["paths"]["asn"]
    out = tmp_path / "run"
    psf = np.asarray(demo_data["dataset"].offaxis_psf, dtype=np.float64)
    lod = float(demo_data["truth"]["lambda_over_d_pix"])
    fake = {"contrast": True, "fwhm": lod, "star_flux": float(psf.max()), "truncate": [20]}
    config = PipelineConfig.from_options(roll_refs=True, roll_move=1.0, **fake)
    summary = run_association(asn, str(out), config, offaxis_psf=psf)
    paths = {}
    for p in summary["products"]:
        paths.setdefault(p["kind"], []).append(p["path"])
    sub = read_product(paths["psfsub"][0])
    assert sub.sci_header["KLROLLS"] == 1 and sub.sci_header["KLRMOVE"] > 0
    assert np.isfinite(read_product(paths["i2d"][0]).sci).any()
    # the single tool with the other roll as --roll-ref writes the same psfsub
    with open(asn) as fh:
        members = json.load(fh)["products"][0]["members"]
    sci = [str(demo_data["folder"] / m["expname"]) for m in members
           if m["exptype"] == "science"]
    single = tmp_path / "single_psfsub.fits"
    r = invoke(runner, klip_cli, [sci[0], paths["psfalign"][0], "--roll-ref", sci[1],
                                "--roll-move", "1", "--truncate", "20", "-o", str(single)])
    assert r.exit_code == 0, r.output
    one = read_product(str(single))
    assert one.sci_header["KLROLLS"] == 1
    assert_allclose(one.sci, sub.sci, rtol=1e-5, atol=1e-5 * np.nanmax(np.abs(sub.sci)))
    # with --no-roll-refs: KLROLLS 0, another residual
    base = run_association(asn, str(tmp_path / "base"),
                           PipelineConfig.from_options(roll_refs=False, **fake), offaxis_psf=psf)
    bp = {p["kind"]: p["path"] for p in base["products"]}
    b = read_product(bp["psfsub"])
    assert b.sci_header["KLROLLS"] == 0
    assert not np.allclose(b.sci, sub.sci)
    # the fakes sit in the other roll too: where it is used, they lose a little more
    # (its copy of them, turned by the roll, is subtracted with the star); inside, the same
    t_roll = read_product(paths["i2d"][0]).tables["THROUGHPUT"]
    t_base = read_product(bp["i2d"]).tables["THROUGHPUT"]
    from coron_cli.steps.rolls import other_rolls

    _, rot = other_rolls(read_product(sci[0]), [read_product(sci[1])])
    # fakes every 60 degrees at each radius: the fakes 1.5 fwhm further out see the rolls
    far = 2 * np.asarray(t_roll["radius"]) * np.sin(np.deg2rad(abs(rot[0])) / 2) \
        >= sub.sci_header["KLRMOVE"] - 1.5 * lod
    a, c = np.asarray(t_roll["throughput"]), np.asarray(t_base["throughput"])
    assert (a > 0.5).all() and (a <= 1.05).all()
    assert_allclose(a[~far], c[~far], atol=0.01)
    assert (a[far] <= c[far] + 0.02).all() and (a[far] < c[far] - 0.02).any()
    assert np.mean(a[far] - c[far]) < 0


def test_a_known_source_blocks_the_rolls_where_they_hold_it():
    """An other roll is not used where it holds a known (turned) source: an edge-on disk
    moves by less than its own width, so a roll would subtract it."""
    shape, center = (41, 41), (20.0, 20.0)
    disk = np.zeros(shape, bool)
    disk[19:22, 25:41] = True                               # a strip east of the star
    blocked = steps.source_in_rolls(disk, [10.0], center)
    assert blocked.shape == (1,) + shape
    assert blocked[0][20, 25:29].all()         # near the star the turned strip covers it
    assert 0.2 < blocked[0][disk].mean() < 1.0
    assert not blocked[0][:, :15].any()                      # nothing on the other side
    labels, allowed = core.roll_groups(shape, center, [10.0], 1.0, blocked)
    use = allowed[labels][..., 0]
    assert not use[blocked[0]].any()
    assert use[:, :15][np.hypot(*(np.indices(shape) - 20.0))[:, :15] > 10].all()
    # in roll_subtract: with the strip as a known source, the blocked pixels equal KLIP
    # with the references alone
    sci, refs, rolls = _rolls_data(shape=shape)
    kw = {"truncations": [7], "center": center, "min_move": 1.0}
    res, _, _ = roll_subtract(sci, refs, rolls, sources=disk, **kw)
    alone, _, _ = core.klip_subtract(sci, refs, truncations=[7],
                                     fit_zones={0: np.ones(shape, bool)},
                                     zones=np.zeros(shape, int))
    assert_allclose(res[..., blocked[0]], alone[..., blocked[0]], rtol=1e-4, atol=1e-4)


def test_extended_parts_keep_what_point_sources_do_not_explain():
    shape = (40, 40)
    foot = np.zeros(shape, bool)
    foot[10:13, 5:35] = True                  # a strip: extended
    foot[25:28, 25:28] = True                 # a blob inside a point-source disk
    points = np.zeros(shape, bool)
    points[24:29, 24:29] = True
    points[9:14, 18:23] = True                # a peak on the strip covers a bit of it
    z = np.where(foot, 3.0, 0.0)
    z[26, 26] = 30.0                          # the blob's core
    ext = core.extended_parts(foot, points, z)
    assert ext[10:13, 5:35].all()             # the whole strip, its covered part included
    assert not ext[25:28, 25:28].any()
    # a bright point source whose rings reach beyond its disk: 8 of 9 pixels outside,
    # but a tenth of its significance
    ring = np.zeros(shape, bool)
    ring[4:7, 4:7] = True
    zr = np.where(ring, 0.5, 0.0)
    zr[5, 5] = 40.0
    core_disk = np.zeros(shape, bool)
    core_disk[5, 5] = True
    assert not core.extended_parts(ring, core_disk, zr).any()
    assert core.extended_parts(ring, core_disk, zr, ring_fraction=0.05)[ring].all()
    assert not core.extended_parts(np.zeros(shape, bool), points, z).any()


def test_an_exposure_is_prepared_once(small_asn, monkeypatch):
    """prepare_science keeps its result on the product: align, KLIP and the other rolls
    prepare an exposure once; DQ and the outlier mask come as copies, SCI and ERR
    read-only; another SCI array or other bits are prepared anew."""
    from dataclasses import replace

    from coron_cli.asn import read_asn
    from coron_cli.steps import stack as stack_mod

    calls = []
    real = stack_mod._prepare
    monkeypatch.setattr(stack_mod, "_prepare", lambda *a: calls.append(1) or real(*a))
    sci = read_product(read_asn(str(small_asn)).products[0].science[0])
    a = steps.prepare_science(sci, return_outliers=True)
    b = steps.prepare_science(sci)
    assert len(calls) == 1
    assert b[0] is a[0] and not a[0].flags.writeable and not a[1].flags.writeable
    b[2][:] = 7
    assert not (steps.prepare_science(sci)[2] == 7).all() and len(calls) == 1
    steps.prepare_science(sci, bad_bits=3)
    assert len(calls) == 2
    other = replace(sci, sci=sci.sci.copy())
    c = steps.prepare_science(other)
    assert len(calls) == 3 and np.array_equal(c[0], a[0])


def test_a_roll_of_another_frame_size_is_one_line_naming_it(demo_data, tmp_path, runner):
    """coron-klip --roll-ref with a file of another frame size: exit 2, one line naming
    that file, no output written."""
    from astropy.io import fits

    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    folder = demo_data["folder"]
    summary = run_association(demo_data["paths"]["asn"], str(tmp_path / "run"),
                              PipelineConfig.from_options(truncate=[5]))
    ali = next(p["path"] for p in summary["products"] if p["kind"] == "psfalign")
    sci = next(str(folder / n) for n in sorted(os.listdir(folder)) if "sci_roll1" in n
               and n.endswith("_calints.fits"))
    small = tmp_path / "small_roll2_calints.fits"
    with fits.open(sci.replace("roll1", "roll2")) as h:
        for ext in ("SCI", "ERR", "DQ"):
            h[ext].data = h[ext].data[:, :40, :40]
        h.writeto(small)
    out = tmp_path / "x_psfsub.fits"
    r = invoke(runner, klip_cli, [sci, ali, "--roll-ref", small, "-o", out])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "small_roll2_calints.fits" in r.stderr
    assert "40x40" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
