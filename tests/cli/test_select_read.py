"""coron-select's reading at speed: only SCI and DQ of a library file are read (a plain
FITS file; anything else goes through read_product and its one-line errors), and a
file's scores equal those of the first implementation (read_product, ndimage frame by
frame, normalise, correlate)."""

import gzip

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from coron_cli.core.select import correlate, normalise, region_mask
from coron_cli.errors import InputError
from coron_cli.products import read_product
from coron_cli.select import _frames, _library_block, _sci_dq
from tests.helpers import gaussian_psf, write_exposure

N = 40


def _file(path, star=(19.3, 20.6), nint=4, seed=0, **kw):
    rng = np.random.default_rng(seed)
    sci = np.array([gaussian_psf((N, N), *star) * (1 + 0.1 * k) for k in range(nint)])
    sci += 0.01 * rng.normal(size=sci.shape)
    dq = np.zeros(sci.shape, np.uint32)
    dq[rng.random(sci.shape) < 0.02] = 1
    dq[0, 3, 3] = 4                       # another bit: not a bad pixel with --bad-bits 1
    sci[dq == 1] = 1e6                    # garbage where flagged
    sci_header = fits.Header({"STARCENX": star[0], "STARCENY": star[1]})
    return write_exposure(path, sci, dq=dq, sci_header=sci_header, **kw), sci, dq


def test_sci_and_dq_as_read_product_reads_them(tmp_path):
    path, _, dq = _file(tmp_path / "a_calints.fits")
    fast = _sci_dq(path)
    full = read_product(path)
    assert fast is not None and fast.err is None
    np.testing.assert_array_equal(fast.sci, full.sci)
    np.testing.assert_array_equal(fast.dq, full.dq)
    assert fast.sci.dtype == np.float32 and fast.dq.dtype == np.uint32
    assert fast.sci_header["STARCENX"] == full.sci_header["STARCENX"]
    exp, frames = _frames(path, 1)
    assert np.isnan(frames[dq == 1]).all() and np.isfinite(frames[dq != 1]).all()
    np.testing.assert_array_equal(frames[dq != 1], full.sci[dq != 1])
    assert frames is exp.sci and frames.dtype == np.float32 and frames.dtype.isnative


def test_other_files_go_through_read_product(tmp_path):
    path, sci, _ = _file(tmp_path / "a_calints.fits")
    gz = tmp_path / "b_calints.fits.gz"
    with open(path, "rb") as fh:
        data = fh.read()
    gz.write_bytes(gzip.compress(data))
    assert _sci_dq(str(gz)) is None
    np.testing.assert_array_equal(_frames(str(gz), 0)[1], sci.astype(np.float32))
    nodq = write_exposure(tmp_path / "c_calints.fits", sci, dq=False)
    assert _sci_dq(nodq) is None
    np.testing.assert_array_equal(_frames(nodq, 1)[1], sci.astype(np.float32))
    cut = tmp_path / "cut_calints.fits"
    cut.write_bytes(data[:-3000])
    assert _sci_dq(str(cut)) is None
    with pytest.raises(InputError, match="truncated FITS file"):
        _frames(str(cut), 1)
    with pytest.raises(InputError, match="no such file"):
        _frames(str(tmp_path / "nope_calints.fits"), 1)


def test_a_files_scores_are_those_of_the_first_implementation(tmp_path):
    star, target = (19.3, 20.6), (20.05, 19.7)
    path, _, _ = _file(tmp_path / "a_calints.fits", star=star, nint=5, seed=2)
    region = region_mask((N, N), target, inner=3.0)
    rng = np.random.default_rng(9)
    science = normalise(np.array([gaussian_psf((N, N), *target, sigma=2.2),
                                  gaussian_psf((N, N), *target) + rng.normal(0, 0.05, (N, N))]),
                        region)
    got = _library_block(path, 5, star, target, (region, science), 1)

    exp = read_product(path)                       # as coron-select first computed it
    frames = exp.sci.astype(np.float64)
    frames[(exp.dq & 1) != 0] = np.nan
    dx, dy = target[0] - star[0], target[1] - star[1]
    moved = []
    for f in frames:
        bad = ~np.isfinite(f)
        m = ndimage.shift(np.where(bad, 0.0, f), (dy, dx), order=1, mode="constant",
                          prefilter=False)
        h = ndimage.shift(bad.astype(float), (dy, dx), order=1, mode="constant", cval=1.0,
                          prefilter=False)
        m[h > 1e-9] = np.nan
        moved.append(m)
    moved = np.array(moved)
    ref = correlate(science, normalise(moved, region))
    # corrected for each frame's noise: its variance in the region against the mean
    # over the region's pixels of their variance across the integrations
    px = moved[:, region]
    ok = np.isfinite(px).sum(axis=0) >= 2
    noise = np.mean(np.nanvar(px[:, ok], axis=0, ddof=1))
    frac = noise / np.array([np.nanvar(p, ddof=1) for p in px])
    assert np.all((frac > 0.001) & (frac < 0.95))
    ref = ref / np.sqrt(1.0 - frac)[:, None]
    assert got.shape == (5, 2)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert (np.argsort(-got, axis=0) == np.argsort(-ref, axis=0)).all()
