"""The coron3 pipeline: an association through stack, align, klip, combine and hlsp.

The same step functions as the single commands, called in one process with
products passed in memory; each named product is written atomically as soon
as it exists.
"""

import functools
import logging
import os
import time

from . import core, defaults, steps
from .asn import read_asn
from .errors import InputError, OutputError
from .products import (exposure_root, pixel_scale_arcsec, read_product, star_center,
                       transmission_for, write_ecsv, write_product)

__all__ = ["plan", "step_count", "run_association", "check_association", "check_outdir"]

log = logging.getLogger("coron")


def check_outdir(outdir, *, create=False):
    """The output folder must be writable; with `create`, a missing one is made.

    Without `create` (``coron3 check``, which writes nothing) a missing folder
    passes when it could be made: its nearest existing parent is a writable
    folder.
    """
    if not os.path.isdir(outdir):
        if os.path.exists(outdir):
            raise OutputError(outdir, "output folder is not a folder")
        parent = os.path.dirname(os.path.abspath(outdir))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(outdir, f"output folder cannot be created ({parent} is not a "
                                      "writable folder)")
        if not create:
            return
        try:
            os.makedirs(outdir, exist_ok=True)
        except OSError as exc:
            raise OutputError(outdir, f"output folder cannot be created "
                                      f"({exc.strerror or exc})") from None
        log.info("%s: output folder created", outdir)
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise OutputError(outdir, "output folder is not writable")


def plan(asn, outdir, *, detect=False, table_format="fits", plot=False):
    """Products an association will give, in the order they are written.

    `detect`, `table_format` and `plot` add the detection tables, the ECSV
    copy of the contrast table and the figures (see :func:`run_association`).

    Returns
    -------
    list of (kind, path, inputs)
    """
    out = []
    for prod in asn.products:
        out.append(("psfstack", os.path.join(outdir, f"{prod.name}_psfstack.fits"), prod.psf))
        for sci in prod.science:
            root = exposure_root(sci) + (f"_{asn.asn_id}" if asn.asn_id else "")
            out.append(("psfalign", os.path.join(outdir, f"{root}_psfalign.fits"), [sci]))
            out.append(("psfsub", os.path.join(outdir, f"{root}_psfsub.fits"), [sci]))
        out.append(("i2d", os.path.join(outdir, f"{prod.name}_i2d.fits"), prod.science))
        out.append(("snr", os.path.join(outdir, f"{prod.name}_snr.fits"), []))
        out.append(("contrast", os.path.join(outdir, f"{prod.name}_contrast.fits"), []))
        out.extend((kind, os.path.join(outdir, prod.name + name), []) for kind, name in
                   _hlsp_extras(detect=detect, table_format=table_format, plot=plot))
    return out


def _hlsp_extras(*, detect, table_format, plot):
    """(kind, name suffix) of the optional files the hlsp step writes after its products."""
    out = []
    if table_format == "ecsv":
        out.append(("contrast_ecsv", "_contrast.ecsv"))
    if detect:
        out += [("detections", "_detections.fits"), ("detections_ecsv", "_detections.ecsv")]
    if plot:
        out += [("contrast_png", "_contrast.png"), ("snr_png", "_snr.png")]
    return out


#: kinds of product that each start a step of their own (``on_step``)
_STEP_KINDS = ("psfstack", "psfalign", "psfsub", "i2d", "snr")


def step_count(planned):
    """Number of steps (``on_step`` calls) of a run: one per product but the contrast table
    and the optional files, which the hlsp step writes with the SNR image."""
    return sum(1 for kind, _, _ in planned if kind in _STEP_KINDS)


def _check_not_inputs(asn, outdir):
    all_inputs = {p for prod in asn.products for p in prod.science + prod.psf}
    for _, path, _ in plan(asn, outdir):
        if os.path.exists(path) and any(os.path.exists(i) and os.path.samefile(path, i)
                                        for i in all_inputs):
            raise OutputError(path, "is also an input; refusing to overwrite it")


