"""A 3-D psfalign (references aligned once, as the JWST stage writes since jwst 1.16) is
used for every integration: the same result as coron's 4-D psfalign with those references
repeated, through the step and through coron-klip."""

import numpy as np
from astropy.io import fits

from coron_cli import steps
from coron_cli.products import Product, read_product


def _pair(rng, nint=3, nref=6, n=40):
    y, x = np.indices((n, n), dtype=np.float64)
    psf = 500 * np.exp(-((x - 19.5) ** 2 + (y - 19.5) ** 2) / 18.0)
    refs = np.stack([psf * (1 + 0.05 * rng.normal()) + rng.normal(0, 1, psf.shape)
                     for _ in range(nref)]).astype(np.float32)
    sci = np.stack([psf + rng.normal(0, 1, psf.shape) for _ in range(nint)]).astype(np.float32)
    h = fits.Header()
    h["STARCENX"], h["STARCENY"] = (19.5, "0-based"), (19.5, "0-based")
    science = Product(sci=sci, err=np.ones_like(sci), dq=np.zeros(sci.shape, np.uint32),
                      primary=fits.Header(), sci_header=h, path="sci")
    refs[2, 5, 7] = np.nan                                  # a missing pixel, repaired
    aligned = fits.Header()
    aligned["S_PSFALI"] = "COMPLETE"                        # the JWST stage's step keyword
    three = Product(sci=refs, err=np.full_like(refs, 0.5), dq=np.zeros(refs.shape, np.uint32),
                    primary=aligned, sci_header=h.copy(), path="ali3")
    four = Product(sci=np.repeat(refs[None], nint, axis=0),
                   err=np.full((nint,) + refs.shape, 0.5, np.float32),
                   dq=np.zeros((nint,) + refs.shape, np.uint32), primary=fits.Header(),
                   sci_header=h.copy(), path="ali4")
    return science, three, four


def test_three_d_psfalign_is_the_four_d_one_repeated():
    science, three, four = _pair(np.random.default_rng(1))
    before = three.sci.copy()
    conf = steps.KlipConfig(truncate=(3, 5), zone_width=None, sky_order=0)
    a = steps.klip_step(science, three, conf)
    b = steps.klip_step(science, four, conf)
    assert a.sci.shape == science.sci.shape
    np.testing.assert_allclose(a.sci, b.sci, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.err, b.err, rtol=1e-6)
    assert np.array_equal(three.sci, before, equal_nan=True)          # input untouched


def test_coron_klip_takes_a_three_d_psfalign(tmp_path):
    import subprocess
    import sys

    science, three, four = _pair(np.random.default_rng(2))
    for prod, name in ((science, "sci_calints.fits"), (three, "ali3_psfalign.fits"),
                       (four, "ali4_psfalign.fits")):
        fits.HDUList([fits.PrimaryHDU(header=prod.primary),
                      fits.ImageHDU(prod.sci, prod.sci_header, name="SCI"),
                      fits.ImageHDU(prod.err, name="ERR"),
                      fits.ImageHDU(prod.dq, name="DQ")]).writeto(tmp_path / name)
    for name in ("ali3", "ali4"):
        r = subprocess.run([sys.executable, "-c", "from coron_cli.cli.klip import main; main()",
                            "sci_calints.fits", f"{name}_psfalign.fits", "-k", "4",
                            "--zone-width", "none", "-o", f"{name}_psfsub.fits"],
                           cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    a = read_product(str(tmp_path / "ali3_psfsub.fits"))
    b = read_product(str(tmp_path / "ali4_psfsub.fits"))
    np.testing.assert_allclose(a.sci, b.sci, atol=1e-5)


def test_a_psfstack_is_not_taken_for_aligned_references():
    import pytest

    from coron_cli.errors import InputError

    science, three, _ = _pair(np.random.default_rng(3))
    del three.primary["S_PSFALI"]
    with pytest.raises(InputError, match="S_PSFALI"):
        steps.klip_step(science, three)
