"""The JWST pipeline's coron3 steps on an association, offline, timed step by step.

Not part of coron and never imported by it: ``benchmarks/vs_jwst.py`` runs this file
with the python of the JWST virtual environment it keeps (``benchmarks/.venv-jwst``,
``pip install jwst==3.0.0``). It can also be run by hand::

    benchmarks/.venv-jwst/bin/python benchmarks/_jwst_runner.py ASN.json --outdir DIR \
        --json timings.json [--resample]

What it runs is what ``calwebb_coron3`` (``jwst.pipeline.Coron3Pipeline.process``) does
with outlier detection skipped, up to and without ``resample`` unless ``--resample``:

1. open the association's ``science`` and ``psf`` members (a ModelContainer, as the
   stage's ``prepare_output`` does);
2. ``stack_refs`` on the psf members, saved as ``<product>_psfstack.fits``;
3. for every science member: ``align_refs`` (saved as
   ``<exposure>_<asn_id>_psfalign.fits``) and ``klip`` (``..._psfsub.fits``);
4. with ``--resample``: every psfsub integration into ``resample``, saved as
   ``<product>_i2d.fits``. Files without a gwcs (coron's simulated exposures carry
   only a FITS WCS) get one made from the SCI header's WCS first, untimed.

The steps are the children of a ``Coron3Pipeline`` object, so, as in the stage, they
work on the models in place (``prepare_output`` makes no copies when a step has a
parent) and the products are named and written by the pipeline's ``save_model``.

Offline: no CRDS server is asked anything. A throw-away CRDS cache (``CRDS_PATH`` in a
temporary folder holding only a ``server_config`` that names a context) is set up
before ``crds`` is imported, ``CRDS_SERVER_URL`` is removed from the environment (crds
then defaults to its serverless mode), ``STPIPE_DISABLE_CRDS_STEPPARS=True`` stops the
parameter-file look-ups, and ``align_refs`` gets a uniform PSFMASK (all ones, the
science frame's size) through ``override_psfmask`` instead of the CRDS reference.

The JSON written with ``--json`` holds, per phase, the seconds (compute and saving
apart) and the peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` when each
phase starts), the process's overall peak, the products written with their sizes,
and the versions.
"""

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time

T_START = time.perf_counter()


# ---------------------------------------------------------------------------
# offline CRDS (before anything imports crds)
# ---------------------------------------------------------------------------
def offline_crds():
    """A temporary CRDS cache holding only its server configuration; returns its path."""
    root = tempfile.mkdtemp(prefix="vs_jwst_crds_")
    atexit.register(shutil.rmtree, root, True)
    cfg = os.path.join(root, "config", "jwst")
    os.makedirs(cfg)
    server_config = {"observatory": "jwst", "operational_context": "jwst_0000.pmap",
                     "edit_context": "jwst_0000.pmap", "force_remote_mode": False,
                     "bad_files": "", "bad_files_list": [], "last_synced": "never (offline)"}
    with open(os.path.join(cfg, "server_config"), "w") as fh:
        fh.write(repr(server_config))
    os.environ.pop("CRDS_SERVER_URL", None)  # crds' default URL is its serverless mode
    os.environ["CRDS_PATH"] = root
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "True"
    return root


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------
def vm(key):
    """VmRSS / VmHWM of this process in bytes (0 when /proc is unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Phases:
    """Seconds and peak RSS of consecutive phases of the run.

    ``start(name)`` closes the running phase and opens ``name``; the high-water mark is
    reset at every start, so each phase's peak is its own, and the process's overall
    peak is the largest of them (VmHWM read before every reset).
    """

    def __init__(self):
        self.seconds, self.peak = {}, {}
        self.overall_peak = 0
        self.current, self.t0 = None, None
        self.can_reset = True

    def _reset(self):
        if not self.can_reset:
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.can_reset = False

    def start(self, name):
        self.stop()
        self.current, self.t0 = name, time.perf_counter()
        self._reset()

    def stop(self):
        if self.current is None:
            return
        dt = time.perf_counter() - self.t0
        hwm = vm("VmHWM")
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + dt
        self.peak[self.current] = max(self.peak.get(self.current, 0), hwm)
        self.overall_peak = max(self.overall_peak, hwm)
        self.current = None


# ---------------------------------------------------------------------------
# helpers on the JWST side
# ---------------------------------------------------------------------------
def uniform_psfmask(shape, folder):
    """An all-ones PSFMASK reference of the science frame's shape; returns its path."""
    import numpy as np
    from stdatamodels.jwst import datamodels

    mask = datamodels.PsfMaskModel(data=np.ones(shape, np.float32))
    mask.meta.reftype = "PSFMASK"
    mask.meta.description = "uniform PSFMASK (all ones) for an offline benchmark"
    mask.meta.author = "coron benchmarks/_jwst_runner.py"
    mask.meta.pedigree = "DUMMY"
    mask.meta.useafter = "2000-01-01T00:00:00"
    path = os.path.join(folder, "uniform_psfmask.fits")
    mask.save(path)
    mask.close()
    return path


