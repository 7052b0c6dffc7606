"""Bad input gets one line on stderr, exit code 2, no traceback and no output (SPEC section 4).

Every case of the corpus below builds a broken input next to a valid data set
(the ``small_asn`` fixture), runs one command in process through
:func:`coron_cli.cli.common.run` (which holds the error policy and calls
``sys.exit``), and checks:

- exit code 2;
- stderr is exactly one non-empty line naming the file (or option) and the problem;
- no "Traceback" on stdout or stderr;
- no new file anywhere in the test folder, hidden temporary files included.

A few cases go through real subprocesses of the installed console scripts.
"""

import gzip
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from astropy.io import fits

from coron_cli.cli import align, coron3, hlsp, klip, stack
from tests.helpers import policy_invoker, write_exposure

BIN = os.path.join(os.path.dirname(sys.executable))
PROGS = {stack: "coron-stack", align: "coron-align", klip: "coron-klip", hlsp: "coron-hlsp",
         coron3: "coron3"}


# ---------------------------------------------------------------------------------------------
# harness


@pytest.fixture
def invoke(runner):
    """Run a command module's click object under coron's error policy in a CliRunner.

    ``invoke(klip, [...], input=b"")`` -> click.testing.Result. The signal
    handlers that :func:`run` installs are restored afterwards.
    """
    with policy_invoker(runner, PROGS) as _invoke:
        yield _invoke


def listing(folder):
    """Every file and folder under `folder`, hidden ones included, as relative paths."""
    out = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(root, name), folder))
    return out


def assert_one_line_error(result, tokens):
    stderr = result.stderr
    stdout = result.stdout
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    assert result.exit_code == 2, (result.exit_code, stderr, result.exception)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.strip(), stderr
    assert "error" in line
    assert "internal error" not in line, line
    for token in tokens:
        assert token.lower() in line.lower(), f"{token!r} not in {line!r}"
    return line


class Kit:
    """The valid small data set plus writers of broken variants, all in one folder."""

    def __init__(self, folder, invoke):
        self.dir = folder
        self.invoke = invoke
        self.asn = str(folder / "tiny_asn.json")
        self.out = folder / "out"
        self.out.mkdir()
        self._cache = {}

    def p(self, name):
        return str(self.dir / name)

    def o(self, name="result.fits"):
        return str(self.out / name)

    @property
    def sci(self):
        return self.p("targ1_calints.fits")

    @property
    def psfs(self):
        return [self.p(f"psf{i}_calints.fits") for i in (3, 4, 5)]

    def _tool(self, key, module, args):
        if key not in self._cache:
            result = self.invoke(module, args)
            assert result.exit_code == 0, result.stderr
            self._cache[key] = args[args.index("-o") + 1]
        return self._cache[key]

    @property
    def psfstack(self):
        return self._tool("stack", stack, self.psfs + ["-o", self.p("tiny_psfstack.fits")])

    @property
    def psfalign(self):
        return self._tool("align", align, [self.sci, self.psfstack, "-o",
                                           self.p("targ1_c1001_psfalign.fits")])

    @property
    def psfsub(self):
        return self._tool("klip", klip, [self.sci, self.psfalign, "--truncate", "5", "-o",
                                         self.p("targ1_c1001_psfsub.fits")])

    def exposure(self, name, sci, **kw):
        return write_exposure(self.dir / name, sci, **kw)

    def cube(self, nint=3, shape=(32, 32), seed=0):
        rng = np.random.default_rng(seed)
        return rng.normal(100.0, 1.0, (nint,) + shape).astype(np.float32)

    def hdus(self, name, *hdus):
        fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(self.dir / name)
        return self.p(name)

    def raw(self, name, data):
        path = self.dir / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    def asn_file(self, name, data):
        path = self.dir / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return str(path)

    def asn_data(self):
        with open(self.asn) as fh:
            return json.load(fh)

    def members(self, *pairs):
        """An ASN dict whose single product has these (exptype, expname) members."""
        return {"asn_id": "c1001", "products": [
            {"name": "bad", "members": [{"exptype": t, "expname": n} for t, n in pairs]}]}


