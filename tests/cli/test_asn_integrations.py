"""The "integrations" key of a psf member (coron's own, issue 16): parsed and checked
(bad values are one line naming the association and the member, exit 2), and followed by
'coron3 run', 'coron3 check' and 'coron-stack --asn': a run on integration subsets equals
a run on files that hold only those integrations, and the psfstack says which were used."""

import json
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

from coron_cli.asn import parse_asn
from coron_cli.cli import coron3, stack
from coron_cli.errors import InputError
from coron_cli.products import read_product
from tests.helpers import invoke, write_exposure

#: the integrations of each psf member of the small_asn fixture (3 each) used by the tests
SUBSETS = {"psf3_calints.fits": [0, 2], "psf4_calints.fits": None, "psf5_calints.fits": [1]}


def _with_integrations(asn_path, subsets, out_path):
    data = json.loads(asn_path.read_text())
    for m in data["products"][0]["members"]:
        ints = subsets.get(m["expname"])
        if ints is not None:
            m["integrations"] = ints
    out_path.write_text(json.dumps(data))
    return out_path


# --------------------------------------------------------------------------- parsing

def _asn(**psf_extra):
    return {"asn_id": "c1001", "products": [{"name": "p", "members": [
        {"expname": "sci_calints.fits", "exptype": "science"},
        {"expname": "ref1_calints.fits", "exptype": "psf", **psf_extra},
        {"expname": "ref2_calints.fits", "exptype": "psf"}]}]}


def test_the_key_is_parsed_sorted_and_optional(tmp_path):
    asn = parse_asn(_asn(integrations=[4, 0, 2]), path=str(tmp_path / "a_asn.json"),
                    check_files=False)
    prod = asn.products[0]
    ref1, ref2 = prod.psf
    assert prod.integrations_of(ref1) == (0, 2, 4)      # the file's order
    assert prod.integrations_of(ref2) is None           # no key: every integration
    assert prod.expnames[ref1] == "ref1_calints.fits"


@pytest.mark.parametrize("value, says", [
    ("0,1", "'integrations' must be a list of integration numbers (0-based), not \"0,1\""),
    (3, "'integrations' must be a list"),
    (None, "'integrations' must be a list"),
    ([], "'integrations' is empty"),
    ([0, -1], "must hold integers >= 0 (0-based), not -1"),
    ([0, 1.0], "must hold integers >= 0 (0-based), not 1.0"),
    ([True], "not true"),
    (["1"], "not \"1\""),
    ([1, 2, 1], "integration 1 is listed twice"),
])
def test_bad_values_name_the_asn_and_the_member(tmp_path, value, says):
    path = str(tmp_path / "bad_asn.json")
    with pytest.raises(InputError) as err:
        parse_asn(_asn(integrations=value), path=path, check_files=False)
    assert err.value.source == path
    assert "product 'p' member 'ref1_calints.fits': " in err.value.message
    assert says in err.value.message


@pytest.mark.parametrize("kind", ["science", "background"])
def test_the_key_is_for_psf_members_only(tmp_path, kind):
    data = _asn()
    data["products"][0]["members"].append({"expname": "x_calints.fits", "exptype": kind,
                                           "integrations": [0]})
    with pytest.raises(InputError, match="member 'x_calints.fits': 'integrations' is for psf "
                                         "members only"):
        parse_asn(data, path=str(tmp_path / "a_asn.json"), check_files=False)


# --------------------------------------------------------------------------- the tools

@pytest.mark.parametrize("value, says", [
    ([0, 3], ("member 'psf3_calints.fits': integration 3 does not exist (the file has 3, "
              "numbered from 0)")),
    ([-2], "member 'psf3_calints.fits': 'integrations' must hold integers >= 0"),
])
@pytest.mark.parametrize("command", ["check", "run", "stack"])
def test_a_bad_value_is_one_line_and_exit_2(small_asn, runner, tmp_path, value, says,
                                            command):
    asn = _with_integrations(small_asn, {"psf3_calints.fits": value},
                             small_asn.parent / "bad_asn.json")
    out = tmp_path / "out"
    if command == "stack":
        r = invoke(runner, stack, ["--asn", asn, "-o", tmp_path / "s.fits"], prog="coron-stack")
    else:
        r = invoke(runner, coron3, [command, asn, "-d", out, "-q"], prog="coron3")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"coron{'-stack' if command == 'stack' else '3'}: error: "
                               f"{asn}: product 'tiny_nircam' ")
    assert says in lines[0]
    assert not (tmp_path / "s.fits").exists()
    assert not out.exists() or not any(p.endswith(".fits") for p in os.listdir(out))


