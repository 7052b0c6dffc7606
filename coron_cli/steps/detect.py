"""The detect step: point-source candidates of an SNR map."""

import logging

import numpy as np

from .. import core
from ..products import (
    Product,
    add_provenance,
    pixel_scale_arcsec,
    roll_angle,
    star_center,
)
from ._common import (
    _mean_over_integrations,
    _star_cards,
    _throughput_at,
    product_transmission,
)
from .config import DetectConfig

log = logging.getLogger("coron")


def detect_step(image, snr, config=None, *, throughput=None, psf=None, params=None):
    """Point-source candidates in an SNR map: a DETECTIONS table.

    Parameters
    ----------
    image : Product
        The KLIP-subtracted image (2-D, or a cube averaged over integrations)
        the SNR map was made from: fluxes are measured in it; its WCS (or
        ROLL_REF) orients the position angles; a THROUGHPUT table in it is
        used when `throughput` is not given.
    snr : Product
        The SNR map (:func:`hlsp_step`).
    config : DetectConfig, optional
        Its fields:
    threshold : float
        Candidates are local maxima with ``snr >= threshold``.
    inner_radius : float, optional
        The star's core, not searched: pixels (default ``2 fwhm``).
    fwhm : float, optional
        Resolution element in pixels (default 2).
    star_flux, star_flux_method :
        As for :func:`hlsp_step`: with a star flux, the contrast columns.
    psf : ndarray of shape (py, px), optional
        Unocculted PSF: with it, maxima that the rings and spikes of a
        brighter candidate can explain are not candidates
        (:func:`coron_cli.core.find_candidates`); without it, only maxima
        within 2 fwhm of a brighter one are merged.

    Returns
    -------
    Product
        No image; a DETECTIONS table with one row per candidate, brightest
        first: x, y (0-based pixels: the image's peak within fwhm / 2 of the
        SNR peak, to sub-pixel), sep (pixels), sep_arcsec (when the
        scale is known), pa (degrees east of north), snr, flux (peak pixel,
        or background-subtracted aperture sum, following
        `star_flux_method`), contrast (flux / star flux) and
        contrast_calibrated (divided by the throughput at that separation
        and by the coronagraph's transmission at the position, as known)
        when known.

    Notes
    -----
    The position angle is ``roll + atan2(-dx, dy)`` with (dx, dy) the offset
    from the star and roll the position angle of the image's +y axis (0 for
    a north-up i2d; the WCS roll of a detector-frame psfsub), which assumes
    the usual sky parity (east to the left when north is up). Without WCS
    or ROLL_REF, the angle is counted from the image's +y axis and the
    table's PAFRAME says so.
    """
    from astropy.table import Table

    img, _ = _mean_over_integrations(image)
    center, _ = star_center(image.sci_header, img.shape, image.primary)
    config = config or DetectConfig()
    threshold, star_flux = config.threshold, config.star_flux
    star_flux_method = config.star_flux_method
    fwhm = config.fwhm_pix
    inner = 2.0 * fwhm if config.inner_radius is None else float(config.inner_radius)
    if throughput is None:
        throughput = image.tables.get("THROUGHPUT")
    snr_map = np.asarray(snr.sci, dtype=np.float64).reshape(img.shape)
    flux_map = envelope = None
    if psf is not None:
        if snr.sci_header.get("SNRMETH") == "mawet":
            flux_map = core.aperture_sums(img, fwhm=fwhm)
            envelope = core.psf_envelope(psf, fwhm=fwhm)
        else:
            flux_map, envelope = img, core.psf_envelope(psf)
    cand = core.find_candidates(snr_map, center, threshold=threshold, inner_radius=inner,
                                fwhm=fwhm, flux=flux_map, envelope=envelope)
    s = cand[:, 2]
    x, y = core.refine_peaks(img, cand[:, :2], radius=0.5 * fwhm).T
    dx, dy = x - center[0], y - center[1]
    roll, roll_src = roll_angle(image.sci_header, image.primary)
    frame = f"east of north (image +y axis at {roll:.3f} deg, from {roll_src})" \
        if roll is not None else "from the image +y axis (no WCS or ROLL_REF)"
    table = Table()
    table["x"], table["y"] = x, y
    table["sep"] = np.hypot(dx, dy)
    for col in ("x", "y", "sep"):
        table[col].unit = "pix"
    scale = pixel_scale_arcsec(image.sci_header)
    if scale:
        table["sep_arcsec"] = table["sep"] * scale
        table["sep_arcsec"].unit = "arcsec"
    table["pa"] = core.position_angle(dx, dy, roll or 0.0)
    table["pa"].unit = "deg"
    table["snr"] = s
    table["flux"] = _candidate_fluxes(img, x, y, center, fwhm, star_flux_method)
    tmap = product_transmission(image)
    if tmap is not None:
        table["transmission"] = core.value_at(tmap, np.column_stack([x, y])) if len(x) else \
            np.zeros(0)
    if star_flux:
        _contrast_columns(table, star_flux, star_flux_method, throughput, tmap is not None)
    table.meta["THRESH"] = float(threshold)
    table.meta["INNERRAD"] = inner
    table.meta["FWHM"] = fwhm
    table.meta["PAFRAME"] = frame
    table.meta["FLUXMETH"] = star_flux_method
    params = {**(params or {}), **config.params(), "inner_radius": inner, "fwhm": fwhm}
    primary = add_provenance(image.primary, "coron-hlsp detect", params, history=[
        f"{len(table)} candidates with SNR >= {threshold:g} beyond {inner:.2f} pix; "
        f"pa {frame}"])
    if star_flux:
        _star_cards(primary, star_flux, star_flux_method, fwhm)
    log.info("%d candidate(s) above SNR %g", len(table), threshold)
    return Product(sci=None, primary=primary, tables={"DETECTIONS": table}, path="detections")


def _candidate_fluxes(img, x, y, center, fwhm, method):
    """Flux of each candidate: its peak pixel, or its background-subtracted sum in a disk
    of diameter `fwhm` (the other candidates left out of the background)."""
    if method == "aperture":
        pos = np.column_stack([x, y])
        flux = np.array([core.aperture_snr(img, pos[i:i + 1], center, fwhm=fwhm,
                                           avoid=np.delete(pos, i, axis=0))[1][0]
                         for i in range(len(pos))])
    else:
        iy = np.clip(np.rint(y).astype(int), 0, img.shape[0] - 1)
        ix = np.clip(np.rint(x).astype(int), 0, img.shape[1] - 1)
        flux = img[iy, ix]
    return np.asarray(flux, dtype=np.float64).reshape(len(x))


def _contrast_columns(table, star_flux, method, throughput, with_transmission):
    """Add contrast (flux / star flux) and, when a throughput or the transmission is
    known, contrast_calibrated, in place."""
    table["contrast"] = table["flux"] / float(star_flux)
    if throughput is None and not with_transmission:
        return
    factor = np.ones(len(table))
    if throughput is not None:
        # a candidate is above the detection threshold, so it was found and left out of
        # the fit: the protected throughput is its own
        factor = factor * _throughput_at(throughput, np.asarray(table["sep"]), method,
                                         protected=True)
    if with_transmission:
        factor = factor * np.asarray(table["transmission"])
    with np.errstate(invalid="ignore", divide="ignore"):
        table["contrast_calibrated"] = table["contrast"] / factor