@pytest.fixture
def kit(small_asn, tmp_path, invoke, monkeypatch):
    k = Kit(tmp_path, invoke)
    monkeypatch.chdir(k.out)  # default output names land here
    return k


# ---------------------------------------------------------------------------------------------
# the corpus: name -> builder(kit) -> Case


@dataclass
class Case:
    module: object
    args: list
    tokens: list                       # substrings the one error line must contain
    input: bytes = None                # stdin


CASES = {}


def case(name):
    def register(func):
        assert name not in CASES
        CASES[name] = func
        return func
    return register


# --- files that are not usable FITS -------------------------------------------------------------

@case("missing-file-stack")
def _(k):
    return Case(stack, [k.p("nothere_calints.fits"), "-o", k.o()],
                ["nothere_calints.fits", "no such file"])


@case("missing-file-klip-psfalign")
def _(k):
    return Case(klip, [k.sci, k.p("gone_psfalign.fits"), "-o", k.o()],
                ["gone_psfalign.fits", "no such file"])


@case("not-fits")
def _(k):
    bad = k.raw("text_calints.fits", "this is not a FITS file\n" * 20)
    return Case(stack, [bad, *k.psfs, "-o", k.o()], ["text_calints.fits", "FITS"])


@case("truncated-fits")
def _(k):
    with open(k.sci, "rb") as fh:
        data = fh.read()
    bad = k.raw("cut_calints.fits", data[: len(data) // 2 + 100])
    return Case(align, [bad, k.psfstack, "-o", k.o()], ["cut_calints.fits", "truncated"])


@case("truncated-fits-header")
def _(k):
    with open(k.sci, "rb") as fh:
        data = fh.read()
    bad = k.raw("head_calints.fits", data[:1000])
    return Case(stack, [bad, "-o", k.o()], ["head_calints.fits", "FITS"])


@case("gzip-damaged")
def _(k):
    with open(k.sci, "rb") as fh:
        packed = bytearray(gzip.compress(fh.read()))
    mid = len(packed) // 2
    packed[mid: mid + 64] = bytes((b ^ 0x5A) for b in packed[mid: mid + 64])
    bad = k.raw("zipped_calints.fits.gz", bytes(packed))
    return Case(align, [bad, k.psfstack, "-o", k.o()], ["zipped_calints.fits.gz", "FITS"])


@case("gzip-truncated")
def _(k):
    with open(k.sci, "rb") as fh:
        packed = gzip.compress(fh.read())
    bad = k.raw("short_calints.fits.gz", packed[: len(packed) // 3])
    return Case(stack, [bad, "-o", k.o()], ["short_calints.fits.gz"])


@case("empty-file")
def _(k):
    bad = k.raw("empty_calints.fits", b"")
    return Case(stack, [*k.psfs, bad, "-o", k.o()], ["empty_calints.fits", "empty"])


@case("directory-as-file")
def _(k):
    (k.dir / "folder_calints.fits").mkdir()
    return Case(klip, [k.p("folder_calints.fits"), k.psfalign, "-o", k.o()],
                ["folder_calints.fits", "directory"])


@case("stdin-empty-klip")
def _(k):
    return Case(klip, ["-", k.psfalign, "-o", k.o()], ["standard input", "empty"], input=b"")


# --- FITS files with the wrong content ---------------------------------------------------------

@case("no-sci-data")
def _(k):
    bad = k.hdus("nosci_calints.fits", fits.ImageHDU(np.ones((4, 4), np.float32), name="OTHER"))
    return Case(stack, [bad, "-o", k.o()], ["nosci_calints.fits", "no SCI"])


@case("sci-extension-without-data")
def _(k):
    bad = k.hdus("hollow_calints.fits", fits.ImageHDU(name="SCI"))
    return Case(align, [bad, k.psfstack, "-o", k.o()], ["hollow_calints.fits", "SCI"])


@case("sci-is-a-string-table")
def _(k):
    col = fits.Column(name="text", format="10A", array=np.array(["abc", "def"]))
    table = fits.BinTableHDU.from_columns([col], name="SCI")
    bad = k.hdus("strings_calints.fits", table)
    return Case(stack, [bad, "-o", k.o()], ["strings_calints.fits", "SCI"])


@case("sci-complex")
def _(k):
    try:
        hdu = fits.ImageHDU(np.ones((2, 8, 8), np.complex64), name="SCI")
        bad = k.hdus("complex_calints.fits", hdu)
    except Exception as exc:  # astropy has no complex image HDU
        pytest.skip(f"astropy cannot write a complex image HDU ({type(exc).__name__}: {exc})")
    return Case(stack, [bad, "-o", k.o()], ["complex_calints.fits"])


@case("sci-bogus-bitpix")
def _(k):
    with open(k.sci, "rb") as fh:
        data = bytearray(fh.read())
    ext = data.index(b"XTENSION")
    card = data.index(b"BITPIX  =", ext)
    data[card: card + 80] = fits.Card("BITPIX", 24).image.encode()
    bad = k.raw("bitpix_calints.fits", bytes(data))
    return Case(stack, [bad, "-o", k.o()], ["bitpix_calints.fits", "FITS"])


@case("err-shape-differs")
def _(k):
    cube = k.cube()
    bad = k.exposure("errshape_calints.fits", cube, err=np.ones((3, 16, 16)))
    return Case(align, [bad, k.psfstack, "-o", k.o()], ["errshape_calints.fits", "ERR shape"])


@case("err-transposed")
def _(k):
    cube = k.cube(nint=2, shape=(24, 32))
    bad = k.exposure("errT_calints.fits", cube, err=np.ones((2, 32, 24)))
    return Case(stack, [bad, "-o", k.o()], ["errT_calints.fits", "ERR shape"])


@case("dq-transposed")
def _(k):
    cube = k.cube(nint=1, shape=(24, 32))
    bad = k.exposure("dqT_calints.fits", cube, dq=np.zeros((32, 24), np.uint32))
    return Case(stack, [bad, "-o", k.o()], ["dqT_calints.fits", "DQ shape"])


@case("dq-shape-differs")
def _(k):
    cube = k.cube()
    bad = k.exposure("dqshape_calints.fits", cube, dq=np.zeros((2, 32, 32), np.uint32))
    return Case(stack, [*k.psfs, bad, "-o", k.o()], ["dqshape_calints.fits", "DQ shape"])


@case("dq-float")
def _(k):
    cube = k.cube()
    bad = k.exposure("dqfloat_calints.fits", cube, dq=np.zeros(cube.shape, np.float32))
    return Case(klip, [bad, k.psfalign, "-o", k.o()], ["dqfloat_calints.fits", "DQ", "integer"])


@case("sci-1d")
def _(k):
    bad = k.hdus("line_calints.fits", fits.ImageHDU(np.ones(64, np.float32), name="SCI"))
    return Case(stack, [bad, "-o", k.o()], ["line_calints.fits", "1-D"])


@case("sci-5d")
def _(k):
    bad = k.hdus("five_calints.fits",
                 fits.ImageHDU(np.ones((2, 1, 2, 8, 8), np.float32), name="SCI"))
    return Case(align, [bad, k.psfstack, "-o", k.o()], ["five_calints.fits", "5-D"])


# --- frames that do not match ------------------------------------------------------------------

@case("frame-size-stack")
def _(k):
    bad = k.exposure("small_calints.fits", k.cube(shape=(24, 24)))
    return Case(stack, [*k.psfs, bad, "-o", k.o()], ["small_calints.fits", "24x24"])


@case("frame-size-align")
def _(k):
    bad = k.exposure("small_calints.fits", k.cube(shape=(24, 24)))
    return Case(align, [bad, k.psfstack, "-o", k.o()], ["small_calints.fits", "pixels"])


@case("frame-size-klip")
def _(k):
    bad = k.exposure("small_calints.fits", k.cube(shape=(24, 24)))
    return Case(klip, [bad, k.psfalign, "-o", k.o()], ["small_calints.fits", "pixels"])


@case("psfalign-3d-to-klip")
def _(k):
    return Case(klip, [k.sci, k.psfstack, "-o", k.o()], ["tiny_psfstack.fits", "3-D", "4-D"])


@case("psfalign-other-nints")
def _(k):
    bad = k.exposure("two_calints.fits", k.cube(nint=2))
    return Case(klip, [bad, k.psfalign, "-o", k.o()],
                ["targ1_c1001_psfalign.fits", "integration"])


# --- all pixels flagged ------------------------------------------------------------------------

@case("all-flagged-dq")
def _(k):
    cube = k.cube()
    bad = k.exposure("flagged_calints.fits", cube, dq=np.ones(cube.shape, np.uint32))
    return Case(klip, [bad, k.psfalign, "-o", k.o()], ["flagged_calints.fits", "flagged"])


@case("all-nan-sci-align")
def _(k):
    bad = k.exposure("nan_calints.fits", np.full((3, 32, 32), np.nan))
    return Case(align, [bad, k.psfstack, "-o", k.o()], ["nan_calints.fits", "not finite"])


@case("all-nan-reference-stack")
def _(k):
    bad = k.exposure("nanref_calints.fits", np.full((2, 32, 32), np.nan))
    return Case(stack, [*k.psfs, bad, "-o", k.o()], ["nanref_calints.fits", "flagged"])


@case("all-nan-image-hlsp")
def _(k):
    bad = k.exposure("nan_psfsub.fits", np.full((32, 32), np.nan))
    return Case(hlsp, [bad, "-o", k.o("a_snr.fits"), "--contrast-output",
                       k.o("a_contrast.fits")], ["nan_psfsub.fits", "finite"])


# --- option values -----------------------------------------------------------------------------

@pytest.fixture(params=["0", "-3", "abc", "5,x", ""], ids=["zero", "negative", "word",
                                                           "list-with-word", "empty"])
def bad_truncate(request):
    return request.param


@case("truncate-klip")
def _(k, truncate="0"):
    return Case(klip, [k.sci, k.psfalign, "-o", k.o(), f"--truncate={truncate}"],
                ["--truncate"])


@case("truncate-coron3")
def _(k, truncate="0"):
    return Case(coron3, ["run", k.asn, "--outdir", str(k.out), "--truncate", truncate],
                ["--truncate"])


@case("exclude-malformed")
def _(k):
    return Case(klip, [k.sci, k.psfalign, "-o", k.o(), "--exclude", "1,2"], ["--exclude"])


@case("star-flux-negative")
def _(k):
    return Case(hlsp, [k.psfsub, "--star-flux", "-1", "-o", k.o("a_snr.fits"),
                       "--contrast-output", k.o("a_contrast.fits")], ["--star-flux", "positive"])


# --- output that cannot be written -------------------------------------------------------------

@case("output-folder-missing")
def _(k):
    return Case(stack, [*k.psfs, "-o", k.p("nowhere/x_psfstack.fits")],
                ["nowhere", "does not exist"])


@case("output-folder-missing-klip")
def _(k):
    return Case(klip, [k.sci, k.psfalign, "-o", k.p("nowhere/x_psfsub.fits")],
                ["nowhere", "does not exist"])


@case("outdir-cannot-be-created-coron3")
def _(k):
    blocker = k.p("a_file")
    with open(blocker, "w") as fh:
        fh.write("not a folder\n")
    return Case(coron3, ["run", k.asn, "--outdir", os.path.join(blocker, "products")],
                ["products", "cannot be created"])


@case("output-not-writable")
def _(k):
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux /proc")
    return Case(stack, [*k.psfs, "-o", "/proc/coron_test_out.fits"],
                ["/proc/coron_test_out.fits"])


@case("output-not-writable-hlsp")
def _(k):
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux /proc")
    return Case(hlsp, [k.psfsub, "-o", "/proc/coron_test_snr.fits", "--contrast-output",
                       k.o("a_contrast.fits")], ["/proc/coron_test_snr.fits"])


@case("outdir-not-writable-coron3")
def _(k):
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux /proc")
    return Case(coron3, ["run", k.asn, "--outdir", "/proc"], ["/proc"])


# --- association files -------------------------------------------------------------------------

@case("asn-not-json")
def _(k):
    bad = k.asn_file("broken_asn.json", '{"asn_id": "c1", "products": [')
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["broken_asn.json", "JSON"])


@case("asn-not-utf8")
def _(k):
    bad = k.raw("binary_asn.json", b"\xff\xfe\x00\x81garbage")
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["binary_asn.json", "JSON"])


@case("asn-is-a-list")
def _(k):
    bad = k.asn_file("list_asn.json", [k.asn_data()])
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["list_asn.json", "object"])


@case("asn-no-products")
def _(k):
    data = k.asn_data()
    data["products"] = []
    bad = k.asn_file("noprod_asn.json", data)
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["noprod_asn.json", "no products"])