def test_check_accepts_the_key_and_says_what_is_used(small_asn, runner, tmp_path):
    asn = _with_integrations(small_asn, SUBSETS, small_asn.parent / "sub_asn.json")
    r = invoke(runner, coron3, ["check", asn, "-d", tmp_path / "out", "-v"], prog="coron3")
    assert r.exit_code == 0, r.stderr
    assert "psf3_calints.fits: reference exposure, 2 of its 3 integration(s)" in r.stderr
    assert "psf4_calints.fits: reference exposure, 3 integration(s)" in r.stderr


@pytest.fixture
def two_runs(small_asn, tmp_path):
    """coron3 run on the association with the integrations keys, and on a copy whose psf
    files hold only those integrations (same names, another folder)."""
    from coron_cli.pipeline import run_association

    folder = small_asn.parent
    asn_keys = _with_integrations(small_asn, SUBSETS, folder / "keys_asn.json")
    cut = tmp_path / "cut"
    cut.mkdir()
    data = json.loads(small_asn.read_text())
    for m in data["products"][0]["members"]:
        src = folder / m["expname"]
        if m["exptype"] == "psf" and SUBSETS.get(m["expname"]) is not None:
            idx = SUBSETS[m["expname"]]
            with fits.open(src) as hdul:
                write_exposure(cut / m["expname"], hdul["SCI"].data[idx],
                               err=hdul["ERR"].data[idx], dq=hdul["DQ"].data[idx],
                               primary=hdul[0].header, sci_header=hdul["SCI"].header)
        else:
            shutil.copy(src, cut / m["expname"])
    asn_cut = cut / "cut_asn.json"
    asn_cut.write_text(json.dumps(data))
    before = {p: (folder / p).read_bytes() for p in SUBSETS}
    runs = {}
    for label, asn in (("keys", asn_keys), ("cut", asn_cut)):
        out = tmp_path / label
        summary = run_association(str(asn), str(out))
        runs[label] = {p["kind"]: p["path"] for p in summary["products"]}
    assert before == {p: (folder / p).read_bytes() for p in SUBSETS}   # inputs untouched
    return runs


def test_a_run_on_subsets_equals_a_run_on_files_holding_them(two_runs):
    keys, cut = two_runs["keys"], two_runs["cut"]
    assert list(keys) == list(cut)
    for kind in keys:
        if not keys[kind].endswith(".fits") or kind == "contrast":
            continue
        a, b = (read_product(p[kind], ndims=(2, 3, 4)) for p in (keys, cut))
        for what in ("sci", "err", "dq"):
            x, y = getattr(a, what), getattr(b, what)
            assert (x is None) == (y is None), (kind, what)
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=f"{kind} {what}")
    ta = fits.getdata(keys["contrast"], "CRN_CONTRAST")
    tb = fits.getdata(cut["contrast"], "CRN_CONTRAST")
    np.testing.assert_array_equal(ta["sigma"], tb["sigma"])


def test_the_psfstack_says_which_integrations_were_used(two_runs):
    stack_keys = read_product(two_runs["keys"]["psfstack"])
    refs = stack_keys.tables["REFS"]
    assert stack_keys.sci.shape[0] == 2 + 3 + 1
    assert [(str(f), int(i)) for f, i in zip(refs["file"], refs["integration"])] == [
        ("psf3_calints.fits", 0), ("psf3_calints.fits", 2), ("psf4_calints.fits", 0),
        ("psf4_calints.fits", 1), ("psf4_calints.fits", 2), ("psf5_calints.fits", 1)]
    history = [str(h) for h in stack_keys.primary["HISTORY"]]
    assert "ref: psf3_calints.fits (integrations 0,2 only)" in history
    assert "ref: psf4_calints.fits" in history
    assert "ref: psf5_calints.fits (integrations 1 only)" in history
    # the files cut to those integrations number them from 0
    cut = read_product(two_runs["cut"]["psfstack"]).tables["REFS"]
    assert list(cut["integration"]) == [0, 1, 0, 1, 2, 0]


def test_coron_stack_asn_follows_the_key(small_asn, runner, tmp_path, two_runs):
    asn = small_asn.parent / "keys_asn.json"
    out = tmp_path / "by_hand_psfstack.fits"
    r = invoke(runner, stack, ["--asn", asn, "-o", out, "-q"], prog="coron-stack")
    assert r.exit_code == 0, r.stderr
    a, b = read_product(str(out)), read_product(two_runs["keys"]["psfstack"])
    np.testing.assert_array_equal(a.sci, b.sci)
    np.testing.assert_array_equal(a.tables["REFS"]["integration"],
                                  b.tables["REFS"]["integration"])
