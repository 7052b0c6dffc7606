"""Fake-source injection: the algorithmic throughput of the KLIP step."""

import logging
from dataclasses import dataclass, replace

import numpy as np

from .. import core
from ..errors import ConfigError, InputError
from ..products import pixel_scale_arcsec, roll_angle, star_center
from ._common import _mean_over_integrations
from .config import InjectConfig, KlipConfig

log = logging.getLogger("coron")


def klip_inject_step(science, psfalign, psf, config=None, inject=None, *, transmission=None,
                     params=None, rolls=None):
    """:func:`klip_step` plus the algorithmic throughput, by fake-source injection.

    Fake point sources (the off-axis PSF, shifted) are placed at
    separations from ``inner * fwhm`` to the edge of the frame every
    ``step * fwhm`` pixels, at `n_pa` position angles each (east of north,
    through the exposure's roll); the sources of one image are spread by
    the golden angle so that they do not overlap
    (:func:`coron_cli.core.injection_grid`). The images are KLIP-subtracted
    with the science, as extra targets of the same decomposition (same
    aligned references, zones, fit mask and truncation), then averaged over
    integrations and measured (:func:`throughput_table`).

    Parameters
    ----------
    science, psfalign :
        As for :func:`klip_step`.
    psf : ndarray of shape (py, px)
        Unocculted PSF (:func:`offaxis_image`).
    config : KlipConfig, optional
        As for :func:`klip_step`.
    inject : InjectConfig, optional
        ``fwhm``: resolution element in pixels (default 2); ``n_pa``,
        ``step``, ``inner``: the grid's angles per separation, spacing and
        first separation (in fwhm).
    transmission, params :
        As for :func:`klip_step`.

    Returns
    -------
    psfsub : Product
        As :func:`klip_step`'s, plus a THROUGHPUT table.
    injection : Injection or None
        The fakes in the detector frame (first truncation); None, and no
        table, when the frame is too small for a single separation.

    Notes
    -----
    With its references fixed, KLIP is linear in the target image: every
    step (zone means, projection on the KL modes of the references,
    subtraction) is a linear map of the target, and the basis does not
    depend on it. So KLIP(science + fakes) = KLIP(science) + KLIP(fakes)
    exactly, and injecting into copies of the science, re-running KLIP with
    the same aligned references and taking the difference is the same as
    KLIP-subtracting the fakes alone, which is what is done, without the
    noise and without a second decomposition. The references are not
    re-aligned (fakes far fainter than the star would not move the
    registration), and bad-pixel repair and ERR do not enter the flux
    ratio. Inputs are not modified, and the science residual is the same
    as without fakes (to rounding).
    """
    from .klip import _klip    # imported here: coron-hlsp uses this module, not KLIP

    inject = inject or InjectConfig()
    fwhm = inject.fwhm_pix
    params = {**(params or {}), "contrast": True, "fwhm": fwhm, "inject_pa": inject.n_pa,
              "inject_step": inject.step, "inject_inner": inject.inner}
    product, inj = _klip(science, psfalign, config or KlipConfig(), transmission=transmission,
                         params=params,
                         fakes={"psf": psf, "fwhm": fwhm, "n_pa": inject.n_pa,
                                "step": inject.step, "inner": inject.inner,
                                "transmission": transmission},
                         rolls=rolls)
    if inj is not None:
        product = add_throughput(product, throughput_table(
            inj, fwhm=fwhm, scale=pixel_scale_arcsec(science.sci_header)))
    return product, inj


@dataclass
class Injection:
    """Fake point sources and what the processing made of them.

    Attributes
    ----------
    model : ndarray of shape (nimg, ny, nx)
        The fakes as injected (each image holds one source per separation).
    recovered : ndarray of shape (nimg, ny, nx)
        The same after KLIP (and combination), averaged over integrations.
    positions : ndarray of shape (nimg, nsep, 2)
        Source positions (x, y) in those images, 0-based pixels.
    separations : ndarray of shape (nsep,)
        Separations, pixels.
    pa : ndarray of shape (nimg, nsep)
        Position angles, degrees east of north.
    recovered_protected : ndarray of shape (nimg, ny, nx) or None
        With zones and source protection: the fakes after KLIP as a source
        found above the protection threshold is processed (left out of the
        fit); a zone a few lambda/D wide fits part of an unprotected source
        away, so the two differ.
    """

    model: np.ndarray
    recovered: np.ndarray
    positions: np.ndarray
    separations: np.ndarray
    pa: np.ndarray
    recovered_protected: np.ndarray = None


