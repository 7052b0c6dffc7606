"""Helpers the steps share: noise estimates, frame checks, the means over
integrations, the transmission map a product carries, truncation lists."""

import logging

import numpy as np

from .. import core
from ..errors import InputError
from ..products import star_cards

log = logging.getLogger("coron")


def estimate_err(sci):
    """ERR for data without one: the robust per-frame noise (:func:`coron_cli.core.frame_noise`)."""
    return core.frame_noise(sci)


def _err_or_estimate(product):
    if product.err is not None:
        return product.err
    log.warning("%s: no ERR extension; estimating the noise from the data (robust per-frame)",
                product.path)
    return estimate_err(product.sci)


def coronagraph(product):
    """The product's CORONMSK (primary header, else the SCI header), upper case, "" when
    absent (e.g. MASKA335R, MASKALWB, 4QPM_1140, LYOT_2300)."""
    mask = product.primary.get("CORONMSK", product.sci_header.get("CORONMSK", ""))
    return str(mask).strip().upper()


def _check_not_all_bad(product, bad):
    """InputError naming the product when every pixel is `bad`."""
    if bad.all():
        raise InputError(product.path, "all pixels are flagged DO_NOT_USE or not finite")


def check_same_frames(path_a, shape_a, path_b, shape_b):
    """InputError naming `path_b` when its frames (the last two axes) differ from `path_a`'s."""
    if tuple(shape_a[-2:]) != tuple(shape_b[-2:]):
        (ny, nx), (my, mx) = shape_a[-2:], shape_b[-2:]
        raise InputError(path_b, f"frames are {mx}x{my} pixels but {path_a} has {nx}x{ny}")


def _frame_check(a, b, name_b):
    check_same_frames(a.path, a.sci.shape, name_b, b.sci.shape)


def _check_transmission(science, transmission):
    if transmission is not None and np.shape(transmission) != science.sci.shape[-2:]:
        ty, tx = np.shape(transmission)
        from .config import ConfigError

        raise ConfigError("psfmask", f"transmission map is {tx}x{ty} pixels, frames are "
                                      f"{science.sci.shape[-1]}x{science.sci.shape[-2]}")


def transmission_image(transmission, center):
    """(array, header) of the TRANSMIS extension: the coronagraph's transmission map."""
    from astropy.io import fits

    h = fits.Header()
    h["BUNIT"] = ("", "intensity transmission of the coronagraph, 1 = unobstructed")
    star_cards(h, center)
    return np.asarray(transmission, dtype=np.float32), h


def product_transmission(product):
    """The TRANSMIS map a product carries (2-D float64), or None."""
    entry = product.images.get("TRANSMIS") if product.images else None
    if entry is None:
        return None
    t = np.asarray(entry[0], dtype=np.float64)
    return t if t.shape == product.sci.shape[-2:] else None


def _mean_over_integrations(product, bad_bits=None):
    """The mean over a product's integrations and its variance (:func:`core.mean_frames`);
    with `bad_bits`, the values whose DQ has any of them are left out."""
    sci = np.asarray(product.sci, dtype=np.float64)
    if sci.ndim == 2:
        sci = sci[None]
    err = product.err if product.err is not None else estimate_err(sci)
    bad = None
    if bad_bits and product.dq is not None and np.size(product.dq) == sci.size:
        bad = (np.asarray(product.dq).reshape(sci.shape) & np.uint32(bad_bits)) != 0
    return core.mean_frames(sci, err, bad)


def _throughput_at(throughput, radius, method, protected=False):
    """Throughput interpolated at `radius` (NaN outside the measured separations).

    `protected`: that of a source left out of the fit, when the table has it
    (a detection: found above the protection threshold).
    """
    col = "throughput_aperture" if method == "aperture" else "throughput"
    if protected and col.replace("throughput", "throughput_protected") in throughput.colnames:
        col = col.replace("throughput", "throughput_protected")
    r = np.asarray(throughput["radius"], dtype=np.float64)
    t = np.asarray(throughput[col], dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(t)
    if ok.sum() == 0:
        return np.full(np.shape(radius), np.nan)
    return np.interp(radius, r[ok], t[ok], left=np.nan, right=np.nan)


def _star_cards(primary, star_flux, method, fwhm):
    primary["STARFLUX"] = (float(star_flux), f"star flux used for contrast ({method})")
    primary["STARFMTH"] = (method, "star flux: peak pixel or aperture sum")
    if method == "aperture":
        primary["STARFAPD"] = (float(fwhm), "aperture diameter for the star flux, pixels")
