"""coron3 batch's inputs (coron_cli.batch): the associations that paths, globs, folders and
list files name, the folder of each, and the temporary files a killed run can leave."""

import os

import pytest

from coron_cli.batch import batch_outdirs, find_asns, planned_temporaries
from coron_cli.errors import InputError


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """data/ with three associations and a file that is not one; the test runs in tmp_path."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("b_asn.json", "a_asn.json", "c_asn.json", "notes.json"):
        (data / name).write_text("{}")
    return data


def test_paths_globs_and_folders(folder):
    assert find_asns(["data/b_asn.json", "data/a_asn.json"]) == ["data/b_asn.json",
                                                               "data/a_asn.json"]
    assert find_asns(["data/*_asn.json"]) == ["data/a_asn.json", "data/b_asn.json",
                                             "data/c_asn.json"]
    # a folder: its *_asn.json, sorted (notes.json is not an association)
    assert find_asns(["data"]) == ["data/a_asn.json", "data/b_asn.json", "data/c_asn.json"]
    # a glob matching folders takes their associations
    assert find_asns(["dat*"]) == ["data/a_asn.json", "data/b_asn.json", "data/c_asn.json"]
    # a path given as it is, even without the _asn.json ending
    assert find_asns(["data/notes.json"]) == ["data/notes.json"]


def test_the_same_file_is_run_once(folder):
    got = find_asns(["data/a_asn.json", "data", "./data/../data/a_asn.json",
                     os.path.abspath("data/b_asn.json")])
    assert got == ["data/a_asn.json", "data/b_asn.json", "data/c_asn.json"]


def test_list_files(folder, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    # relative lines are taken from the list's folder; comments and blank lines skipped
    (lists / "asns.txt").write_text("# tonight\n../data/c_asn.json\n\n  ../data/a_asn.json  \n")
    expect = [os.path.join("lists", "../data/c_asn.json"),
              os.path.join("lists", "../data/a_asn.json")]
    assert find_asns(["@lists/asns.txt"]) == expect
    assert find_asns(["lists/asns.txt"]) == expect                   # any .txt file
    (lists / "all.txt").write_text(f"{folder}\n")                     # a folder, absolute
    assert find_asns(["@lists/all.txt"]) == [str(folder / n) for n in
                                             ("a_asn.json", "b_asn.json", "c_asn.json")]
    (lists / "globs.txt").write_text("../data/[ab]_asn.json\n")
    assert [os.path.basename(p) for p in find_asns(["@lists/globs.txt"])] == ["a_asn.json",
                                                                            "b_asn.json"]


@pytest.mark.parametrize("items, message", [
    (["data/x_asn.json"], "data/x_asn.json: no such file"),
    (["data/x*_asn.json"], "data/x*_asn.json: matches no file"),
    (["empty"], "empty: folder holds no association (*_asn.json)"),
    (["@missing.txt"], "missing.txt: no such file"),
    (["@"], "@: expected @FILE, a file listing associations"),
    (["@comments.txt"], "comments.txt: lists no association"),
    (["@bad.txt"], "bad.txt: nothing.json: no such file"),
    ([], "no association given (ASN files, globs, folders or @list.txt)"),
])
def test_what_names_no_association_is_an_input_error(folder, tmp_path, items, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "comments.txt").write_text("# nothing yet\n\n")
    (tmp_path / "bad.txt").write_text("nothing.json\n")
    with pytest.raises(InputError) as e:
        find_asns(items)
    assert e.value.format() == message
    assert e.value.exit_code == 2


def test_each_association_gets_the_folder_of_its_name(tmp_path):
    assert batch_outdirs(["data/jw1_coron3_asn.json", "/x/jw2_asn.json"], "out") == {
        "data/jw1_coron3_asn.json": os.path.join("out", "jw1_coron3_asn"),
        "/x/jw2_asn.json": os.path.join("out", "jw2_asn")}
    with pytest.raises(InputError) as e:
        batch_outdirs(["a/jw1_asn.json", "b/jw1_asn.json"], "out")
    assert e.value.format() == ("b/jw1_asn.json: has the name of a/jw1_asn.json: both would "
                                "write into out/jw1_asn; rename one")


def test_planned_temporaries_are_only_those_of_the_products(small_asn, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = [out / ".tiny_nircam_psfstack.fits.abc123.part",
            out / ".targ1_c1001_psfsub.fits.x.part", out / ".tiny_nircam_snr.png.q.part"]
    others = [out / ".other.fits.abc.part", out / "tiny_nircam_psfstack.fits",
              out / ".tiny_nircam_psfstack.fits.part.keep"]
    for p in mine + others:
        p.write_bytes(b"")
    assert sorted(planned_temporaries(str(small_asn), str(out))) == sorted(map(str, mine))
    # an association that cannot be read has none
    assert planned_temporaries(str(tmp_path / "missing_asn.json"), str(out)) == []