def offaxis_image(product):
    """The 2-D unocculted PSF of an off-axis PSF product (first integration of a cube)."""
    data = np.asarray(product.sci, dtype=np.float64)
    data = data.reshape(-1, *data.shape[-2:])[0] if data.ndim > 2 else data
    if not np.isfinite(data).any():
        raise InputError(product.path, "off-axis PSF has no finite pixel")
    if not np.nanmax(data) > 0:
        raise InputError(product.path, "off-axis PSF peak is not positive")
    return data


def _injection_grid(science, center, *, psf, fwhm, n_pa, step, inner, transmission=None):
    """The fake sources of :func:`klip_inject_step` for an exposure (recovered not yet known)."""
    ny, nx = science.sci.shape[-2:]
    roll, _ = roll_angle(science.sci_header, science.primary)
    roll = 0.0 if roll is None else roll
    seps = injection_separations((ny, nx), center, fwhm=fwhm, step=step, inner=inner)
    if seps.size == 0:
        log.warning("%s: frame too small to inject fake sources; no throughput", science.path)
        return None
    pa = core.injection_grid(seps, n_pa)
    pos = np.asarray(center) + core.sky_offsets(seps[None, :], pa, roll)
    # a source behind the coronagraph is dimmed by its transmission where it sits
    amp = None if transmission is None else core.value_at(transmission, pos)
    model = core.inject_sources((ny, nx), psf, pos, amp)
    log.info("injecting %d fake sources in %d images (%d separations x %d angles)",
             pos.shape[0] * pos.shape[1], pos.shape[0], seps.size, pa.shape[0])
    return Injection(model=model, recovered=None, positions=pos, separations=seps, pa=pa)


def injection_separations(shape, center, *, fwhm, step=1.0, inner=2.0):
    """Separations (pixels) of the fake-source grid: from ``inner * fwhm`` every
    ``step * fwhm`` to ``1.5 fwhm + 1`` pixels inside the largest circle about the
    star that fits in the frame (and about the frame centre, where the i2d puts it)."""
    ny, nx = shape
    cx, cy = center
    edge = min(cx, nx - 1 - cx, cy, ny - 1 - cy, (nx - 1) / 2.0, (ny - 1) / 2.0)
    rmax = edge - 1.5 * fwhm - 1.0
    return np.arange(inner * fwhm, rmax + 1e-9, step * fwhm)


def combine_injections(psfsubs, injections, bad_bits=None):
    """The fakes of every exposure combined like :func:`combine_step` does the images.

    Parameters
    ----------
    psfsubs : list of Product
        The exposures' psfsub products (their ERR gives the weights).
    injections : list of Injection
        Their fakes (:func:`klip_inject_step`), on the same sky grid.
    bad_bits : int, optional
        DQ bits of the values left out, as in :func:`combine_step`.

    Returns
    -------
    Injection
        North-up, star at the frame centre: each exposure's model and
        recovered fakes rotated about the star (same angle, centre and
        interpolation as the image) and averaged with the image's
        inverse-variance weights.
    """
    first = psfsubs[0]
    ny, nx = first.sci.shape[-2:]
    out_center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    models, recs, prots, vars_ = [], [], [], []
    for p, inj in zip(psfsubs, injections):
        _, var = _mean_over_integrations(p, bad_bits)
        angle, _ = roll_angle(p.sci_header, p.primary)
        angle = 0.0 if angle is None else angle
        center, _ = star_center(p.sci_header, p.sci.shape, p.primary)

        def rot(a, order):
            return core.north_up(a, angle, center, out_center=out_center, order=order)

        models.append([rot(m, 3) for m in inj.model])
        recs.append([rot(r, 3) for r in inj.recovered])
        prots.append(None if inj.recovered_protected is None else
                     [rot(r, 3) for r in inj.recovered_protected])
        vars_.append(rot(var, 1))
    v = np.stack(vars_)
    n = len(injections[0].model)

    def combined(per_exposure):
        return np.stack([core.combine_images(np.stack([r[k] for r in per_exposure]), v)[0]
                         for k in range(n)])

    inj = injections[0]
    pos = np.asarray(out_center) + core.sky_offsets(inj.separations[None, :], inj.pa, 0.0)
    return Injection(model=combined(models), recovered=combined(recs), positions=pos,
                     separations=inj.separations, pa=inj.pa,
                     recovered_protected=None if any(p is None for p in prots)
                     else combined(prots))