def give_wcs(model, exposure):
    """What resample needs and coron's simulated exposures lack (real calints have
    it): a gwcs made from the FITS WCS of the SCI header of `exposure` (a path), the
    reference point (CRVAL), the roll (ROLL_REF), V3 angle 0, parity -1, the
    S_REGION, exposure times (one second per integration) and VAR_RNOISE (ERR**2:
    resample weighs by its inverse). Only what is missing is filled in."""
    from astropy.io import fits

    head = fits.getheader(exposure, "SCI")
    if model.meta.wcs is None:
        from astropy.coordinates import ICRS
        from gwcs import WCS
        from gwcs import coordinate_frames as cf
        from gwcs.utils import make_fitswcs_transform

        wcs = WCS(forward_transform=make_fitswcs_transform(head),
                  input_frame=cf.Frame2D(name="detector"),
                  output_frame=cf.CelestialFrame(reference_frame=ICRS(), name="world"))
        wcs.bounding_box = ((-0.5, head["NAXIS1"] - 0.5), (-0.5, head["NAXIS2"] - 0.5))
        model.meta.wcs = wcs
    info = model.meta.wcsinfo
    if info.ra_ref is None or info.dec_ref is None:
        info.ra_ref, info.dec_ref = float(head["CRVAL1"]), float(head["CRVAL2"])
    if info.roll_ref is None:
        info.roll_ref = float(fits.getheader(exposure, 0).get("ROLL_REF", 0.0))
    if info.v3yangle is None:
        info.v3yangle = 0.0
    if info.vparity is None:
        info.vparity = -1
    if info.s_region is None:
        from jwst.assign_wcs.util import update_s_region_imaging

        update_s_region_imaging(model)
    exp = model.meta.exposure
    nint = model.data.shape[0]
    if exp.exposure_time is None:
        exp.exposure_time = exp.effective_exposure_time = exp.measurement_time = float(nint)
        exp.duration = exp.elapsed_exposure_time = float(nint)
    if exp.start_time is None:
        exp.start_time = 60000.0
        exp.end_time = 60000.0 + nint / 86400.0
    if not model.hasattr("var_rnoise"):  # resample's default weights are 1/VAR_RNOISE
        model.var_rnoise = model.err ** 2


