"""The KLIP step: every science integration minus its PSF model from the aligned references."""

import logging
from dataclasses import replace

import numpy as np

from .. import core
from ..errors import InputError
from ..jwst import carry_exposure_extensions
from ..products import (
    Product,
    add_provenance,
    lambda_over_d_pix,
    psf_fwhm_pix,
    star_cards,
    star_center,
)
from ._common import _check_transmission, _frame_check, coronagraph, transmission_image
from .config import ConfigError, KlipConfig
from .rolls import roll_subtract, rotated_fakes
from .stack import prepare_science

log = logging.getLogger("coron")


def _exclusion_mask(shape, exclude):
    fit = np.ones(shape, bool)
    if exclude:
        y, x = np.indices(shape)
        for (ex, ey, er) in exclude:
            fit &= np.hypot(x - ex, y - ey) > er
    return fit


def _length(text, value):
    """'4' / '4px' -> (4.0, 'pix'); '2lod' -> (2.0, 'lod'); ValueError if neither."""
    unit = "lod" if text.endswith("lod") else "pix"
    num = text[:-3] if unit == "lod" else (text.removesuffix("px"))
    try:
        out = float(num)
    except ValueError:
        raise ValueError(f"zone width must be pixels or N lod (lambda/D), optionally "
                         f"@INNER, not {value!r}") from None
    if not np.isfinite(out):
        raise ValueError(f"zone width must be finite, not {value!r}")
    return out, unit