def throughput_table(injection, *, fwhm=None, scale=None):
    """THROUGHPUT table of an injection: recovered over injected flux per separation.

    Parameters
    ----------
    injection : Injection
    fwhm : float, optional
        Resolution element in pixels (default 2).
    scale : float, optional
        Pixel scale in arcsec, for a radius_arcsec column.

    Returns
    -------
    astropy.table.Table
        radius (pixels), radius_arcsec, throughput (median over the position
        angles of the least-squares amplitude of the injected PSF within
        `fwhm` of each source), throughput_aperture (median ratio of the sums
        in a disk of diameter `fwhm`), throughput_std (spread of the former
        over the angles), npa.
    """
    from astropy.table import Table

    fwhm = 2.0 if fwhm is None else float(fwhm)
    fit, ap = core.source_ratios(injection.recovered, injection.model, injection.positions,
                                 fwhm=fwhm)
    table = Table()
    table["radius"] = injection.separations
    table["radius"].unit = "pix"
    if scale:
        table["radius_arcsec"] = injection.separations * scale
        table["radius_arcsec"].unit = "arcsec"
    with np.errstate(invalid="ignore"):
        table["throughput"] = np.nanmedian(fit, axis=0)
        table["throughput_aperture"] = np.nanmedian(ap, axis=0)
        table["throughput_std"] = np.nanstd(fit, axis=0)
    table["npa"] = np.isfinite(fit).sum(axis=0).astype(np.int32)
    if injection.recovered_protected is not None:
        pfit, pap = core.source_ratios(injection.recovered_protected, injection.model,
                                       injection.positions, fwhm=fwhm)
        with np.errstate(invalid="ignore"):
            table["throughput_protected"] = np.nanmedian(pfit, axis=0)
            table["throughput_protected_aperture"] = np.nanmedian(pap, axis=0)
        table["throughput_protected"].description = \
            "as throughput, for a source found and left out of the KL fit (detections)"
    table["throughput"].description = "recovered/injected amplitude (PSF fit), median over PAs"
    table["throughput_aperture"].description = \
        f"recovered/injected sum in disks of diameter {fwhm:g} pix, median over PAs"
    table.meta["FWHM"] = fwhm
    table.meta["NPA"] = int(injection.pa.shape[0])
    return table


def add_throughput(product, table, *, history=None):
    """A copy of a product with a THROUGHPUT table (and a HISTORY line)."""
    out = replace(product, tables=dict(product.tables), primary=product.primary.copy())
    out.tables["THROUGHPUT"] = table
    t = np.asarray(table["throughput"])
    out.primary.add_history(history or (
        f"throughput by fake-source injection: {len(table)} separations x "
        f"{table.meta.get('NPA', '?')} angles, {np.nanmin(t):.3f}-{np.nanmax(t):.3f}"))
    return out


def offaxis_flux(product, *, method="peak", fwhm=None):
    """The star's flux from an unocculted PSF image.

    Parameters
    ----------
    product : Product
        The off-axis PSF (first integration of a cube).
    method : {"peak", "aperture"}
        Its peak pixel, or its sum in a disk of diameter `fwhm` centred on it
        (:func:`coron_cli.core.psf_flux`).
    fwhm : float, optional
        Aperture diameter in pixels (default 2).
    """
    if method not in ("peak", "aperture"):
        raise ConfigError("star_flux_method", f"must be peak or aperture, not {method!r}")
    flux = core.psf_flux(offaxis_image(product), method=method,
                         fwhm=2.0 if fwhm is None else float(fwhm))
    if not flux > 0:
        raise InputError(product.path, f"off-axis PSF {method} flux is not positive")
    return flux


def offaxis_peak(product):
    """The star's flux from an unocculted PSF image: its peak value."""
    return offaxis_flux(product, method="peak")
