"""Helpers shared by test files in several folders (fixtures live in tests/conftest.py).

Test modules import from here, never from one another: paths of the repository and
of the real-data crops, writers of small synthetic exposures, a CliRunner wrapper
that applies coron's error policy, and small synthetic KLIP inputs.
"""

import contextlib
import hashlib
import json
import os

import numpy as np
from astropy.io import fits

#: the repository (the folder holding tests/, man/, examples/)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the real JWST crops (tests/data/README.md)
DATA = os.path.join(ROOT, "tests", "data")
AUMIC = os.path.join(DATA, "aumic-f356w")
AUMIC_ASN = os.path.join(AUMIC, "jw01184-c1001_coron3_asn.json")
MIRI = os.path.join(DATA, "hd106906-miri")
MIRI_ASN = os.path.join(MIRI, "jw01277-c1001_coron3_asn.json")


# --------------------------------------------------------------------------- files

def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def gaussian_psf(shape, cx, cy, sigma=2.0, halo=0.3):
    """A smooth star image with a halo and rings (noiseless)."""
    y, x = np.indices(shape, dtype=np.float64)
    r = np.hypot(x - cx, y - cy)
    return (np.exp(-r ** 2 / (2 * sigma ** 2))
            + halo * np.exp(-r ** 2 / (2 * (3 * sigma) ** 2)) * np.cos(r / 1.5) ** 2)


def gaussian(shape, x, y, sigma):
    """A unit-peak circular Gaussian centred on (x, y)."""
    yy, xx = np.indices(shape, dtype=np.float64)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def write_exposure(path, sci, err=None, dq=None, primary=None, sci_header=None):
    """Write a JWST-style SCI/ERR/DQ file."""
    sci = np.asarray(sci, dtype=np.float32)
    hdus = [fits.PrimaryHDU(header=primary)]
    hdus.append(fits.ImageHDU(sci, header=sci_header, name="SCI"))
    if err is not False:
        hdus.append(fits.ImageHDU(np.ones_like(sci) if err is None else
                                  np.asarray(err, dtype=np.float32), name="ERR"))
    if dq is not False:
        hdus.append(fits.ImageHDU(np.zeros(sci.shape, np.uint32) if dq is None else dq,
                                  name="DQ"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


def write_map(path, tmap, extra_primary_image=None):
    """Write a transmission map (SCI image), optionally with another image in the primary."""
    hdus = [fits.PrimaryHDU(extra_primary_image)]
    hdus.append(fits.ImageHDU(np.asarray(tmap, np.float32), name="SCI"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


def miri_copy(tmp_path):
    """The MIRI crop's association in a temporary folder (symlinked members)."""
    for name in os.listdir(MIRI):
        if name.endswith(".gz"):
            os.symlink(os.path.join(MIRI, name), tmp_path / name)
    with open(MIRI_ASN) as fh:
        asn = json.load(fh)
    path = tmp_path / "asn.json"
    path.write_text(json.dumps(asn))
    return str(path)


# --------------------------------------------------------------------------- commands

def modules_loaded(code, cwd=None):
    """The names of the modules in ``sys.modules`` after `code` runs in a fresh Python."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted("
                          "sys.modules)))"], cwd=cwd, capture_output=True, text=True,
                         check=True, timeout=120)
    return set(out.stdout.split())


@contextlib.contextmanager
def policy_invoker(runner, progs):
    """``with policy_invoker(runner, {module: prog}) as invoke``: ``invoke(module, args,
    input=None)`` runs a command module's click object under coron's error policy
    (:func:`coron_cli.cli.common.run`) in `runner`, as its program name; the signal
    handlers that :func:`run` installs are restored on leaving."""
    import signal

    import click

    from coron_cli.cli.common import run

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGXFSZ, signal.SIGINT)}

    def _invoke(module, args, input=None):
        prog = progs[module]
        args = [str(a) for a in args]
        wrapper = click.Command(prog, callback=lambda: run(module.cli, prog, args))
        return runner.invoke(wrapper, [], input=input)

    try:
        yield _invoke
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def invoke(runner, module, args, prog="coron-test", **kw):
    """Invoke a command module's click object through coron's error policy
    (:func:`coron_cli.cli.common.run`) in a CliRunner; arguments are made strings."""
    import click

    from coron_cli.cli.common import run

    args = [str(a) for a in args]

    @click.command()
    def wrapper():
        run(module.cli, prog, args)

    return runner.invoke(wrapper, [], catch_exceptions=False, **kw)


def run_in_pty(argv, cwd, env=None):
    """Run a command with a pseudo-terminal as stdin/stdout/stderr; (exit code, output)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, os.environ if env is None else env)
        finally:
            os._exit(127)
    out = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def option_flags(command):
    """Every flag (``-o``, ``--output``, secondary ``--no-x``) of a click command's
    visible options, and the metavars of its arguments."""
    import click

    flags, args = set(), []
    for p in command.get_params(click.Context(command)):      # --help included
        if isinstance(p, click.Option):
            if not p.hidden:
                flags |= set(p.opts) | set(p.secondary_opts)
        elif isinstance(p, click.Argument):
            try:
                args.append(p.make_metavar(click.Context(command)))
            except TypeError:                                   # click < 8.2
                args.append(p.make_metavar())
    return flags, args


# --------------------------------------------------------------------------- KLIP inputs

def klip_pair(rng, refs_extra=None, shape=(64, 64), nref=8, nint=2):
    """A science exposure of speckles and its aligned references (noiseless Products)."""
    from coron_cli.products import Product

    ny, nx = shape
    modes = np.stack([gaussian(shape, 31.6 + rng.normal(0, 2), 32.2 + rng.normal(0, 2),
                               2 + 2 * rng.random()) for _ in range(nref)])
    refs = np.einsum("rk,kyx->ryx", rng.normal(size=(nref, nref)), modes) * 100
    if refs_extra is not None:
        refs = np.concatenate([refs, refs_extra])
    sci = np.einsum("k,kyx->yx", rng.normal(size=len(refs)), refs)
    hdr = fits.Header({"STARCENX": 31.6, "STARCENY": 32.2})
    science = Product(sci=np.repeat(sci[None], nint, 0).astype(np.float32),
                      err=np.ones((nint, ny, nx), np.float32), sci_header=hdr, path="sci")
    align = Product(sci=np.repeat(refs[None], nint, 0).astype(np.float32),
                    err=np.ones((nint, len(refs), ny, nx), np.float32), sci_header=hdr,
                    path="align")
    return science, align
