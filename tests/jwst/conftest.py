"""Fixtures of tests/jwst: coron's products of the real crops (tests/data), made once.

The tests in this folder check what makes a coron product a JWST product
(:mod:`coron_cli.jwst`). ``test_layout.py`` needs nothing beyond coron;
``test_stdatamodels.py`` and ``test_steps.py`` open the products with
stdatamodels and run JWST pipeline steps on them, and are skipped when the JWST
packages are not installed (``pip install 'coron[jwst]'``, Python >= 3.11). Those
carry the ``jwst`` marker: ``pytest -m "not jwst"`` leaves them out.
"""

import os

import pytest

from tests.helpers import AUMIC_ASN, MIRI_ASN


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "jwst: needs the JWST pipeline packages (pip install 'coron[jwst]')")


#: the real crops' associations
SETS = {"aumic": AUMIC_ASN, "miri": MIRI_ASN}


def _science(asn):
    import json

    with open(asn) as fh:
        members = json.load(fh)["products"][0]["members"]
    sci = [m["expname"] for m in members if m["exptype"] == "science"][0]
    return os.path.join(os.path.dirname(asn), sci)


@pytest.fixture(scope="session")
def crop_products(tmp_path_factory):
    """``coron3 run`` of both real crops (AU Mic NIRCam, HD 106906 MIRI), with detections.

    Returns name -> {"paths": kind -> [paths], "science": the first science exposure,
    "folder": the products' folder}; psfalign and psfsub come once per science exposure.
    """
    from coron_cli.pipeline import run_association
    from coron_cli.steps import PipelineConfig

    out = {}
    for name, asn in SETS.items():
        folder = str(tmp_path_factory.mktemp(f"jwst_{name}"))
        config = PipelineConfig.from_options(truncate=[5], star_flux=1000.0, detect=3.0)
        summary = run_association(asn, folder, config)
        paths = {}
        for p in summary["products"]:
            paths.setdefault(p["kind"], []).append(p["path"])
        out[name] = {"paths": paths, "science": _science(asn), "folder": folder}
    return out
