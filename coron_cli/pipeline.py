"""The coron3 pipeline: an association through stack, align, klip, combine and hlsp.

The same step functions as the single commands, called in one process with
products passed in memory; each named product is written atomically as soon
as it exists.
"""

import logging
import os
import time

from . import core, steps
from .asn import read_asn
from .errors import InputError, OutputError
from .products import exposure_root, read_product, write_product

__all__ = ["plan", "step_count", "run_association", "check_association", "check_outdir"]

log = logging.getLogger("coron")


def check_outdir(outdir):
    """The output folder must exist and be writable."""
    if not os.path.isdir(outdir):
        raise OutputError(outdir, "output folder does not exist")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise OutputError(outdir, "output folder is not writable")


def plan(asn, outdir):
    """Products an association will give, in the order they are written.

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
    return out


def step_count(planned):
    """Number of steps (``on_step`` calls) of a run: one per product but the contrast table,
    which the hlsp step writes with the SNR image."""
    return sum(1 for kind, _, _ in planned if kind != "contrast")


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
                            ("reference exposure", prod.psf)):
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


def run_association(asn_path, outdir=".", *, truncate=(50,), annuli=1, subsections=1,
                    exclude=(), annuli_width=2, bad_bits=1, star_flux=None, fwhm=None,
                    mask=None, on_step=None):
    """Run the whole chain on an association.

    Parameters
    ----------
    asn_path : str
        Association JSON file.
    outdir : str
        Existing, writable folder for the products.
    truncate, annuli, subsections, exclude, annuli_width, bad_bits :
        As for coron-klip / coron-hlsp.
    star_flux, fwhm : float, optional
        For the contrast table.
    mask : ndarray, optional
        Registration weights.
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
    check_outdir(outdir)
    truncs = steps.parse_truncate(truncate)
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
        stack = steps.stack_step(refs, bad_bits=bad_bits, asn_id=asn.asn_id,
                                 params={"inputs": [os.path.basename(p) for p in prod.psf]})
        del refs
        emit("psfstack", stack, os.path.join(outdir, f"{prod.name}_psfstack.fits"))
        tick("stack", t0)
        psfsubs = []
        for sci_path in prod.science:
            root = exposure_root(sci_path) + (f"_{asn.asn_id}" if asn.asn_id else "")
            if on_step:
                on_step(f"align {os.path.basename(sci_path)}")
            t0 = time.perf_counter()
            sci = read_product(sci_path, what="science exposure")
            aligned = steps.align_step(sci, stack, mask=mask, bad_bits=bad_bits,
                                       asn_id=asn.asn_id,
                                       params={"science": sci_path, "psfstack": "in memory"})
            emit("psfalign", aligned, os.path.join(outdir, f"{root}_psfalign.fits"))
            tick("align", t0)
            if on_step:
                on_step(f"klip {os.path.basename(sci_path)}")
            t0 = time.perf_counter()
            sub = steps.klip_step(sci, aligned, truncate=truncs, annuli=annuli,
                                  subsections=subsections, exclude=exclude,
                                  annuli_width=annuli_width, bad_bits=bad_bits,
                                  params={"science": sci_path, "psfalign": "in memory"})
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
        emit("i2d", i2d, os.path.join(outdir, f"{prod.name}_i2d.fits"))
        tick("combine", t0)
        if on_step:
            on_step(f"hlsp {prod.name}")
        t0 = time.perf_counter()
        i2d.path = os.path.join(outdir, f"{prod.name}_i2d.fits")
        snr, contrast = steps.hlsp_step(i2d, annuli_width=annuli_width, star_flux=star_flux,
                                        fwhm=fwhm, params={"image": i2d.path})
        emit("snr", snr, os.path.join(outdir, f"{prod.name}_snr.fits"))
        emit("contrast", contrast, os.path.join(outdir, f"{prod.name}_contrast.fits"))
        tick("hlsp", t0)
    return {
        "asn": asn_path,
        "asn_id": asn.asn_id,
        "products": written,
        "timings": timings,
        "parameters": {"truncate": truncs, "annuli": annuli, "subsections": subsections,
                       "exclude": [list(e) for e in exclude], "annuli_width": annuli_width,
                       "bad_bits": bad_bits, "star_flux": star_flux, "fwhm": fwhm},
    }