@case("asn-products-missing")
def _(k):
    bad = k.asn_file("nokey_asn.json", {"asn_id": "c1001"})
    return Case(stack, ["--asn", bad, "-o", k.o()], ["nokey_asn.json", "products"])


@case("asn-no-science")
def _(k):
    bad = k.asn_file("nosci_asn.json", k.members(("psf", "psf3_calints.fits"),
                                                 ("psf", "psf4_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["nosci_asn.json", "no science"])


@case("asn-no-psf")
def _(k):
    bad = k.asn_file("nopsf_asn.json", k.members(("science", "targ1_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["nopsf_asn.json", "no psf"])


@case("asn-no-psf-stack")
def _(k):
    bad = k.asn_file("nopsf_asn.json", k.members(("science", "targ1_calints.fits")))
    return Case(stack, ["--asn", bad], ["nopsf_asn.json", "no psf"])


@case("asn-missing-member")
def _(k):
    bad = k.asn_file("lost_asn.json", k.members(("science", "targ1_calints.fits"),
                                                ("psf", "psf3_calints.fits"),
                                                ("psf", "ghost_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)],
                ["lost_asn.json", "ghost_calints.fits", "not found"])


@case("asn-same-file-twice")
def _(k):
    bad = k.asn_file("twice_asn.json", k.members(("science", "targ1_calints.fits"),
                                                 ("psf", "psf3_calints.fits"),
                                                 ("PSF", "./psf3_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)],
                ["twice_asn.json", "psf3_calints.fits", "twice"])


@case("asn-members-not-a-list")
def _(k):
    data = k.asn_data()
    data["products"][0]["members"] = {"exptype": "science", "expname": "targ1_calints.fits"}
    bad = k.asn_file("dict_asn.json", data)
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["dict_asn.json", "members"])


@case("asn-expname-not-a-string")
def _(k):
    data = k.asn_data()
    data["products"][0]["members"][0]["expname"] = 42
    bad = k.asn_file("number_asn.json", data)
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["number_asn.json", "expname"])


@case("asn-missing-member-up")
def _(k):
    bad = k.asn_file("up_asn.json", k.members(("science", "../x_calints.fits"),
                                              ("psf", "psf3_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["up_asn.json", "../x_calints.fits",
                                                               "not found"])


@case("asn-same-file-twice-absolute")
def _(k):
    bad = k.asn_file("twice_asn.json", k.members(("science", k.sci), ("science", k.sci),
                                                 ("psf", "psf3_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["twice_asn.json", "twice"])


@case("asn-unknown-exptype-only")
def _(k):
    bad = k.asn_file("odd_asn.json", k.members(("flat", "targ1_calints.fits"),
                                               ("dark", "psf3_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["odd_asn.json", "no science"])


@case("asn-member-not-fits")
def _(k):
    k.raw("junk_calints.fits", "SIMPLE  = nonsense")
    bad = k.asn_file("junk_asn.json", k.members(("science", "targ1_calints.fits"),
                                                ("psf", "junk_calints.fits")))
    return Case(coron3, ["run", bad, "--outdir", str(k.out)], ["junk_calints.fits", "FITS"])


@case("asn-missing")
def _(k):
    return Case(coron3, ["run", k.p("absent_asn.json"), "--outdir", str(k.out)],
                ["absent_asn.json", "no such file"])


TRUNCATE_CASES = {"truncate-klip", "truncate-coron3"}


def _check(kit, invoke, built):
    if sys.platform.startswith("linux"):
        proc_before = set(os.listdir("/proc"))
    before = listing(kit.dir)
    result = invoke(built.module, built.args, input=built.input)
    assert_one_line_error(result, built.tokens)
    assert listing(kit.dir) == before, listing(kit.dir) ^ before
    if sys.platform.startswith("linux"):
        assert not {p for p in set(os.listdir("/proc")) - proc_before
                    if p.startswith(".") or p.startswith("coron")}
    return result


@pytest.mark.parametrize("name", sorted(set(CASES) - TRUNCATE_CASES))
def test_bad_input(kit, invoke, name):
    _check(kit, invoke, CASES[name](kit))


@pytest.mark.parametrize("name", sorted(TRUNCATE_CASES))
def test_bad_truncate(kit, invoke, name, bad_truncate):
    _check(kit, invoke, CASES[name](kit, truncate=bad_truncate))


def test_corpus_is_large():
    assert len(CASES) - len(TRUNCATE_CASES) + 5 * len(TRUNCATE_CASES) >= 30


# ---------------------------------------------------------------------------------------------
# not errors


def test_unknown_exptype_beside_valid_members_only_warns(kit, invoke):
    data = kit.asn_data()
    data["products"][0]["members"].append({"exptype": "flat", "expname": "psf4_calints.fits"})
    data["products"][0]["members"] = [m for m in data["products"][0]["members"]
                                      if m["expname"] != "targ2_calints.fits"]
    path = kit.asn_file("warn_asn.json", data)
    result = invoke(coron3, ["run", path, "--outdir", str(kit.out), "--truncate", "3"])
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert any("'flat'" in line and "psf4_calints.fits" in line for line in warnings), \
        result.stderr
    assert os.path.exists(kit.out / "tiny_nircam_snr.fits")
    # the one science member left, the three psf members (each of 3 integrations) stacked
    # once each, the 'flat' member not used
    assert sorted(os.listdir(kit.out)) == sorted(
        ["targ1_c1001_psfalign.fits", "targ1_c1001_psfsub.fits", "tiny_nircam_psfstack.fits",
         "tiny_nircam_i2d.fits", "tiny_nircam_snr.fits", "tiny_nircam_contrast.fits"])
    with fits.open(kit.out / "tiny_nircam_psfstack.fits") as hdul:
        assert list(hdul["REFS"].data["file"]) == [f"psf{i}_calints.fits" for i in (3, 4, 5)
                                                   for _ in range(3)]
    with fits.open(kit.out / "targ1_c1001_psfsub.fits") as hdul:
        assert hdul["SCI"].header["KLMODES"] == "3"


def test_zero_negative_nan_err_give_nan_snr(kit, invoke):
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 1.0, (16, 16)).astype(np.float32)
    err = np.ones_like(img)
    err[2, 3] = 0.0
    err[5, 6] = -1.0
    err[7, 8] = np.nan
    err[9, :] = 0.0
    path = kit.exposure("odd_psfsub.fits", img, err=err)
    snr_path, con_path = kit.o("odd_snr.fits"), kit.o("odd_contrast.fits")
    result = invoke(hlsp, [path, "-o", snr_path, "--contrast-output", con_path])
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    with fits.open(snr_path) as hdul:
        snr = hdul["SCI"].data.astype(np.float64)
    assert snr.shape == img.shape
    bad = ~(np.isfinite(err) & (err > 0))
    assert np.isnan(snr[bad]).all()
    np.testing.assert_allclose(snr[~bad], img[~bad] / err[~bad], rtol=1e-5)
    with fits.open(con_path) as hdul:
        assert "CONTRAST" in hdul and "CRN_CONTRAST" in hdul
        table = hdul["CRN_CONTRAST"].data
    # the noise profile leaves the pixels without a usable ERR out: annuli 2 pixels wide
    # about the frame centre (no star position given), sample standard deviation
    assert len(table) >= 5 and np.all(np.diff(table["radius"]) == 2)
    yy, xx = np.indices(img.shape)
    radius = np.hypot(xx - 7.5, yy - 7.5)
    for row in table:
        ring = (radius >= row["radius"] - 1) & (radius < row["radius"] + 1) & ~bad
        assert row["npix"] == ring.sum(), row
        np.testing.assert_allclose(row["sigma"], np.std(img[ring], ddof=1), rtol=1e-5)


def test_all_err_zero_gives_all_nan_snr(kit, invoke):
    img = np.random.default_rng(4).normal(0.0, 1.0, (16, 16)).astype(np.float32)
    path = kit.exposure("zero_psfsub.fits", img, err=np.zeros_like(img))
    result = invoke(hlsp, [path, "-o", kit.o("z_snr.fits"), "--contrast-output",
                           kit.o("z_contrast.fits")])
    assert "Traceback" not in result.stderr
    assert result.exit_code == 0, result.stderr
    with fits.open(kit.o("z_snr.fits")) as hdul:
        assert np.isnan(hdul["SCI"].data).all()
        assert hdul["SCI"].data.shape == img.shape


def test_one_nan_frame_among_good_ones(kit, invoke):
    """An integration that is all NaN: processed or refused in one line, never a crash; when
    processed, the frame stays flagged DO_NOT_USE in the output DQ (SPEC section 1)."""
    with fits.open(kit.sci) as hdul:
        cube = hdul["SCI"].data.copy()
    cube[1] = np.nan
    path = kit.exposure("holey_calints.fits", cube)
    aligned = kit.o("holey_psfalign.fits")
    result = invoke(align, [path, kit.psfstack, "-o", aligned])
    assert "Traceback" not in result.stderr
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        assert_one_line_error(result, ["holey_calints.fits"])
        assert not os.path.exists(aligned)
        return
    sub = kit.o("holey_psfsub.fits")
    result = invoke(klip, [path, aligned, "--truncate", "3", "-o", sub])
    assert result.exit_code == 0, result.stderr
    with fits.open(sub) as hdul:
        dq = hdul["DQ"].data
    assert (dq[1] & 1).all()
    assert not (dq[0] & 1).all() and not (dq[2] & 1).all()


# ---------------------------------------------------------------------------------------------
# real processes: no traceback reaches a real stderr


def _script(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return path


SUBPROCESS_CASES = ["missing-file-klip-psfalign", "not-fits", "asn-not-json",
                    "output-not-writable", "stdin-empty-klip"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_subprocess(kit, name):
    built = CASES[name](kit)
    before = listing(kit.dir)
    cmd = [_script(PROGS[built.module])] + [str(a) for a in built.args]
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.run(cmd, input=built.input if built.input is not None else b"",
                          capture_output=True, cwd=kit.out, env=env, timeout=120)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    assert proc.returncode == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), stderr
    assert lines[0].startswith(PROGS[built.module] + ": error: "), stderr
    for token in built.tokens:
        assert token.lower() in lines[0].lower()
    assert proc.stdout == b""
    assert listing(kit.dir) == before


def test_klip_truncate_word_subprocess(kit):
    cmd = [_script("coron-klip"), kit.sci, kit.psfalign, "--truncate", "abc", "-o", kit.o()]
    before = listing(kit.dir)
    proc = subprocess.run(cmd, capture_output=True, cwd=kit.out, timeout=120,
                          env=dict(os.environ, NO_COLOR="1"))
    stderr = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and "--truncate" in stderr
    assert listing(kit.dir) == before
