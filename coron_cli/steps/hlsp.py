"""The hlsp step: the SNR map and the contrast table of a KLIP-subtracted image."""

import logging

import numpy as np

from .. import core
from ..errors import InputError
from ..products import (
    Product,
    add_provenance,
    pixel_scale_arcsec,
    star_cards,
    star_center,
)
from ._common import (
    _mean_over_integrations,
    _star_cards,
    _throughput_at,
    product_transmission,
)
from .config import HlspConfig

log = logging.getLogger("coron")


def hlsp_step(image, config=None, *, throughput=None, params=None):
    """High-level products of a KLIP-subtracted image: SNR image and contrast table.

    Parameters
    ----------
    image : Product
        2-D image or 3-D cube (averaged over integrations first). A
        THROUGHPUT table in it (from :func:`throughput_table`) is used when
        `throughput` is not given.
    config : HlspConfig, optional
        Its fields:
    noise_width : int
        Annulus width in whole pixels.
    star_flux : float, optional
        The star's unocculted flux in the image's units, measured as
        `star_flux_method` says; adds the 5-sigma contrast column.
    star_flux_method : {"peak", "aperture"}
        ``peak``: the star flux is the PSF's peak pixel and the noise is the
        per-pixel standard deviation in the annulus (column ``sigma``).
        ``aperture``: the star flux is the sum in a disk of diameter `fwhm`
        and the noise the standard deviation of such aperture sums in the
        annulus (column ``sigma_aperture``).
    fwhm : float, optional
        Resolution element in pixels for the small-sample correction and
        the apertures (default 2, about lambda/D at Nyquist sampling).
    snr_method : {"ratio", "mawet"}
        ``ratio``: SCI/ERR. ``mawet``: the per-pixel aperture t-test of
        Mawet et al. 2014 (:func:`coron_cli.core.snr_map_mawet`).
    throughput : astropy.table.Table, optional
        Algorithmic throughput against radius (columns radius, throughput,
        throughput_aperture).

    Returns
    -------
    snr : Product
        SCI = the SNR map (NaN where it is undefined).
    contrast : Product
        No image; a CONTRAST table (radius, sigma, npix, and radius_arcsec,
        sigma_aperture, contrast_5sigma, throughput, contrast_5sigma_calibrated
        when known) and the THROUGHPUT table when there is one.

    Notes
    -----
    ``contrast_5sigma = student_t_factor(2 pi r / fwhm) * noise / star_flux``
    (:func:`coron_cli.core.contrast_curve`, Mawet et al. 2014), and
    ``contrast_5sigma_calibrated = contrast_5sigma / throughput(r)``, the
    throughput interpolated linearly at each radius (NaN outside the
    separations where it was measured).
    """
    config = config or HlspConfig()
    img, var = _mean_over_integrations(image)
    if not np.isfinite(image.sci).any():  # zero/NaN ERR only makes NaN SNR there
        raise InputError(image.path, "no finite pixel in SCI")
    if throughput is None:
        throughput = image.tables.get("THROUGHPUT")
    center, src = star_center(image.sci_header, img.shape, image.primary)
    fwhm = config.fwhm_pix
    if config.snr_method == "mawet":
        snr = core.snr_map_mawet(img, center, fwhm=fwhm)
    else:
        snr = core.snr_image(img, np.sqrt(var))
    table = contrast_table(img, center, config, throughput=throughput,
                           transmission=product_transmission(image),
                           scale=pixel_scale_arcsec(image.sci_header))
    params = {**(params or {}), **config.params(), "fwhm": fwhm,
              "throughput": "yes" if throughput is not None else "none"}
    primary = add_provenance(image.primary, "coron-hlsp", params)
    if config.star_flux:
        _star_cards(primary, config.star_flux, config.star_flux_method, fwhm)
    header = image.sci_header.copy()
    star_cards(header, center, src)
    header["BUNIT"] = ("", "signal-to-noise ratio")
    header["SNRMETH"] = (config.snr_method, "ratio: SCI/ERR; mawet: aperture t-test map")
    if config.snr_method == "mawet":
        header["SNRFWHM"] = (fwhm, "aperture diameter of the t-test, pixels")
    dq = np.where(np.isfinite(snr), 0, core.DO_NOT_USE).astype(np.uint32)
    snr_product = Product(sci=snr, err=None, dq=dq, primary=primary, sci_header=header,
                          path="snr")
    tables = {"CONTRAST": table}
    if throughput is not None:
        tables["THROUGHPUT"] = throughput
    contrast_product = Product(sci=None, primary=primary.copy(), tables=tables,
                               path="contrast")
    return snr_product, contrast_product


