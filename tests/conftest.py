"""Shared fixtures: a CliRunner, synthetic exposures, the small simulated data set and one
--contrast run of it. Functions test files share are in tests/helpers.py."""

import json
import os

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from tests.helpers import gaussian_psf, sha256, write_exposure


@pytest.fixture
def runner():
    """click's CliRunner with stderr kept apart from stdout."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates them
        return CliRunner()


@pytest.fixture
def make_exposure(tmp_path):
    """Factory writing a small noisy exposure; returns its path."""
    rng = np.random.default_rng(42)

    def make(name, nint=2, shape=(32, 32), cx=15.7, cy=16.2, scale=1000.0, noise=1.0, **kw):
        cube = np.stack([scale * gaussian_psf(shape, cx, cy) for _ in range(nint)])
        cube = cube + rng.normal(0, noise, cube.shape)
        hdr = fits.Header({"CRPIX1": cx + 1, "CRPIX2": cy + 1})
        return write_exposure(tmp_path / name, cube, err=np.full(cube.shape, noise),
                              sci_header=hdr, **kw)

    return make


@pytest.fixture
def small_asn(tmp_path):
    """Two science and three psf exposures plus an ASN, in tmp_path."""
    rng = np.random.default_rng(7)
    shape = (32, 32)
    members = []
    for i, (kind, dx, dy, roll) in enumerate([("science", 0.1, -0.2, 0.0),
                                              ("science", -0.15, 0.05, 10.0),
                                              ("psf", 0.2, 0.3, 0.0), ("psf", -0.3, 0.1, 0.0),
                                              ("psf", 0.0, -0.25, 0.0)]):
        name = f"{'targ' if kind == 'science' else 'psf'}{i + 1}_calints.fits"
        cube = np.stack([900.0 * gaussian_psf(shape, 15.5 + dx, 15.5 + dy)
                         * (1 + 0.01 * rng.normal()) for _ in range(3)])
        cube += rng.normal(0, 1.0, cube.shape)
        s = np.deg2rad(roll)
        hdr = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg",
                           "CUNIT2": "deg", "CRPIX1": 16.5, "CRPIX2": 16.5, "CRVAL1": 150.0,
                           "CRVAL2": -30.0, "CD1_1": -1.75e-5 * np.cos(s),
                           "CD1_2": 1.75e-5 * np.sin(s), "CD2_1": 1.75e-5 * np.sin(s),
                           "CD2_2": 1.75e-5 * np.cos(s)})
        dq = np.zeros(cube.shape, np.uint32)
        dq[:, 3, 4] = 1
        cube[:, 3, 4] = np.nan
        write_exposure(tmp_path / name, cube, err=np.full(cube.shape, 1.0), dq=dq,
                       primary=fits.Header({"TARGNAME": "T", "ROLL_REF": roll}),
                       sci_header=hdr)
        members.append({"exptype": kind, "expname": name})
    asn = {"asn_id": "c1001", "asn_type": "coron",
           "products": [{"name": "tiny_nircam", "members": members}]}
    path = tmp_path / "tiny_asn.json"
    path.write_text(json.dumps(asn))
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The small simulation, written once per test session (inputs only)."""
    from coron_cli.demo import write_simulation
    from coron_cli.simulate import simulate_dataset

    folder = tmp_path_factory.mktemp("demo")
    ds = simulate_dataset("small", seed=0)
    paths = write_simulation(ds, str(folder))
    return {"folder": folder, "paths": paths, "truth": ds.truth, "dataset": ds}


@pytest.fixture
def tree_hashes():
    def snapshot(folder):
        return {p: sha256(os.path.join(folder, p)) for p in sorted(os.listdir(folder))
                if os.path.isfile(os.path.join(folder, p))}

    return snapshot


@pytest.fixture(scope="session")
def hl_run(demo_data, tmp_path_factory):
    """coron3 run --contrast --detect 5 --format ecsv on the small simulation (once per session:
    tests/steps/test_hlsp.py and tests/cli/test_hlsp_tools.py read its products)."""
    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    out = str(tmp_path_factory.mktemp("hl"))
    truth = demo_data["truth"]
    psf = np.asarray(demo_data["dataset"].offaxis_psf, dtype=np.float64)
    config = PipelineConfig.from_options(truncate=[50], star_flux=float(psf.max()),
                                         fwhm=truth["lambda_over_d_pix"], contrast=True,
                                         detect=5.0, table_format="ecsv")
    summary = run_association(demo_data["paths"]["asn"], out, config, offaxis_psf=psf)
    paths = {p["kind"]: p["path"] for p in summary["products"]}
    return {"summary": summary, "out": out, "paths": paths, "truth": truth}
