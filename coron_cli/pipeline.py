"""The coron3 pipeline: an association through stack, align, klip, combine and hlsp.

The same step functions as the single commands, called in one process with
products passed in memory; each named product is written atomically as soon
as it exists.
"""

import functools
import logging
import os
import time

from . import core, steps
from .asn import check_integrations, read_asn
from .errors import OutputError
from .products import (
    exposure_product_name,
    pixel_scale_arcsec,
    read_image,
    read_product,
    star_center,
    transmission_for,
    write_ecsv,
    write_product,
)
from .steps._common import _check_not_all_bad, check_same_frames
from .steps.config import ConfigError, PipelineConfig

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
            for kind in ("psfalign", "psfsub"):
                name = exposure_product_name(sci, kind, asn.asn_id)
                out.append((kind, os.path.join(outdir, name), [sci]))
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
                nint = exp.sci.shape[0]
                ints = check_integrations(asn, prod, path, nint) if what.startswith("ref") \
                    else None
                exp = steps.take_integrations(exp, ints)
                _check_not_all_bad(exp, core.bad_pixel_mask(exp.sci, exp.dq, bad_bits=bad_bits))
                ny, nx = exp.sci.shape[-2:]
                if first is None:
                    first = (path, exp.sci.shape)
                check_same_frames(*first, path, exp.sci.shape)
                log.info("%s: %s, %s of %dx%d pixels", path, what,
                         f"{nint} integration(s)" if ints is None else
                         f"{len(ints)} of its {nint} integration(s)", nx, ny)
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
def run_association(asn_path, outdir=".", config=None, *, mask=None, offaxis_psf=None,
                    on_step=None):
    """Run the whole chain on an association.

    Parameters
    ----------
    asn_path : str
        Association JSON file.
    outdir : str
        Folder for the products; created when missing.
    config : PipelineConfig, optional
        One configuration per step (:mod:`coron_cli.steps.config`): with
        ``inject`` set, fake sources measure the algorithmic throughput
        (:func:`coron_cli.steps.klip_inject_step`; every psfsub and the i2d
        get a THROUGHPUT table, the contrast table the calibrated contrast,
        ``timings["contrast"]`` the time spent combining and measuring the
        fakes for the i2d); with ``detect`` set, ``<product>_detections.fits``
        and ``.ecsv``; ``table_format`` ecsv adds ``<product>_contrast.ecsv``;
        ``plot`` the figures ``<product>_contrast.png`` and ``_snr.png``
        (needs matplotlib). ``psfmask``: the coronagraph's transmission map
        of every science exposure: ``auto`` takes the
        ``<exposure>_psfmask.fits`` beside it when there is one
        (:func:`coron_cli.products.psfmask_beside`), a path names one map for
        all, ``none`` uses none. Background members go with the science or
        the references (:func:`coron_cli.steps.match_backgrounds`) and are
        subtracted as ``background`` says.
    mask : ndarray, optional
        Registration weights.
    offaxis_psf : ndarray of shape (py, px), optional
        The unocculted PSF: injected with ``inject``, and used by ``detect``
        to tell a bright source's sidelobes from other sources.
    on_step : callable(str), optional
        Called with a short description before each step (progress display).

    Returns
    -------
    dict
        ``products``: list of {kind, path}; ``timings``: seconds per step;
        ``parameters``: the configuration (:meth:`PipelineConfig.as_dict`);
        ``asn_id``.
    """
    config = config or PipelineConfig()
    asn = read_asn(asn_path)
    for w in asn.warnings:
        log.warning("%s", w)
    check_outdir(outdir, create=True)
    if config.inject is not None and offaxis_psf is None:
        raise ConfigError("inject", "needs the off-axis PSF to inject")
    if config.plot:
        from .plots import require_matplotlib

        require_matplotlib()
    _check_not_inputs(asn, outdir)
    run = _Run(outdir, config, on_step)
    for prod in asn.products:
        run.step(f"stack {prod.name}")
        bkg_sci, stack = _stack(prod, asn, config)
        stack_path = run.emit("psfstack", stack, f"{prod.name}_psfstack.fits")
        # written: its raw SCI gives way to the repaired one the align step uses
        steps.stack.keep_repaired(stack, config.align.bad_bits)
        run.tick("stack")
        psfsubs, injections = [], []
        # the other rolls as references: every science exposure is needed by every other
        others = None
        if config.klip.roll_refs and len(prod.science) > 1:
            others = [_read_science(p, prod, bkg_sci, config) for p in prod.science]
        for k, sci_path in enumerate(prod.science):
            sub, inj = _science(sci_path, prod, asn, (stack, stack_path), bkg_sci, config, run,
                                mask, offaxis_psf, others=others,
                                sci=None if others is None else others[k])
            psfsubs.append(sub)
            injections.append(inj)
        del stack
        run.step(f"combine {prod.name}")
        i2d = steps.combine_step(psfsubs, config.combine)
        t_fake = 0.0
        if config.inject is not None and injections and all(j is not None for j in injections):
            t1 = time.perf_counter()
            fakes = steps.combine_injections(psfsubs, injections, config.combine.bad_bits)
            i2d = steps.add_throughput(i2d, steps.throughput_table(
                fakes, fwhm=config.inject.fwhm_pix, scale=pixel_scale_arcsec(i2d.sci_header)))
            del fakes
            t_fake = time.perf_counter() - t1
            run.tick("contrast", t1)
        del injections
        run.emit("i2d", i2d, f"{prod.name}_i2d.fits")
        run.tick("combine", run.t0 + t_fake)
        run.step(f"hlsp {prod.name}")
        i2d.path = os.path.join(outdir, f"{prod.name}_i2d.fits")
        _hlsp(i2d, prod.name, config, run, offaxis_psf)
        run.tick("hlsp")
    return {"asn": asn_path, "asn_id": asn.asn_id, "products": run.written,
            "timings": run.timings, "parameters": config.as_dict()}


