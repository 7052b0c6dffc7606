"""Where the star is in a product another tool made: the JWST stage's i2d has CRPIX at the
output frame's reference, not on the star; TARG_RA/TARG_DEC through its WCS is the star."""

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from coron_cli.products import star_center


def _resampled(offset=(3.0, -2.0), n=41):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]          # 1-based frame centre
    w.wcs.crval = [150.0, -30.0]
    w.wcs.cdelt = [-0.063 / 3600, 0.063 / 3600]
    sci = w.to_header()
    star = ((n - 1) / 2.0 + offset[0], (n - 1) / 2.0 + offset[1])
    ra, dec = w.all_pix2world([star], 0)[0]
    primary = fits.Header()
    primary["TARG_RA"], primary["TARG_DEC"] = float(ra), float(dec)
    primary["S_RESAMP"] = "COMPLETE"
    return sci, primary, star


def test_a_resampled_image_puts_the_star_at_its_target_coordinates():
    sci, primary, star = _resampled()
    (x, y), src = star_center(sci, (41, 41), primary)
    assert src.startswith("TARG_RA") and np.allclose((x, y), star, atol=1e-6)
    # without the primary header, or for an exposure (no S_RESAMP), CRPIX as before
    assert star_center(sci, (41, 41)) == ((20.0, 20.0), "CRPIX")
    del primary["S_RESAMP"]
    assert star_center(sci, (41, 41), primary)[0] == (20.0, 20.0)


def test_coron_hlsp_measures_about_the_target_of_a_jwst_i2d(tmp_path):
    import subprocess
    import sys

    sci, primary, star = _resampled()
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 1.0, (41, 41)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(img, sci, name="SCI"),
                  fits.ImageHDU(np.ones_like(img), name="ERR")]).writeto(tmp_path / "t_i2d.fits")
    r = subprocess.run([sys.executable, "-c", "from coron_cli.cli.hlsp import main; main()",
                        "t_i2d.fits"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    h = fits.getheader(tmp_path / "t_snr.fits", "SCI")
    assert np.allclose((h["STARCENX"], h["STARCENY"]), star, atol=1e-6)
    assert "TARG_RA" in h.comments["STARCENX"]
