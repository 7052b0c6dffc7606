"""The i2d leaves out what DQ says not to use, even when its value is finite."""

import numpy as np
from astropy.io import fits

from coron_cli import steps
from coron_cli.products import Product


def _psfsub(value, dq, roll):
    rng = np.random.default_rng(int(roll))
    sci = rng.normal(0.0, 1.0, (2, 41, 41)).astype(np.float32)
    sci[:, 20, 25] = value
    h = fits.Header()
    h["STARCENX"], h["STARCENY"] = (20.0, "0-based"), (20.0, "0-based")
    p = fits.Header()
    p["ROLL_REF"] = roll
    return Product(sci=sci, err=np.ones_like(sci), dq=dq, primary=p, sci_header=h,
                   path=f"roll{roll}")


def test_flagged_finite_pixels_stay_out_of_the_i2d():
    dq = np.zeros((2, 41, 41), np.uint32)
    dq[:, 20, 25] = 1                                     # DO_NOT_USE, value finite
    a = _psfsub(1e4, dq, 0.0)
    b = _psfsub(0.0, np.zeros_like(dq), 90.0)
    i2d = steps.combine_step([a, b])
    assert np.nanmax(i2d.sci) < 100                       # the flagged 1e4 is not in it
    kept = steps.combine_step([a, b], steps.CombineConfig(bad_bits=0))
    assert np.nanmax(kept.sci) > 1e3                      # bad_bits 0: it is (as before)
    # where only one exposure has data the other's values are the i2d's
    only = steps.combine_step([a])
    assert np.isnan(only.sci[20, 25]) and only.dq[20, 25] & 1
    assert np.array_equal(a.dq, dq)                       # inputs untouched