_MALLOC_TRIM = None


def release_freed_memory():
    """Give the free pages of the C heap back to the system (glibc's ``malloc_trim``;
    nothing where there is none). Arrays of less than 32 MB are taken from the heap once
    larger ones have been freed, and the heap keeps what they free: between two steps
    that is tens of MB that the process would go on holding. A few milliseconds."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            import ctypes

            trim = ctypes.CDLL(None).malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            _MALLOC_TRIM = trim
        except (OSError, AttributeError):
            pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


class _Run:
    """What a run has written and how long its steps took."""

    def __init__(self, outdir, config, on_step):
        self.outdir, self.config, self.on_step = outdir, config, on_step
        self.written, self.timings = [], {}
        self.t0 = time.perf_counter()

    def step(self, description):
        """A step begins: tell the progress display, give the memory the previous step
        freed back to the system, start its clock."""
        if self.on_step:
            self.on_step(description)
        release_freed_memory()
        self.t0 = time.perf_counter()

    def tick(self, name, t0=None):
        t0 = self.t0 if t0 is None else t0
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        log.info("%s done in %.2f s", name, time.perf_counter() - t0)

    def emit(self, kind, product, name):
        path = os.path.join(self.outdir, name)
        write_product(product, path)
        self.written.append({"kind": kind, "path": path})
        return path


def _stack(prod, asn, config):
    """The product's references, background-subtracted when it has backgrounds, stacked.

    Returns (the science's backgrounds, the psfstack).
    """
    refs, ints = [], []
    for p in prod.psf:  # each cut to the integrations the association names, if it does
        ref = read_product(p, what="reference exposure")
        ints.append(check_integrations(asn, prod, p, ref.sci.shape[0]))
        refs.append(steps.take_integrations(ref, ints[-1]))
        if ints[-1] is not None:
            log.info("%s: %d of its %d integration(s) used", os.path.basename(p),
                     len(ints[-1]), ref.sci.shape[0])
        del ref
    bkg_sci = []
    if prod.background:
        bkgs = [_light(read_product(p, what="background exposure")) for p in prod.background]
        heads = [_light(read_product(p, what="science exposure")) for p in prod.science]
        bkg_sci, bkg_ref, left = steps.match_backgrounds(bkgs, heads, refs)
        for b in left:
            log.warning("%s: background of another filter; not used", b.path)
        del heads
        if not bkg_ref:
            log.info("no background exposure goes with the references")
        done = [steps.background_step(r, bkg_ref, config.background) for r in refs]
        refs = [r for r, _ in done]
        for sub in (True, False):
            whys = [why for r, why in done if why and bool(r.primary.get("BKGSUB")) == sub]
            if whys:
                log.info("%d reference exposure(s): %s%s", len(whys), whys[0],
                         " (first of them)" if len(whys) > 1 else "")
        del done  # the stack step consumes `refs`: no other reference to them
    stack = steps.stack_step(refs, config.stack, asn_id=asn.asn_id,
                             params={"inputs": [os.path.basename(p) for p in prod.psf]},
                             integrations=ints, consume=True)
    return bkg_sci, stack


def _read_science(sci_path, prod, bkg_sci, config):
    """A science exposure, its backgrounds subtracted as configured."""
    sci = read_product(sci_path, what="science exposure")
    if prod.background:
        sci, why = steps.background_step(sci, bkg_sci, config.background)
        if why:
            log.info("%s: %s", os.path.basename(sci_path), why)
        elif not bkg_sci:
            log.info("%s: no background exposure goes with the science",
                     os.path.basename(sci_path))
    return sci


def _science(sci_path, prod, asn, stack, bkg_sci, config, run, mask, offaxis_psf, *,
             others=None, sci=None):
    """Align and KLIP-subtract one science exposure; write its psfalign and psfsub.

    `stack` is (the psfstack, the file it was written to): its ERR, which only the
    align step uses, is not held between the exposures but read back from the file
    when it is needed (the same float32 numbers). `others`: the product's science
    exposures, whose other rolls serve as references (``config.klip.roll_refs``), and
    `sci` this one among them.

    Returns (the psfsub, its Injection or None).
    """
    stack, stack_path = stack
    run.step(f"align {os.path.basename(sci_path)}")
    if sci is None:
        sci = _read_science(sci_path, prod, bkg_sci, config)
    tmap = transmission_for(config.psfmask, sci_path, sci.sci.shape[-2:])
    if tmap is not None:
        log.info("%s: transmission map from %s", os.path.basename(sci_path),
                 config.psfmask if config.psfmask != "auto" else "beside it")
    if stack.err is None:
        stack.err = read_image(stack_path, "ERR")
    aligned = steps.align_step(sci, stack, config.align, mask=mask, transmission=tmap,
                               asn_id=asn.asn_id,
                               params={"science": sci_path, "psfstack": "in memory"})
    stack.err = None  # in the psfstack file: not held while the psfalign is written, nor in KLIP
    run.emit("psfalign", aligned, exposure_product_name(sci_path, "psfalign", asn.asn_id))
    aligned.dq = None  # written; KLIP does not use it (a full cube freed)
    run.tick("align")
    run.step(f"klip {os.path.basename(sci_path)}")
    rolls = None
    if others:
        # registered with the default settings (coron-klip --roll-ref does the same: the
        # registration options are the references'), on the same transmission map
        bits = config.align.bad_bits
        rolls = steps.roll_references(sci, others, steps.StackConfig(bad_bits=bits),
                                      steps.AlignConfig(bad_bits=bits), transmission=tmap)
    kw = {"transmission": tmap, "params": {"science": sci_path, "psfalign": "in memory"},
          "rolls": rolls}
    inj = None
    if config.inject is not None:
        sub, inj = steps.klip_inject_step(sci, aligned, offaxis_psf, config.klip, config.inject,
                                          **kw)
    else:
        sub = steps.klip_step(sci, aligned, config.klip, **kw)
    del aligned
    sub.path = run.emit("psfsub", sub, exposure_product_name(sci_path, "psfsub", asn.asn_id))
    run.tick("klip")
    return sub, inj


def _hlsp(i2d, name, config, run, offaxis_psf):
    """The SNR map, contrast table and the optional files of an i2d."""
    snr, con = steps.hlsp_step(i2d, config.hlsp, params={"image": i2d.path})
    run.emit("snr", snr, f"{name}_snr.fits")
    run.emit("contrast", con, f"{name}_contrast.fits")
    det = None
    if config.detect is not None:
        det = steps.detect_step(i2d, snr, config.detect, psf=offaxis_psf,
                                params={"image": i2d.path,
                                        "snr_method": config.hlsp.snr_method})
    extras = {kind: os.path.join(run.outdir, name + suffix) for kind, suffix in _hlsp_extras(
        detect=config.detect is not None, table_format=config.table_format, plot=config.plot)}
    write_hlsp_files(extras, con, snr, det, title=name)
    run.written.extend({"kind": kind, "path": path} for kind, path in extras.items())


def write_hlsp_files(paths, contrast, snr, detections=None, *, title):
    """The files the hlsp step writes besides its two products, each atomically.

    Parameters
    ----------
    paths : dict
        kind -> path, for the kinds wanted among ``contrast_ecsv`` (the
        contrast table as ECSV), ``detections`` and ``detections_ecsv`` (the
        detection table), ``contrast_png`` and ``snr_png`` (figures).
    contrast, snr, detections : Product
        The hlsp step's products and the detect step's (None without it).
    title : str
        The figures' title (the product's name).
    """
    for kind, path in paths.items():
        if kind == "contrast_ecsv":
            write_ecsv(contrast.tables["CONTRAST"], path)
        elif kind == "detections":
            write_product(detections, path)
        elif kind == "detections_ecsv":
            write_ecsv(detections.tables["DETECTIONS"], path)
        elif kind == "contrast_png":
            from .plots import plot_contrast

            plot_contrast(contrast.tables["CONTRAST"], path, title=title)
        elif kind == "snr_png":
            from .plots import plot_snr

            plot_snr(snr.sci, path, center=star_center(snr.sci_header, snr.sci.shape)[0],
                     detections=None if detections is None else detections.tables["DETECTIONS"],
                     title=f"{title}: SNR ({snr.sci_header.get('SNRMETH', 'ratio')})")
        else:
            raise ValueError(f"unknown hlsp file kind {kind!r}")


def _light(product):
    """The product's headers and arrays, without extra images (VAR_*, AREA)."""
    product.images = {}
    return product