def parse_zone_width(value):
    """A zone layout: annuli of a width, beyond an inner radius.

    '4' -> (4.0, 'pix', 0.0, 'pix'); '2lod' -> (2.0, 'lod', 0.0, 'pix');
    '2lod@6lod' -> (2.0, 'lod', 6.0, 'lod'): annuli 2 lambda/D wide beyond
    6 lambda/D, the disk inside it one zone. '1lod@auto' -> (1.0, 'lod', nan,
    'auto'): the inner radius where an annulus first holds `ZONE_PIXELS_PER_MODE`
    pixels per KL mode (:func:`zone_width_pix`). None/''/'none' -> None.
    ValueError if bad.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        width, unit, inner, iunit = float(value), "pix", 0.0, "pix"
    else:
        text = str(value).strip().lower().replace(" ", "")
        if text in ("", "none", "off"):
            return None
        wtext, _, itext = text.partition("@")
        width, unit = _length(wtext, value)
        if itext == "auto":
            inner, iunit = float("nan"), "auto"
        else:
            inner, iunit = _length(itext, value) if itext else (0.0, "pix")
    if not width > 0 or inner < 0 or (np.isnan(inner) and iunit != "auto"):
        raise ValueError(f"zone width must be positive (and an inner radius not negative), "
                         f"not {value!r}")
    return width, unit, inner, iunit


#: with an automatic inner radius, annuli begin where they hold this many pixels per mode
ZONE_PIXELS_PER_MODE = 10.0


def zone_width_pix(science, value, nmodes=None):
    """A zone layout setting in pixels for an exposure: (width, inner) or None.

    lambda/D comes from the exposure's FILTER and pixel scale. An automatic
    inner radius is where an annulus of the width first holds
    ``ZONE_PIXELS_PER_MODE`` pixels per KL mode (`nmodes`): inside it a
    narrow zone has too few pixels for its coefficients and fits noise and
    faint sources away, so the coefficients there are fitted on the whole
    frame. Many references push it out (45 modes in 1 lambda/D annuli at
    NIRCam sampling: about 15 lambda/D); a handful of them (AU Mic's 6)
    bring it to the star. (:func:`_klip_geometry` also fits on the whole
    frame any annulus that the frame's edge cuts below that count.)
    """
    parsed = parse_zone_width(value)
    if parsed is None:
        return None
    width, unit, inner, iunit = parsed
    if iunit == "auto":
        inner, iunit = 0.0, "pix"
        auto = True
    else:
        auto = False
    lod = None
    if "lod" in (unit, iunit):
        lod = lambda_over_d_pix(science.primary, science.sci_header)
        if lod is None:
            lod = 2.0
            log.warning("%s: lambda/D unknown (no JWST FILTER or pixel scale); zones in "
                        "lambda/D taken at %g pixels per lambda/D", science.path, lod)
    width = width * lod if unit == "lod" else width
    inner = inner * lod if iunit == "lod" else inner
    if auto and nmodes:
        inner = ZONE_PIXELS_PER_MODE * float(nmodes) / (2.0 * np.pi * width)
    return width, inner


def _klip_geometry(science, psfalign, config, *, transmission=None, nmodes=None):
    """What KLIP needs besides the science: references, star, zones and fit mask."""
    annuli, subsections, exclude = config.zones, config.zone_sectors, config.exclude
    zone_width, zone_fit = config.zone_width, config.zone_fit
    min_transmission = config.min_transmission if transmission is not None else 0.0
    refs = psfalign.sci
    if not np.isfinite(refs).all():
        refs = core.repair_bad_pixels(refs, ~np.isfinite(refs))
    ny, nx = science.sci.shape[-2:]
    hdr = psfalign.sci_header if "STARCENX" in psfalign.sci_header else science.sci_header
    center, src = star_center(hdr, science.sci.shape)
    zones = None
    # an explicit number of zones N (N > 1) replaces the layout of the zone width
    layout = zone_width_pix(science, zone_width, nmodes) if annuli <= 1 else None
    fit_zones = None
    if layout is not None:
        zones = core.annulus_zones((ny, nx), center, width=layout[0], inner=layout[1],
                                   subsections=subsections)
        if zone_fit == "around":
            fit_zones = core.annulus_fit_zones(zones, center, margin=2.0 * layout[0])
        if layout[1] > 0:
            # inside the inner radius, the coefficients are fitted on the whole frame, as
            # without zones: near the star a narrow zone over-fits
            fit_zones = dict(fit_zones or {})
            fit_zones[int(zones.min())] = np.ones((ny, nx), bool)
        if str(zone_width).strip().lower().endswith("@auto") and nmodes:
            # so does any annulus the frame's edge cuts to fewer than 10 pixels per mode
            counts = np.bincount(zones.ravel())
            small = np.flatnonzero((counts > 0) & (counts < ZONE_PIXELS_PER_MODE * nmodes))
            if small.size:
                fit_zones = dict(fit_zones or {})
                for label in small:
                    fit_zones[int(label)] = np.ones((ny, nx), bool)
    elif annuli > 1 or subsections > 1:
        zones = core.annulus_zones((ny, nx), center, annuli=annuli, subsections=subsections)
    fit = _exclusion_mask((ny, nx), exclude)
    if not fit.any():
        raise ConfigError("exclude", "the exclusion circles cover the whole image")
    if transmission is not None and min_transmission > 0:
        low = np.asarray(transmission) < min_transmission
        if (fit & ~low).sum() < 0.1 * fit.sum():
            log.warning("%s: fewer than 10%% of the pixels have a transmission of %g or more; "
                        "the transmission map is not used to restrict the KL fit",
                        science.path, min_transmission)
        else:
            fit = fit & ~low
    return refs, center, src, zones, fit, fit_zones


def klip_step(science, psfalign, config=None, *, transmission=None, params=None, rolls=None):
    """KLIP-subtract every science integration with its aligned references.

    Parameters
    ----------
    science : Product
        The science exposure (nint, ny, nx).
    psfalign : Product
        Its aligned references (nint, nref, ny, nx) (:func:`align_step`).
    config : KlipConfig, optional
        Truncations, zones, fit region, weights, sky order, noise annuli.
    transmission : ndarray (ny, nx), optional
        The coronagraph's transmission map: pixels below the configuration's
        `min_transmission` are left out of the fit; added as TRANSMIS.
    params : dict, optional
        Further provenance (the input names).
    rolls : RollReferences, optional
        The target's other rolls registered onto this exposure
        (:func:`coron_cli.steps.roll_references`): added to the references
        where a source moves by at least the configuration's `roll_move`
        (lambda/D) between the rolls (:func:`coron_cli.steps.roll_subtract`).

    Returns
    -------
    Product
        SCI: residual at the first truncation, shape (nint, ny, nx). With
        several truncations a KLSUB extension (ntrunc, nint, ny, nx) holds
        them all. ERR: see Notes. DQ: the science DQ with outliers flagged.

    Notes
    -----
    ERR is formed in two parts. First the propagated noise:
    ``sqrt(err_sci**2 + sum_j b_j**2 err_ref_j**2)``, the science noise plus
    the noise the references carry into the PSF model through its
    coefficients b (see :func:`coron_cli.core.klip_subtract`). Then the
    residual speckle noise, which no propagation sees, is measured: in
    annuli `noise_width` pixels wide about the star the smallest extra
    variance is added that makes the 3-sigma clipped standard deviation of
    SCI/ERR equal to 1, with the sources (companions above 5 sigma, with
    their rings and halo) left out of that measurement (:func:`coron_cli.core.calibrate_error`).

    Pixel weights (`weights`): with "noise" the KL basis and
    the fit weigh every pixel by the inverse of its noise variance, the
    science ERR squared averaged over integrations
    (:func:`coron_cli.core.noise_weights`; flagged values left out), a
    generalised least-squares fit (:func:`coron_cli.core.klip_subtract`).
    Unweighted, the pixels next to the star, the brightest and noisiest,
    set the coefficients for the whole zone; weighted, the fainter halo
    farther out counts as its noise warrants. On the medium simulation
    (seeds 0-8) this lowered the residual noise at most planets inside
    8 lambda/D, but it raised the residual on real NIRCam data, so "none",
    classic unweighted KLIP, is the default.

    Source protection (`protect`, an SNR; None or 0 turns it off): a
    companion inside the fitted region pulls the KL coefficients, so it
    loses flux and the star's halo around it is over-subtracted. The
    integrations are therefore averaged after a first pass, the sources
    above `protect` found (:func:`coron_cli.core.source_regions`) and left
    out of the fit of a second pass, like `exclude` circles (unless they
    would cover more than half of the fitted pixels). No protected disk
    reaches more than half-way from its source to the star: the bright
    pixels near the star carry most of the fit, and leaving them out
    changes the subtraction everywhere. KLPROTEC in the SCI
    header counts the pixels left out. Fake sources of
    :func:`klip_inject_step` are not protected: they measure the throughput
    of sources too faint to be found.
    """
    return _klip(science, psfalign, config or KlipConfig(), transmission=transmission,
                 params=params, rolls=rolls)[0]


#: extended sources (disks) are protected by their footprint too (see _sources_in)
EXTENDED_PROTECTION = True


def _sources_in(residual, err, model_var, center, threshold, annuli_width, lod=None):
    """Pixels of sources in an exposure's first KLIP pass (2-D bool).

    The integrations are averaged, the error of the mean calibrated in
    annuli, and the sources found in the significance map: a disk around
    every point source (:func:`coron_cli.core.source_regions`), and the
    footprint of extended ones (:func:`coron_cli.core.source_footprints`:
    smoothed significance above 2 connected to a peak above `threshold`,
    beyond 3 lambda/D of the star, where residual speckles are not taken
    for a source).
    """
    var = np.where(np.isfinite(err), err.astype(np.float64) ** 2, np.nan)
    if model_var is not None:
        var = var + model_var
    img, mvar = core.mean_frames(residual, np.sqrt(var))
    e = core.calibrate_error(img, np.sqrt(mvar), center, width=annuli_width)
    z = np.nan_to_num(core.snr_image(img, e))
    found = core.source_regions(z, threshold, center=center, negative=False)
    if EXTENDED_PROTECTION:
        lod = 2.0 if lod is None else lod
        found |= core.source_footprints(z, threshold, low=2.0, smooth=0.5 * lod,
                                        inner=3.0 * lod, center=center,
                                        grow=max(1, int(round(0.5 * lod))))
    return found, z


def _extended_sources(z, threshold, center, lod=None):
    """The extended sources of a significance map (2-D bool): the footprints of
    :func:`_sources_in` with more of their significance outside every point source's
    disk than a point source's rings hold (:func:`coron_cli.core.extended_parts`)."""
    lod = 2.0 if lod is None else lod
    points = core.source_regions(z, threshold, center=center, negative=False)
    foot = core.source_footprints(z, threshold, low=2.0, smooth=0.5 * lod, inner=3.0 * lod,
                                  center=center, grow=max(1, int(round(0.5 * lod))))
    return core.extended_parts(foot, points, z)


def resolve_sky_order(science, sky_order):
    """The sky order for an exposure: an int as given, or for "auto" 2 behind a
    four-quadrant phase mask (CORONMSK contains 4QPM) and 1 otherwise."""
    if sky_order is None:
        return 0
    if str(sky_order).strip().lower() == "auto":
        return 2 if "4QPM" in coronagraph(science) else 1
    order = int(sky_order)
    if order < 0:
        raise ValueError(f"sky order must be auto or >= 0, not {sky_order!r}")
    return order


def _protected_fakes(inj, refs, fit, zones, fwhm, kw, fit_zones, rolls=None, roll_fakes=None,
                     center=None, min_move=None, sci=None, sources=None):
    """The fakes KLIP-subtracted as a source found above the protection threshold is:
    each image with its fakes' disks (1.5 fwhm) left out of the fit. In zones a few
    lambda/D wide the fit takes a good part of an unprotected source away, and a source
    bright enough to be detected (or to sit at the 5-sigma limit) is protected, so its
    throughput is this one. Returns (nimg, ny, nx), the mean over integrations."""
    ny, nx = fit.shape
    yy, xx = np.indices((ny, nx))
    out = np.empty(inj.model.shape)
    nint = refs.shape[0]
    for k, img in enumerate(inj.model):
        near = np.zeros((ny, nx), bool)
        for x, y in inj.positions[k]:
            near |= np.hypot(xx - x, yy - y) <= 1.5 * fwhm
        targets = np.broadcast_to(img, (nint, ny, nx))
        one = dict(kw, truncations=kw["truncations"][:1], reference_error=None)
        if rolls is None:
            res, _, _ = core.klip_subtract(targets, refs, zones=zones, fit_mask=fit & ~near,
                                           fit_zones=fit_zones, **one)
            out[k] = res[0].astype(np.float64).mean(axis=0)
            continue
        # with the science as target 0: what the rolls' copies of the fake take away
        # depends on the star's coefficients (see roll_subtract)
        pair = np.stack([sci, np.broadcast_to(img, sci.shape)], axis=1)
        res, _, _ = roll_subtract(pair, refs, rolls, center=center, min_move=min_move,
                                  zones=zones, fit_mask=fit & ~near, fit_zones=fit_zones,
                                  roll_fakes=roll_fakes[k:k + 1], sources=sources, **one)
        out[k] = res[0][:, 1].astype(np.float64).mean(axis=0)
    return out


def _outliers_on_sources(science, hit, zmap, err, bad_bits, lod):
    """The outliers (nint, ny, nx) that are part of a source, to be given their values back.

    An outlier is part of a source when the source is there without it (it lies in the
    footprint of a source of the first KLIP pass, made from the repaired data) and its own
    value is not sharper than a point source allows in its frame (a cosmic ray on a
    companion is, and stays repaired). With one integration the outlier search flags only
    such sharp pixels, so nothing comes back; with several, a pixel the integrations
    disagree on can be a companion's, and comes back.
    """
    lod = 2.0 if lod is None else lod
    foot = core.source_footprints(zmap, 5.0, low=2.0, smooth=0.5 * lod, grow=0)
    cand = hit & foot[None]
    if not cand.any():
        return None
    bad = core.bad_pixel_mask(science.sci, science.dq, bad_bits=bad_bits)
    fwhm = psf_fwhm_pix(science.primary, science.sci_header)
    sharp = np.zeros(hit.shape, bool)
    for i in np.unique(np.nonzero(cand)[0]):
        sharp[i] = core.find_outliers(science.sci[i:i + 1], bad[i:i + 1], err=err[i:i + 1],
                                      psf_fwhm=fwhm)[0]
    return cand & ~sharp


def _klip(science, psfalign, config, *, transmission=None, params=None, fakes=None,
          rolls=None):
    """klip_step; with `fakes` (the grid of :func:`klip_inject_step`), also the Injection."""
    sky_order = resolve_sky_order(science, config.sky_order)
    truncate = list(config.truncate)
    psfalign = _every_integration(science, psfalign)
    nint, nref = _check_klip_inputs(science, psfalign)
    # may refuse: before warning
    sci, err, dq, nout, hit = prepare_science(science, bad_bits=config.bad_bits,
                                              return_outliers=True)
    if max(truncate) > nref:
        # the default asks for "as many as there are, up to 50": only a choice is warned about
        level = logging.INFO if config.truncate == KlipConfig().truncate else logging.WARNING
        log.log(level, "%s KL modes asked for, but there are %d references; using at most %d "
                "modes", ",".join(map(str, truncate)), nref, nref)
    _check_transmission(science, transmission)
    refs, center, src, zones, fit, fit_zones = _klip_geometry(
        science, psfalign, config, transmission=transmission,
        nmodes=min(max(truncate), nref))
    inj, targets = None, sci
    if fakes is not None:
        from .inject import _injection_grid  # inject imports this module

        inj = _injection_grid(science, center, **fakes)
        if inj is not None:
            targets = np.concatenate(
                [sci[:, None], np.broadcast_to(inj.model[None], (nint,) + inj.model.shape)],
                axis=1)
    fw = None
    if config.weights == "noise":
        fw = core.noise_weights(err, center, bad=(dq & np.uint32(config.bad_bits)) != 0,
                                width=config.noise_width)
    # the references' variance is squared from their ERR a zone at a time (in float32, 0
    # where not finite), not as a copy of the whole ERR
    kw = dict(truncations=truncate, fit_weights=fw, reference_error=psfalign.err,
              sky_order=sky_order)
    lod = lambda_over_d_pix(science.primary, science.sci_header)
    residual = mvar = found = zmap = None
    if config.protect or nout:
        residual, mvar, nmodes, found, zmap = _source_pass(
            sci, targets, refs, err, center, fit, zones, kw, config, lod, inj is not None)
        if rolls is not None:
            residual = None    # the pass had the references only: sources, not the result
    # the other rolls are not used where they hold extended structure of this pass
    # (turned): a disk moves by less than its own size between the rolls
    sources = None
    if rolls is not None and zmap is not None:
        sources = _extended_sources(zmap, config.protect or 5.0, center, lod)
    min_move = roll_fakes = None
    if rolls is not None:
        min_move = config.roll_move * (lod or psf_fwhm_pix(science.primary,
                                                          science.sci_header) or 2.0)
        if inj is not None:
            roll_fakes = rotated_fakes(inj.model, rolls.rotation, center)
    back = _outliers_on_sources(science, hit, zmap, err, config.bad_bits, lod) if nout else None
    protected = 0
    if config.protect:
        found = found & fit
        if found.any() and found.sum() <= 0.5 * fit.sum():
            protected = int(found.sum())
            log.info("protecting %d pixels of sources above %g sigma from the KL fit",
                     protected, config.protect)
            fit = fit & ~found
            residual = None
    if residual is None:
        residual, mvar, nmodes = roll_subtract(targets, refs, rolls, center=center,
                                               min_move=min_move, zones=zones, fit_mask=fit,
                                               fit_zones=fit_zones, roll_fakes=roll_fakes,
                                               sources=sources, **kw)
    if inj is not None:
        recovered = residual[0, :, 1:].astype(np.float64).mean(axis=0)
        protected_fakes = None
        if config.protect and zones is not None:
            protected_fakes = _protected_fakes(inj, refs, fit, zones, fakes["fwhm"], kw,
                                               fit_zones, rolls, roll_fakes, center, min_move,
                                               sci, sources)
        inj = replace(inj, recovered=recovered, recovered_protected=protected_fakes)
        residual = np.ascontiguousarray(residual[:, :, 0])
        mvar = None if mvar is None else mvar[:, :, 0]
    restored = 0
    if back is not None and back.any():
        # outliers that are part of a source were signal: their own values come back (KLIP
        # is linear in the target; a protected source's pixels are not in the fit)
        restored = int(back.sum())
        delta = np.where(back, np.asarray(science.sci, np.float64) - sci, 0.0)
        residual = residual + delta[None].astype(np.float32)
        dq[back] &= ~np.uint32(core.DO_NOT_USE | core.OUTLIER)
        log.info("%s: %d pixel(s) flagged as outliers are part of a source; their values are "
                 "kept", science.path, restored)
    counts = {"nref": nref, "protected": protected, "restored": restored,
              "sky_order": sky_order, "rolls": rolls, "min_move": min_move}
    return _psfsub_product(science, residual, mvar, err, dq, nmodes, center, src, config,
                           transmission, counts, params), inj


def _every_integration(science, psfalign):
    """A 3-D psfalign (nref, ny, nx), references aligned once (coron-align --align-per
    exposure, or the JWST stage since jwst 1.16: aligned on the first science
    integration), as a 4-D one of a single layer (1, nref, ny, nx) that serves every
    integration (a view, no copy): KLIP decomposes it once for all."""
    if psfalign.sci.ndim != 3 or science.sci.ndim != 3:
        return psfalign
    once = str(psfalign.sci_header.get("ALIGNPER", "")).strip().upper() == "EXPOSURE"
    if not once and str(psfalign.primary.get("S_PSFALI", "")).strip().upper() != "COMPLETE":
        raise InputError(psfalign.path, "SCI is 3-D without S_PSFALI = COMPLETE: a stack of "
                                        "references not aligned (a psfstack?); give a "
                                        "psfalign, 4-D from coron-align or the JWST stage's "
                                        "3-D one")
    nint = science.sci.shape[0]
    shifts = (psfalign.tables or {}).get("SHIFTS")
    if shifts is not None and "sci_int" in shifts.colnames and len(shifts):
        made_for = int(np.max(shifts["sci_int"])) + 1
        if made_for != nint:
            raise InputError(psfalign.path, f"was aligned for an exposure of {made_for} "
                                            f"integrations (SHIFTS) but the science exposure "
                                            f"{science.path} has {nint}")
    refs = np.asarray(psfalign.sci)
    if not np.isfinite(refs).all():
        refs = core.repair_bad_pixels(refs, ~np.isfinite(refs))
    log.info("%s: references aligned once (3-D); used for each of the %d integrations",
             psfalign.path, nint)

    def every(a):
        return None if a is None else np.asarray(a)[None]

    return replace(psfalign, sci=every(refs), err=every(psfalign.err), dq=every(psfalign.dq))


def _check_klip_inputs(science, psfalign):
    """(nint, nref), or InputError naming the psfalign product."""
    if psfalign.sci.ndim != 4:
        raise InputError(psfalign.path, f"aligned references must be 4-D (nint, nref, ny, nx) "
                                        f"or 3-D (nref, ny, nx), not {psfalign.sci.ndim}-D")
    _frame_check(science, psfalign, psfalign.path)
    nint = science.sci.shape[0]
    if psfalign.sci.shape[0] not in (nint, 1):
        raise InputError(psfalign.path, f"has {psfalign.sci.shape[0]} integration layers but "
                                        f"the science exposure {science.path} has {nint}")
    return nint, psfalign.sci.shape[1]


def _source_pass(sci, targets, refs, err, center, fit, zones, kw, config, lod, with_fakes):
    """The first KLIP pass, over the whole frame, and the sources it shows.

    A zone a few lambda/D wide fits part of a source away, which would hide
    it, so sources are looked for after a pass without zones. Without zones
    that pass is also the result (unless protection changes the fit).

    Returns
    -------
    residual, mvar, nmodes :
        The pass's :func:`coron_cli.core.klip_subtract` results when it can
        be the final one (no zones), else None.
    found : ndarray of bool (ny, nx)
        The sources' pixels (:func:`_sources_in`).
    zmap : ndarray (ny, nx)
        The significance map they were found in.
    """
    residual = mvar = nmodes = None
    if zones is None:
        residual, mvar, nmodes = core.klip_subtract(targets, refs, fit_mask=fit, **kw)
        first = residual[0] if not with_fakes else residual[0][:, 0]
        fvar = None if mvar is None else (mvar[0] if not with_fakes else mvar[0][:, 0])
    else:
        fres, fmv, _ = core.klip_subtract(sci, refs, fit_mask=fit,
                                          **dict(kw, truncations=kw["truncations"][:1]))
        first, fvar = fres[0], None if fmv is None else fmv[0]
        del fres, fmv
    found, zmap = _sources_in(first, err, fvar, center, config.protect or 5.0,
                              config.noise_width, lod=lod)
    return residual, mvar, nmodes, found, zmap


def _psfsub_product(science, residual, mvar, err, dq, nmodes, center, src, config,
                    transmission, counts, params):
    """The psfsub Product: ERR calibrated on the residual, headers and provenance."""
    var = np.where(np.isfinite(err), err.astype(np.float64) ** 2, np.nan)
    if mvar is not None:
        var = var + mvar[0]
    out_err = core.calibrate_error(residual[0], np.sqrt(var), center,
                                   width=config.noise_width)
    header = science.sci_header.copy()
    star_cards(header, center, src)
    header["KLMODES"] = (",".join(str(int(k)) for k in nmodes[:, 0]),
                         "KL modes used (per truncation)")
    header["KLPROTEC"] = (counts["protected"], "source pixels left out of the KL fit")
    header["OUTLRSTR"] = (counts["restored"], "outlier pixels on a source given their values "
                                              "back")
    rolls = counts.get("rolls")
    header["KLROLLS"] = (0 if rolls is None else len(rolls.names),
                         "other-roll exposures used as references")
    if rolls is not None:
        header["KLRMOVE"] = (round(float(counts["min_move"]), 4),
                             "px a source moves where other rolls are used")
    images = {}
    if len(config.truncate) > 1:
        from astropy.io import fits

        kh = fits.Header()
        kh["KLMODES"] = (",".join(str(k) for k in config.truncate),
                         "truncations along axis 1 (FITS 4)")
        star_cards(kh, center)
        images["KLSUB"] = (residual, kh)
    if transmission is not None:
        images["TRANSMIS"] = transmission_image(transmission, center)
    if rolls is not None:
        params = {**(params or {}), "roll_references": [
            f"{name} ({d:+.2f} deg)" for name, d in zip(rolls.names, rolls.rotation)]}
    params = {**(params or {}), **config.params(), "sky_order": int(counts["sky_order"]),
              "min_transmission": float(config.min_transmission) if transmission is not None
              else "no map"}
    nref = counts["nref"]
    primary = add_provenance(science.primary, "coron-klip", params, history=[
        f"KLIP with {nref} references, modes used {nmodes[:, 0].tolist()}, "
        f"zones {config.zones}x{config.zone_sectors}"])
    log.info("KLIP-subtracted %d integrations with %d references (modes %s)",
             residual.shape[1], nref, ",".join(str(int(k)) for k in nmodes[:, 0]))
    # the science's variance components, pixel areas and integration times go along, as
    # in the JWST stage's psfsub (resample weighs by VAR_RNOISE)
    return carry_exposure_extensions(
        Product(sci=residual[0], err=out_err, dq=dq, primary=primary, sci_header=header,
                images=images, path="psfsub"), science)