def contrast_table(img, center, config, *, throughput=None, transmission=None, scale=None):
    """The CONTRAST table of an image: noise per annulus and the 5-sigma contrast.

    Parameters
    ----------
    img : ndarray (ny, nx)
        The KLIP-subtracted image.
    center : (x, y)
        The star, 0-based pixels.
    config : HlspConfig
        Annulus width, star flux and how it is measured, resolution element.
    throughput : astropy.table.Table, optional
        Algorithmic throughput against radius.
    transmission : ndarray (ny, nx), optional
        The coronagraph's transmission map.
    scale : float, optional
        Pixel scale in arcsec (adds radius_arcsec).

    Returns
    -------
    astropy.table.Table
        See :func:`hlsp_step`.
    """
    from astropy.table import Table

    width, star_flux, method = int(config.noise_width), config.star_flux, config.star_flux_method
    fwhm = config.fwhm_pix
    radius, sigma, npix = core.annular_profile(img, center, width=width)
    table = Table()
    table["radius"] = radius
    table["radius"].unit = "pix"
    if scale:
        table["radius_arcsec"] = radius * scale
        table["radius_arcsec"].unit = "arcsec"
    table["npix"] = npix
    table["sigma"] = sigma
    noise = sigma
    if method == "aperture":
        ar, asig, _ = core.annular_profile(core.aperture_sums(img, fwhm=fwhm), center,
                                           width=width)
        sig_ap = np.full(radius.shape, np.nan)
        idx = np.searchsorted(radius, ar)
        hit = (idx < radius.size) & (radius[np.minimum(idx, radius.size - 1)] == ar)
        sig_ap[idx[hit]] = asig[hit]
        table["sigma_aperture"] = sig_ap
        table["sigma_aperture"].description = (f"standard deviation of the sums in disks of "
                                               f"diameter {fwhm:g} pix")
        noise = sig_ap
    if star_flux:
        table["contrast_5sigma"] = core.contrast_curve(radius, noise, star_flux=star_flux,
                                                       fwhm=fwhm)
        table["contrast_5sigma"].description = (
            "5-sigma-equivalent detection limit / star flux, Student-t corrected "
            "(Mawet et al. 2014)")
    factor, parts = np.ones(radius.shape), []
    if throughput is not None:
        table["throughput"] = _throughput_at(throughput, radius, method)
        factor, parts = factor * table["throughput"], parts + ["algorithmic throughput"]
    if transmission is not None:
        tr, tm = core.annular_mean(transmission, center, width=width)
        table["transmission"] = np.interp(radius, tr, tm) if tr.size else np.nan
        table["transmission"].description = "coronagraph transmission, mean in the annulus"
        factor, parts = factor * table["transmission"], parts + ["coronagraph transmission"]
    if parts and star_flux:
        with np.errstate(invalid="ignore", divide="ignore"):
            table["contrast_5sigma_calibrated"] = np.where(
                factor > 0, table["contrast_5sigma"] / factor, np.nan)
        table["contrast_5sigma_calibrated"].description = \
            "contrast_5sigma / (" + " x ".join(parts) + ")"
    return table