def check_association(asn_path, outdir=".", *, bad_bits=1):
    """Check that an association can be run, without writing anything.

    Reads the association and every member: each must be a readable FITS
    exposure with SCI data (ERR and DQ, when present, of the same shape),
    not every pixel flagged; the science and psf frames of a product must
    have the same size; `outdir` must be a writable folder and no product
    may overwrite an input.

    Returns
    -------
    asn : Association
    planned : list of (kind, path, inputs)
        The products a run would write (see :func:`plan`).

    Raises
    ------
    InputError, OutputError
        The first problem found, naming the file.
    """
    asn = read_asn(asn_path)
    for w in asn.warnings:
        log.warning("%s", w)
    check_outdir(outdir)
    _check_not_inputs(asn, outdir)
    for prod in asn.products:
        first = None
        for what, paths in (("science exposure", prod.science),
                            ("reference exposure", prod.psf),
                            ("background exposure", prod.background)):
            for path in paths:
                exp = read_product(path, what=what)
                if core.bad_pixel_mask(exp.sci, exp.dq, bad_bits=bad_bits).all():
                    raise InputError(path, "all pixels are flagged DO_NOT_USE or not finite")
                ny, nx = exp.sci.shape[-2:]
                if first is None:
                    first = (path, ny, nx)
                elif (ny, nx) != first[1:]:
                    raise InputError(path, f"frames are {nx}x{ny} pixels but {first[0]} has "
                                           f"{first[2]}x{first[1]}")
                log.info("%s: %s, %d integration(s) of %dx%d pixels", path, what,
                         exp.sci.shape[0], nx, ny)
                del exp
    return asn, plan(asn, outdir)