def blas_text(np):
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # noqa: BLE001 - older numpy
        return "unknown"


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def run(args):
    crds_root = offline_crds()
    ph = Phases()
    ph.start("import")
    import logging
    import warnings

    if not args.verbose:
        warnings.simplefilter("ignore")
        for name in ("stpipe", "jwst", "CRDS", "stcal", "stdatamodels", "py.warnings"):
            logging.getLogger(name).setLevel(logging.WARNING)
    import jwst
    import numpy as np
    from jwst.datamodels import ModelContainer, ModelLibrary
    from jwst.model_blender import ModelBlender
    from jwst.pipeline import Coron3Pipeline
    from jwst.pipeline.calwebb_coron3 import to_container

    ph.start("open")
    os.makedirs(args.outdir, exist_ok=True)
    members = ModelContainer(args.asn, asn_exptypes=["science", "psf"])
    asn_id = members.asn_table["asn_id"]
    product = members.asn_table["products"][0]["name"]
    by_type = {"science": [], "psf": []}
    for model in members:
        by_type[str(model.meta.asn.exptype).lower()].append(model)
    targets, psfs = by_type["science"], by_type["psf"]
    if not targets or not psfs:
        raise SystemExit("the association needs science and psf members")
    sci_paths = {m.meta.filename: os.path.join(os.path.dirname(os.path.abspath(args.asn)),
                                               m.meta.filename) for m in targets}

    ph.start("setup")
    work = tempfile.mkdtemp(prefix="vs_jwst_runner_")
    atexit.register(shutil.rmtree, work, True)
    mask = args.psfmask or uniform_psfmask(targets[0].data.shape[-2:], work)
    pipe = Coron3Pipeline(output_dir=args.outdir)
    pipe.output_file = product
    pipe.asn_id = asn_id
    pipe.align_refs.override_psfmask = mask
    pipe.klip.truncate = args.truncate
    pipe.resample.blendheaders = False

    written, status = [], {}

    def save(model, **kw):
        paths = pipe.save_model(model, force=True, **kw)
        for p in [paths] if isinstance(paths, str) else paths:
            written.append({"path": os.path.abspath(p), "bytes": os.path.getsize(p)})

    ph.start("stack_refs")
    stack = pipe.stack_refs.run(ModelContainer(psfs))
    status["stack_refs"] = stack.meta.cal_step.stack_psfs
    ph.start("stack_refs_save")
    save(stack, suffix="psfstack")

    library = ModelContainer() if args.resample else None
    blender = ModelBlender() if args.resample else None
    status["align_refs"], status["klip"] = [], []
    for target in targets:
        root = target.meta.filename
        if blender is not None:
            blender.accumulate(target)
        ph.start("align_refs")
        aligned = pipe.align_refs.run(target, stack)
        status["align_refs"].append(aligned.meta.cal_step.align_psfs)
        ph.start("align_refs_save")
        save(aligned, output_file=root, suffix="psfalign", acid=asn_id)
        ph.start("klip")
        sub = pipe.klip.run(target, aligned)
        aligned.close()
        status["klip"].append(sub.meta.cal_step.klip)
        ph.start("klip_save")
        save(sub, output_file=root, suffix="psfsub", acid=asn_id)
        if library is not None:
            ph.start("resample_prep")
            give_wcs(sub, sci_paths[root])
            for image in to_container(sub):
                library.append(image)

    if library is not None:
        ph.start("resample")
        i2d = pipe.resample.run(ModelLibrary(library, on_disk=False))
        status["resample"] = i2d.meta.cal_step.resample
        if status["resample"] == "COMPLETE":
            blender.finalize_model(i2d)
        ph.start("resample_save")
        save(i2d, suffix="i2d")
        i2d.close()
    ph.stop()

    return {
        "asn": os.path.abspath(args.asn), "asn_id": asn_id, "product": product,
        "n_science": len(targets), "n_psf_exposures": len(psfs),
        "psf_slices": int(stack.data.shape[0]), "frame": list(stack.data.shape[1:]),
        "seconds": ph.seconds, "peak_rss": ph.peak, "peak_rss_overall": ph.overall_peak,
        "peak_reset_worked": ph.can_reset, "status": status, "products": written,
        "psfmask": "uniform (all ones)" if not args.psfmask else os.path.abspath(mask),
        "truncate": args.truncate, "resample": bool(args.resample),
        "crds": {"CRDS_PATH": crds_root, "CRDS_SERVER_URL": os.environ.get("CRDS_SERVER_URL"),
                 "STPIPE_DISABLE_CRDS_STEPPARS": os.environ["STPIPE_DISABLE_CRDS_STEPPARS"]},
        "versions": {"python": sys.version.split()[0], "jwst": jwst.__version__,
                     "numpy": np.__version__, "blas": blas_text(np)},
        "wall_in_process": time.perf_counter() - T_START,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("asn", help="the association (members relative to it)")
    ap.add_argument("--outdir", required=True, help="folder for the products")
    ap.add_argument("--json", help="write the timings and peaks here")
    ap.add_argument("--resample", action="store_true", help="also run resample (_i2d)")
    ap.add_argument("--truncate", type=int, default=50, help="klip truncate (default 50)")
    ap.add_argument("--psfmask", help="a PSFMASK file for align_refs (default: uniform)")
    ap.add_argument("--verbose", action="store_true", help="keep the JWST INFO logs")
    args = ap.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
