"""The combine step: psfsub exposures into one north-up image (i2d)."""

import logging
import os

import numpy as np

from .. import core
from ..errors import InputError
from ..products import (
    Product,
    add_provenance,
    pixel_scale_arcsec,
    roll_angle,
    star_cards,
    star_center,
)
from ._common import (
    _frame_check,
    _mean_over_integrations,
    product_transmission,
    transmission_image,
)
from .config import CombineConfig

log = logging.getLogger("coron")


def combine_step(psfsubs, config=None, *, params=None):
    """Combine KLIP-subtracted exposures into one north-up image (i2d).

    Each exposure's integrations are averaged (values flagged with the
    configuration's `bad_bits` in DQ left out), rotated about the star to
    north-up (angle from its WCS, else PA_APER) with the star at the frame
    centre, and the exposures are averaged with inverse-variance weights.
    The error is then recalibrated on the combined residuals in annuli,
    both ways: raised where residual speckles exceed it, and scaled down
    where the rotation's interpolation, which smooths the noise, has left
    the propagated error larger than the residual spread
    (:func:`coron_cli.core.calibrate_error` with ``deflate=True``), in
    annuli the configuration's `noise_width` wide.

    Parameters
    ----------
    psfsubs : list of Product
        KLIP-subtracted exposures (nint, ny, nx) of one target, same frame size.
    config : CombineConfig, optional
    params : dict, optional
        Further provenance (the input names).

    Returns
    -------
    Product
        2-D SCI/ERR/DQ with a north-up celestial WCS and STARCENX/STARCENY.
    """
    from astropy.io import fits

    config = config or CombineConfig()
    if not psfsubs:
        raise InputError(None, "nothing to combine")
    first = psfsubs[0]
    ny, nx = first.sci.shape[-2:]
    out_center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    imgs, vars_, hist, trans = [], [], [], []
    for p in psfsubs:
        _frame_check(first, p, p.path)
        img, var = _mean_over_integrations(p, config.bad_bits)
        angle, src = roll_angle(p.sci_header, p.primary)
        if angle is None:
            log.warning("%s: no WCS and no ROLL_REF; assuming the image is north-up", p.path)
            angle = 0.0
        center, _ = star_center(p.sci_header, p.sci.shape, p.primary)
        imgs.append(core.north_up(img, angle, center, out_center=out_center, order=3))
        vars_.append(core.north_up(var, angle, center, out_center=out_center, order=1))
        t = product_transmission(p)
        trans.append(None if t is None else
                     core.north_up(t, angle, center, out_center=out_center, order=1))
        hist.append(f"{os.path.basename(p.path)}: rotated by {angle:.3f} deg ({src}) about "
                    f"({center[0]:.3f}, {center[1]:.3f})")
    img, var = core.combine_images(np.stack(imgs), np.stack(vars_))
    images = {}
    if all(t is not None for t in trans):
        # what a source at each sky position keeps, weighted as the images are
        tmap, _ = core.combine_images(np.stack(trans), np.stack(vars_))
        images["TRANSMIS"] = transmission_image(np.nan_to_num(tmap), out_center)
    err = core.calibrate_error(img, np.sqrt(var), out_center, width=config.noise_width,
                               deflate=True)
    dq = np.where(np.isfinite(img), 0, core.DO_NOT_USE).astype(np.uint32)
    header = fits.Header()
    scale = pixel_scale_arcsec(first.sci_header)
    ra, dec = _star_world(first)
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRPIX1"], header["CRPIX2"] = out_center[0] + 1.0, out_center[1] + 1.0
    header["CRVAL1"], header["CRVAL2"] = ra, dec
    s = (scale if scale else 1.0) / 3600.0
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = -s, 0.0, 0.0, s
    if not scale:
        header["COMMENT"] = "pixel scale unknown: WCS scale is a placeholder of 1 arcsec"
    star_cards(header, out_center)
    header["NCOMBINE"] = (len(psfsubs), "exposures combined")
    # units and photometry, and the pointing (JWST's i2d keeps these, not the roll)
    for key in ("BUNIT", "PHOTMJSR", "PHOTUJA2", "PIXAR_SR", "PIXAR_A2", "RA_V1", "DEC_V1",
                "PA_V3"):
        if key in first.sci_header:
            header[key] = first.sci_header[key]
    params = {**(params or {}), **config.params()}
    primary = add_provenance(first.primary, "coron3 combine", params, history=hist)
    log.info("combined %d exposures north-up", len(psfsubs))
    return Product(sci=img.astype(np.float32), err=err, dq=dq, primary=primary,
                   sci_header=header, images=images, path="i2d")


def _star_world(product):
    """RA, Dec of the star from the product's WCS (0, 0 if there is none)."""
    from ..products import _celestial_wcs

    w = _celestial_wcs(product.sci_header)
    if w is None:
        return 0.0, 0.0
    (cx, cy), _ = star_center(product.sci_header, product.sci.shape, product.primary)
    ra, dec = w.all_pix2world([[cx, cy]], 0)[0]
    return float(ra), float(dec)