class _Once(logging.Filter):
    """Lets each distinct warning through once (per exposure they repeat)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record):
        if record.levelno != logging.WARNING:
            return True
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def _warn_once(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        once = _Once()
        log.addFilter(once)
        try:
            return func(*args, **kwargs)
        finally:
            log.removeFilter(once)
    return wrapper


@_warn_once
def run_association(asn_path, outdir=".", *, truncate=(50,), annuli=1, subsections=1,
                    exclude=(), protect=5.0, weights=defaults.WEIGHTS, annuli_width=2,
                    bad_bits=1,
                    star_flux=None,
                    fwhm=None,
                    star_flux_method="peak", offaxis_psf=None, contrast=False,
                    snr_method="ratio", detect=None, inner_radius=None, table_format="fits",
                    plot=False, mask=None, method="auto", psfmask=defaults.PSFMASK,
                    psfmask_weights=defaults.PSFMASK_WEIGHTS,
                    min_transmission=defaults.MIN_TRANSMISSION, sky_order=defaults.SKY_ORDER,
                    zone_width=defaults.ZONE_WIDTH, zone_fit=defaults.ZONE_FIT,
                    background=defaults.BACKGROUND, on_step=None):
    """Run the whole chain on an association.

    Parameters
    ----------
    asn_path : str
        Association JSON file.
    outdir : str
        Folder for the products; created when missing.
    truncate, annuli, subsections, exclude, protect, weights, annuli_width, bad_bits :
        As for coron-klip / coron-hlsp.
    star_flux, fwhm : float, optional
        For the contrast table.
    star_flux_method, snr_method : str
        As for coron-hlsp.
    offaxis_psf : ndarray of shape (py, px), optional
        The unocculted PSF: injected by `contrast`, and used by `detect` to
        tell a bright source's sidelobes from other sources.
    contrast : bool
        Measure the algorithmic throughput by fake-source injection
        (:func:`coron_cli.steps.klip_inject_step`, in the KLIP step): every
        psfsub and the i2d get a THROUGHPUT table, and the contrast table the
        calibrated contrast; ``timings["contrast"]`` is the time spent
        combining and measuring the fakes for the i2d.
    detect : float, optional
        SNR threshold of the detection table (``<product>_detections.fits``
        and ``.ecsv``); `inner_radius` as for coron-hlsp.
    table_format : {"fits", "ecsv"}
        ``ecsv`` also writes ``<product>_contrast.ecsv``.
    plot : bool
        Write ``<product>_contrast.png`` and ``<product>_snr.png``
        (needs matplotlib).
    mask : ndarray, optional
        Registration weights.
    psfmask : "auto", "none" or str
        The coronagraph's transmission map of every science exposure:
        ``auto`` takes the ``<exposure>_psfmask.fits`` beside it when there
        is one (:func:`coron_cli.products.psfmask_beside`), a path names one
        map for all, ``none`` uses none.
    psfmask_weights, min_transmission, sky_order, zone_width, zone_fit :
        As for coron-align (registration weighted by the map) and
        coron-klip (pixels below `min_transmission` left out of the KL fit;
        the sky's polynomial order).
    background : {"auto", "subtract", "off"}
        What to do with the association's background members (see
        :func:`coron_cli.steps.background_step`): science backgrounds go
        with the science and reference backgrounds with the references
        (:func:`coron_cli.steps.match_backgrounds`).
    on_step : callable(str), optional
        Called with a short description before each step (progress display).

    Returns
    -------
    dict
        ``products``: list of {kind, path}; ``timings``: seconds per step;
        ``parameters``; ``asn_id``.
    """
    asn = read_asn(asn_path)
    for w in asn.warnings:
        log.warning("%s", w)
    check_outdir(outdir, create=True)
    truncs = steps.parse_truncate(truncate)
    if contrast and offaxis_psf is None:
        raise InputError("--contrast", "needs --psf-offaxis FILE (the unocculted PSF to inject)")
    if plot:
        from .plots import require_matplotlib

        require_matplotlib()
    written, timings = [], {}
    _check_not_inputs(asn, outdir)

    def tick(name, t0):
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        log.info("%s done in %.2f s", name, time.perf_counter() - t0)

    def emit(kind, product, path):
        write_product(product, path)
        written.append({"kind": kind, "path": path})

    for prod in asn.products:
        if on_step:
            on_step(f"stack {prod.name}")
        t0 = time.perf_counter()
        refs = [read_product(p, what="reference exposure") for p in prod.psf]
        bkg_sci = []
        if prod.background:
            bkgs = [_light(read_product(p, what="background exposure"))
                    for p in prod.background]
            heads = [_light(read_product(p, what="science exposure")) for p in prod.science]
            bkg_sci, bkg_ref, left = steps.match_backgrounds(bkgs, heads, refs)
            for b in left:
                log.warning("%s: background of another filter; not used", b.path)
            del heads
            if not bkg_ref:
                log.info("no background exposure goes with the references")
            done = [steps.background_step(r, bkg_ref, mode=background, bad_bits=bad_bits)
                    for r in refs]
            refs = [r for r, _ in done]
            for sub in (True, False):
                whys = [why for r, why in done if why and bool(r.primary.get("BKGSUB")) == sub]
                if whys:
                    log.info("%d reference exposure(s): %s%s", len(whys), whys[0],
                             " (first of them)" if len(whys) > 1 else "")
        stack = steps.stack_step(refs, bad_bits=bad_bits, asn_id=asn.asn_id,
                                 params={"inputs": [os.path.basename(p) for p in prod.psf]})
        del refs
        emit("psfstack", stack, os.path.join(outdir, f"{prod.name}_psfstack.fits"))
        tick("stack", t0)
        psfsubs, injections = [], []
        for sci_path in prod.science:
            root = exposure_root(sci_path) + (f"_{asn.asn_id}" if asn.asn_id else "")
            if on_step:
                on_step(f"align {os.path.basename(sci_path)}")
            t0 = time.perf_counter()
            sci = read_product(sci_path, what="science exposure")
            if prod.background:
                sci, why = steps.background_step(sci, bkg_sci, mode=background,
                                                 bad_bits=bad_bits)
                if why:
                    log.info("%s: %s", os.path.basename(sci_path), why)
                elif not bkg_sci:
                    log.info("%s: no background exposure goes with the science",
                             os.path.basename(sci_path))
            tmap = transmission_for(psfmask, sci_path, sci.sci.shape[-2:])
            if tmap is not None:
                log.info("%s: transmission map from %s", os.path.basename(sci_path),
                         "--psfmask" if psfmask != "auto" else "beside it")
            aligned = steps.align_step(sci, stack, mask=mask, bad_bits=bad_bits,
                                       asn_id=asn.asn_id, method=method, transmission=tmap,
                                       psfmask_weights=psfmask_weights,
                                       params={"science": sci_path, "psfstack": "in memory"})
            emit("psfalign", aligned, os.path.join(outdir, f"{root}_psfalign.fits"))
            aligned.dq = None  # written; KLIP does not use it (a full cube freed)
            tick("align", t0)
            if on_step:
                on_step(f"klip {os.path.basename(sci_path)}")
            t0 = time.perf_counter()
            kw = dict(truncate=truncs, annuli=annuli, subsections=subsections, exclude=exclude,
                      protect=protect, weights=weights,
                      annuli_width=annuli_width, bad_bits=bad_bits, transmission=tmap,
                      min_transmission=min_transmission, sky_order=sky_order,
                      zone_width=zone_width, zone_fit=zone_fit,
                      params={"science": sci_path, "psfalign": "in memory"})
            if contrast:
                sub, inj = steps.klip_inject_step(sci, aligned, offaxis_psf, fwhm=fwhm, **kw)
                injections.append(inj)
            else:
                sub = steps.klip_step(sci, aligned, **kw)
            del aligned
            path = os.path.join(outdir, f"{root}_psfsub.fits")
            emit("psfsub", sub, path)
            sub.path = path
            psfsubs.append(sub)
            tick("klip", t0)
        del stack
        if on_step:
            on_step(f"combine {prod.name}")
        t0 = time.perf_counter()
        i2d = steps.combine_step(psfsubs, annuli_width=annuli_width)
        t_fake = 0.0
        if contrast and injections and all(j is not None for j in injections):
            t1 = time.perf_counter()
            fakes = steps.combine_injections(psfsubs, injections)
            i2d = steps.add_throughput(i2d, steps.throughput_table(
                fakes, fwhm=fwhm, scale=pixel_scale_arcsec(i2d.sci_header)))
            del fakes
            t_fake = time.perf_counter() - t1
            tick("contrast", t1)
        del injections
        emit("i2d", i2d, os.path.join(outdir, f"{prod.name}_i2d.fits"))
        tick("combine", t0 + t_fake)
        if on_step:
            on_step(f"hlsp {prod.name}")
        t0 = time.perf_counter()
        i2d.path = os.path.join(outdir, f"{prod.name}_i2d.fits")
        snr, con = steps.hlsp_step(i2d, annuli_width=annuli_width, star_flux=star_flux,
                                   star_flux_method=star_flux_method, fwhm=fwhm,
                                   snr_method=snr_method, params={"image": i2d.path})
        emit("snr", snr, os.path.join(outdir, f"{prod.name}_snr.fits"))
        emit("contrast", con, os.path.join(outdir, f"{prod.name}_contrast.fits"))
        det = None
        if detect is not None:
            det = steps.detect_step(i2d, snr, threshold=detect, inner_radius=inner_radius,
                                    fwhm=fwhm, star_flux=star_flux,
                                    star_flux_method=star_flux_method, psf=offaxis_psf,
                                    params={"image": i2d.path, "snr_method": snr_method})
        extras = {kind: os.path.join(outdir, prod.name + name) for kind, name in
                  _hlsp_extras(detect=detect is not None, table_format=table_format,
                               plot=plot)}
        for kind, path in extras.items():
            if kind == "contrast_ecsv":
                write_ecsv(con.tables["CONTRAST"], path)
            elif kind == "detections":
                write_product(det, path)
            elif kind == "detections_ecsv":
                write_ecsv(det.tables["DETECTIONS"], path)
            elif kind == "contrast_png":
                from .plots import plot_contrast

                plot_contrast(con.tables["CONTRAST"], path, title=prod.name)
            elif kind == "snr_png":
                from .plots import plot_snr

                plot_snr(snr.sci, path, center=star_center(snr.sci_header, snr.sci.shape)[0],
                         detections=det.tables["DETECTIONS"] if det is not None else None,
                         title=f"{prod.name}: SNR ({snr_method})")
            written.append({"kind": kind, "path": path})
        tick("hlsp", t0)
    return {
        "asn": asn_path,
        "asn_id": asn.asn_id,
        "products": written,
        "timings": timings,
        "parameters": {"truncate": truncs, "annuli": annuli, "subsections": subsections,
                       "exclude": [list(e) for e in exclude], "protect": protect,
                       "weights": weights,
                       "annuli_width": annuli_width,
                       "bad_bits": bad_bits, "star_flux": star_flux, "fwhm": fwhm,
                       "star_flux_method": star_flux_method, "contrast": contrast,
                       "snr_method": snr_method, "detect": detect,
                       "inner_radius": inner_radius, "table_format": table_format,
                       "plot": plot, "method": method, "psfmask": psfmask,
                       "psfmask_weights": psfmask_weights,
                       "min_transmission": min_transmission, "sky_order": sky_order,
                       "zone_width": zone_width, "zone_fit": zone_fit,
                       "background": background},
    }


def _light(product):
    """The product's headers and arrays, without extra images (VAR_*, AREA)."""
    product.images = {}
    return product
