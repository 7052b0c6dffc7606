"""coron-select: rank the frames of a reference library against science exposures.

The library side of ``coron-select``: the library's files (:func:`find_library`), the
header checks that make a frame a candidate (:func:`file_info`, :func:`same_setup`),
the science vectors (:func:`science_vectors`), the scores computed blockwise on dask
arrays, one block per library file (:func:`score_library`), the ranking and the
selection (:func:`select_frames`), and the association and score table written
(:func:`write_selection`). :func:`run_select` does all of it on a local cluster or a
dask.distributed scheduler.

dask is imported only when a selection runs (:func:`require_dask`); this module imports
without it. The numerics are in :mod:`coron_cli.core.select`.
"""

import json
import logging
import os

import numpy as np

from .errors import CoronError, InputError
from .paths import find_files

__all__ = [
    "LIBRARY_PATTERN",
    "SETUP_KEYS",
    "file_info",
    "find_library",
    "output_root",
    "require_dask",
    "run_select",
    "same_setup",
    "science_means",
    "science_vectors",
    "score_library",
    "select_frames",
    "write_selection",
]

log = logging.getLogger("coron")

#: the header keywords a candidate must share with the science (those the science has)
SETUP_KEYS = ("INSTRUME", "CORONMSK", "FILTER", "SUBARRAY")
#: the files of a library folder
LIBRARY_PATTERN = "*_calints.fits"


def require_dask():
    """dask.distributed, or a one-line InputError (exit 2) naming the extra
    (:func:`coron_cli.batch.require_dask`)."""
    from .batch import require_dask as require

    return require(None)


# --------------------------------------------------------------------------- which files

def find_library(items):
    """The library files that `--library` values name, in order, each once.

    Each item is a FITS file, a glob (quoted), a folder (its ``*_calints.fits``,
    sorted) or a list file (``@list.txt``, or any ``.txt`` file: one path, glob
    or folder a line, relative to the list's folder, ``#`` comments).

    Raises
    ------
    InputError
        An item naming no file, or no item.
    """
    return find_files(items, LIBRARY_PATTERN, noun="reference file", plural="reference files",
                      none_given="no reference file given (files, globs, folders or "
                                 "@list.txt)", none_source="--library")


# --------------------------------------------------------------------------- headers

def _setup(primary, sci_header):
    out = {}
    for key in SETUP_KEYS:
        value = primary.get(key, sci_header.get(key))
        if value is not None:
            out[key] = str(value).strip().upper()
    return out


def file_info(path):
    """What the headers of one exposure say, without reading its data (a worker's task).

    Returns
    -------
    dict
        ``path``, ``setup`` ({keyword: value} of :data:`SETUP_KEYS` present),
        ``nint``, ``shape`` (ny, nx), ``star`` (x, y, 0-based: STARCENX/Y,
        else CRPIX...), ``error`` (one line, or None: then the others may be
        missing). Never raises.
    """
    from .products import star_center

    out = {"path": path, "error": None}
    if not os.path.exists(path):
        out["error"] = "no such file"
        return out
    if os.path.isdir(path):
        out["error"] = "is a directory, not a FITS file"
        return out
    try:
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdul:
            primary = hdul[0].header
            sci = None
            for hdu in hdul:
                if hdu.name.upper() == "SCI":
                    sci = hdu.header
                    break
            if sci is None:
                sci = primary if primary.get("NAXIS", 0) >= 2 else None
            if sci is None:
                out["error"] = "no SCI data"
                return out
            naxis = int(sci.get("NAXIS", 0))
            dims = [int(sci.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1)]
            header = fits.Header(sci)
            primary = fits.Header(primary)
    except Exception as exc:  # noqa: BLE001 - astropy raises assorted errors on garbage
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        out["error"] = f"not a readable FITS file ({text})"
        return out
    while len(dims) > 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) not in (2, 3) or min(dims) < 1:
        out["error"] = f"SCI of shape {tuple(dims)}: an exposure must be 2-D or 3-D"
        return out
    nint = dims[0] if len(dims) == 3 else 1
    shape = tuple(dims[-2:])
    out.update(setup=_setup(primary, header), nint=nint, shape=shape,
               star=tuple(float(v) for v in star_center(header, shape, primary)[0]))
    return out


def same_setup(science, info):
    """'' when `info` (:func:`file_info`) may be a reference of `science` (same setup
    keywords the science has, same frame size), else why not, in a few words."""
    for key, value in science["setup"].items():
        other = info["setup"].get(key)
        if other != value:
            return f"{key} {other or 'missing'} (science {value})"
    if tuple(info["shape"]) != tuple(science["shape"]):
        ny, nx = info["shape"]
        return f"{nx}x{ny} frames (science {science['shape'][1]}x{science['shape'][0]})"
    return ""


# --------------------------------------------------------------------------- the numbers

class _FileError(Exception):
    """A worker's failure to read a file: (path, message), picklable."""


def _sci_dq(path):
    """The SCI and DQ of a plain (uncompressed) FITS file with SCI and DQ image
    extensions, read without the rest (ERR, tables): a Product holding only
    them and the headers. None when the file is anything else, or anything is
    amiss (read_product then reads it, or says in one line what is wrong)."""
    import warnings

    from astropy.io import fits

    from .products import Product, _clean_header

    if path == "-" or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":        # gzip: read_product inflates it
                return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                found = {}
                for hdu in hdul[1:]:
                    name = hdu.name.upper()
                    if name in ("SCI", "DQ") and name not in found:
                        found[name] = hdu
                        if len(found) == 2:
                            break
                sci_hdu, dq_hdu = found.get("SCI"), found.get("DQ")
                if not isinstance(sci_hdu, fits.ImageHDU) or \
                        not isinstance(dq_hdu, fits.ImageHDU):
                    return None
                sci, dq = sci_hdu.data, dq_hdu.data
                if sci is None or dq is None or sci.dtype.kind != "f" \
                        or dq.dtype.kind not in "iu" or sci.ndim not in (2, 3) \
                        or dq.shape != sci.shape or sci.size == 0:
                    return None
                sci = _native(sci, np.float64 if sci.dtype.itemsize > 4 else np.float32)
                dq = dq.astype(np.uint32, copy=False)
                primary = _clean_header(hdul[0].header)
                sci_header = _clean_header(sci_hdu.header)
        if any(k in str(w.message).lower() for w in caught
               for k in ("truncat", "unexpected end")):
            return None
    except Exception:  # noqa: BLE001 - astropy raises assorted errors on garbage
        return None
    if sci.ndim == 2:
        sci, dq = sci[None], dq[None]
    return Product(sci=sci, dq=dq, primary=primary, sci_header=sci_header, path=path)


def _native(data, dtype):
    """`data` as `dtype` in this machine's byte order: FITS's big-endian floats (read
    into a buffer of their own, the file closed after) swapped in place when they may
    be (no second copy of the frames), else converted."""
    if data.dtype == np.dtype(dtype).newbyteorder(">") and data.flags.writeable \
            and data.flags.c_contiguous and np.little_endian:
        return data.byteswap(inplace=True).view(dtype)
    return data.astype(dtype)


def _frames(path, bad_bits):
    """The exposure (SCI, DQ and the headers; ERR and the tables are not read) and
    its SCI frames (nint, ny, nx), float32 (float64 when so stored), the pixels
    flagged with `bad_bits` in DQ NaN: the exposure's SCI itself (no copy).

    Raises
    ------
    InputError
        What :func:`coron_cli.products.read_product` says of a file that
        is not a plain FITS file with SCI and DQ image extensions.
    """
    from .products import read_product

    exp = _sci_dq(path)
    if exp is None:
        exp = read_product(path, what="reference exposure")
    sci = exp.sci
    if exp.dq is not None and bad_bits:
        sci[(exp.dq & np.uint32(bad_bits)) != 0] = np.nan
    return exp, sci


def _library_block(path, nint, star, target, shared, bad_bits):
    """The scores (nint, n_science) of the frames of one library file (a worker's task):
    each frame cleaned of the outliers KLIP's preparation finds (cosmic rays of one
    or several pixels: :func:`coron_cli.core.select.blank_outliers`), moved to
    `target`, normalised in the region, against the science; then, with two
    integrations or more, corrected for the frame's own noise (its variance across
    the integrations: :func:`coron_cli.core.select.disattenuate`), so that a faint
    reference is not ranked below a bright one for its photon noise alone.

    `shared` is (region, science vectors (n_science, npix)), sent to every
    worker once.
    """
    from .core.select import blank_outliers, disattenuate, region_scores
    from .products import psf_fwhm_pix

    region, science = shared
    try:
        exp, sci = _frames(path, bad_bits)
    except CoronError as exc:
        raise _FileError(exc.source or path, exc.message) from None
    if sci.shape[0] != nint or sci.shape[-2:] != region.shape:
        raise _FileError(path, f"SCI shape {sci.shape} differs from what its header says")
    # unflagged cosmic rays would decide the frame's score: blanked (NaN counts as the
    # mean), found as KLIP's preparation finds them (the exposure's diffraction limit)
    blank_outliers(sci, psf_fwhm_pix(exp.primary, exp.sci_header))
    scores, fraction = region_scores(sci, star, target, region, science, noise=True)
    return disattenuate(scores, fraction)


def science_means(infos, target, bad_bits=1):
    """Each science exposure's mean frame (over integrations, NaN pixels left out) and
    the 1-sigma noise of that mean (from ERR), both moved to `target`: two arrays
    (n_science, ny, nx).

    The exposure is prepared as for KLIP first (:func:`coron_cli.steps.prepare_science`:
    flagged pixels and unflagged outliers, such as cosmic rays, repaired; never a
    source): one bright pixel would otherwise hold most of the vector's variance and
    decide every score.
    """
    from .core.select import shift_to
    from .products import read_product
    from .steps import prepare_science

    means, sigmas = [], []
    for info in infos:
        exp = read_product(info["path"], what="science exposure")
        sci, err, _, nout = prepare_science(exp, bad_bits=bad_bits)
        if nout:
            log.info("%s: %d outlier pixel(s) repaired before scoring", info["path"], nout)
        moved = shift_to(sci, info["star"], target)
        var = shift_to(np.asarray(err, np.float64) ** 2, info["star"], target)
        good = np.isfinite(moved) & np.isfinite(var)
        n = good.sum(axis=0)
        means.append(np.divide(np.where(good, moved, 0.0).sum(axis=0), n,
                               out=np.full(n.shape, np.nan), where=n > 0))
        sigmas.append(np.sqrt(np.divide(np.where(good, var, 0.0).sum(axis=0), n * n,
                                        out=np.full(n.shape, np.nan), where=n > 0)))
    return np.array(means), np.array(sigmas)


def science_vectors(infos, target, region, bad_bits=1):
    """(n_science, npix): each science exposure's mean frame (:func:`science_means`)
    normalised in `region`."""
    from .core.select import normalise

    means, _ = science_means(infos, target, bad_bits)
    return np.array([normalise(m, region)[0] for m in means])


def score_library(client, infos, science, target, region, bad_bits=1):
    """Scores (n_frames, n_science) of the frames of `infos` (library files, in order;
    their integrations in order) against the `science` vectors.

    One dask task a file: a worker reads it (SCI and DQ), moves and normalises
    its frames and returns their scores (:func:`_library_block`), so that a
    worker's memory is bounded by one file and only the scores travel; the
    region and the science vectors go to every worker once. A task depends
    only on its file, never on the number of workers, so neither do the
    scores.
    """
    import uuid

    if not infos:
        return np.zeros((0, len(science)))
    shared = client.scatter([(np.asarray(region, bool), np.asarray(science, np.float64))],
                            broadcast=True, hash=False)[0]
    run = uuid.uuid4().hex[:8]   # task names of their own on a shared scheduler
    tasks = [client.submit(_library_block, os.path.abspath(info["path"]), info["nint"],
                           info["star"], target, shared, bad_bits, pure=False,
                           key=f"coron-select-{run}-{k}-{os.path.basename(info['path'])}")
             for k, info in enumerate(infos)]
    try:
        blocks = client.gather(tasks)
    except _FileError as exc:
        path, message = exc.args if len(exc.args) == 2 else (None, str(exc))
        raise InputError(path, message) from None
    finally:
        client.cancel(tasks)
    return np.concatenate(blocks, axis=0)


def select_frames(scores, frames, top=None, threshold=None):
    """Rank and pick: for each science column of `scores`, the frames best first and
    those selected: the best `top`, or those scoring `threshold` or more, or, with
    both, the best `top` among those.

    Parameters
    ----------
    scores : ndarray (n_frames, n_science)
    frames : list of (file, integration)
    top : int or None
    threshold : float or None
        At least one of `top` and `threshold` must be given.

    Returns
    -------
    rank : ndarray (n_frames, n_science) of int
        1 = best, per science exposure.
    selected : ndarray (n_frames, n_science) of bool
    files : list of str
        The files holding a selected frame, best first (by their best rank over
        the science exposures, then their best score, then their name).
    integrations : dict of str to list of int
        For each of `files`, its integrations selected for any science
        exposure, increasing.
    """
    from .core.select import rank_frames

    if top is None and threshold is None:
        raise ValueError("select_frames: give top, threshold or both")
    names = [f for f, _ in frames]
    ints = [i for _, i in frames]
    order = rank_frames(scores, names, ints)
    rank = np.zeros(scores.shape, np.int64)
    for j, idx in enumerate(order):
        rank[idx, j] = np.arange(1, len(idx) + 1)
    selected = np.ones(scores.shape, bool)
    if threshold is not None:
        with np.errstate(invalid="ignore"):
            selected &= np.asarray(scores, np.float64) >= float(threshold)
    if top is not None:
        # the best `top` of those the threshold keeps: their rank among them
        kept_rank = np.zeros(scores.shape, np.int64)
        for j, idx in enumerate(order):
            keep = selected[idx, j]
            kept_rank[idx[keep], j] = np.arange(1, int(keep.sum()) + 1)
        selected &= (kept_rank >= 1) & (kept_rank <= top)
    best, chosen = {}, {}
    for k, (name, integration) in enumerate(frames):
        for j in range(scores.shape[1]):
            if selected[k, j]:
                key = (int(rank[k, j]), -float(scores[k, j]), name)
                best[name] = min(best.get(name, key), key)
                chosen.setdefault(name, set()).add(int(integration))
    files = sorted(best, key=lambda f: best[f])
    return rank, selected, files, {f: sorted(chosen[f]) for f in files}


# --------------------------------------------------------------------------- the outputs

def output_root(path):
    """'out/jw1_select_asn.json' -> 'out/jw1_select' (what the score table is named after)."""
    folder, name = os.path.split(path)
    for ext in ("_asn.json", ".json"):
        if name.endswith(ext) and len(name) > len(ext):
            name = name[: -len(ext)]
            break
    return os.path.join(folder, name)


def _member(path, folder):
    full = os.path.abspath(path)
    try:
        return os.path.relpath(full, folder)
    except ValueError:  # another drive (Windows)
        return full


def write_selection(output, science, files, table, asn_id=None, integrations=None):
    """Write the association `output` (science members, then the selected files as psf
    members, best first; relative to its folder; each psf member with its selected
    ``"integrations"`` when `integrations` (file -> list) names them) and
    ``<root>_refscores.fits`` (table REFSCORES) and ``.ecsv``. Returns the paths
    written."""
    from astropy.io import fits

    from .asn import INTEGRATIONS_KEY
    from .products import atomic_output, write_ecsv

    root = output_root(output)
    name = os.path.basename(root) or "select"
    folder = os.path.dirname(os.path.abspath(output))
    psf = []
    for p in files:
        member = {"expname": _member(p, folder), "exptype": "psf"}
        if integrations and integrations.get(p) is not None:
            member[INTEGRATIONS_KEY] = [int(i) for i in integrations[p]]
        psf.append(member)
    asn = {"asn_type": "coron3", "asn_id": asn_id or name, "asn_pool": "coron-select",
           "products": [{"name": name, "members":
                         [{"expname": _member(p, folder), "exptype": "science"} for p in science]
                         + psf}]}
    with atomic_output(output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(asn, fh, indent=2)
        fh.write("\n")
    fits_path, ecsv_path = root + "_refscores.fits", root + "_refscores.ecsv"
    hdu = fits.table_to_hdu(table)
    hdu.name = "REFSCORES"
    with atomic_output(fits_path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
    write_ecsv(table, ecsv_path)
    return [output, fits_path, ecsv_path]


# --------------------------------------------------------------------------- the whole

def _check_infos(infos):
    for info in infos:
        if info["error"]:
            raise InputError(info["path"], info["error"])


def run_select(science, library, output, *, top=20, threshold=None, inner=8.0, outer=None,
               bad_bits=1, workers=None, scheduler=None, asn_id=None, debug=False):
    """Select the best `top` frames of `library` (files) for every `science` exposure
    (or those scoring `threshold` or more, or the best `top` of those; `top` None: no
    limit on the number), on a local cluster of `workers` processes or the
    `scheduler`, and write them: the association names the files holding them and,
    as each psf member's ``"integrations"``, the frames of it selected for any
    science exposure.

    Returns
    -------
    dict
        ``files`` (psf members, best first), ``integrations`` (file -> its
        selected integrations), ``selected`` (frames), ``table`` (the
        scores), ``outputs`` (paths written), ``candidates``, ``excluded``
        (frames), ``excluded_files``, ``workers``.

    Raises
    ------
    InputError
        ... and ``--threshold`` when no frame scores that much (nothing written).
    """
    from astropy.table import Table

    from .batch import _local_cluster, _remote_client
    from .core.select import largest_radius, normalise, region_mask, source_mask

    require_dask()
    sci_infos = [file_info(p) for p in science]
    _check_infos(sci_infos)
    first = sci_infos[0]
    for info in sci_infos[1:]:
        why = same_setup(first, info)
        if why:
            raise InputError(info["path"], f"has {why}: every science exposure must have "
                                           f"the set-up of {first['path']}")
    target = first["star"]
    if outer is None:
        outer = largest_radius(first["shape"], target)
    region = region_mask(first["shape"], target, inner, outer)
    if region.sum() < 2:
        raise InputError("--inner", f"no pixel between radii {inner:g} and {outer:g} about "
                                    f"the star at ({target[0]:.1f}, {target[1]:.1f})")
    means, sigmas = science_means(sci_infos, target, bad_bits)
    # the science's own sources (companions, disks) would hold much of its vector's
    # variance and decide the scores: left out where the exposures (other rolls) differ
    sources = source_mask(means, sigmas) & region
    if sources.any() and region.sum() - sources.sum() >= 2:
        log.info("%d pixel(s) of the region left out of the scores: a source in the "
                 "science (the exposures differ there)", int(sources.sum()))
        region = region & ~sources
    else:
        sources[:] = False
    sci_vecs = np.array([normalise(m, region)[0] for m in means])

    itself = {os.path.realpath(p) for p in science}
    n_given = len(library)
    library = [p for p in library if os.path.realpath(p) not in itself]
    if n_given > len(library):
        log.info("%d science exposure(s) of the library left out: never their own reference",
                 n_given - len(library))
    if not library:
        raise InputError("--library", "holds no file but the science exposures")
    cm = (_remote_client(scheduler, debug=debug) if scheduler is not None
          else _local_cluster(max(1, workers or 1), debug=debug))
    with cm as client:
        n_workers = len(client.scheduler_info().get("workers", {}))
        abs_paths = [os.path.abspath(p) for p in library]
        infos = client.gather(client.map(file_info, abs_paths, pure=False))
        for info, path in zip(infos, library):
            info["path"] = path
        _check_infos(infos)
        candidates, excluded_files, excluded = [], [], 0
        for info in infos:
            why = same_setup(first, info)
            if why:
                excluded_files.append((info["path"], why))
                excluded += info["nint"]
                log.info("%s: not a candidate: %s", info["path"], why)
            else:
                candidates.append(info)
        if not candidates:
            raise InputError("--library", f"no frame has the set-up of {first['path']} "
                                          f"({len(infos)} file(s) left out)")
        if excluded_files:
            log.warning("%d frame(s) of %d file(s) left out: another set-up or frame size "
                        "(-v names them)", excluded, len(excluded_files))
        log.info("%d candidate frame(s) in %d file(s) on %d worker(s)",
                 sum(i["nint"] for i in candidates), len(candidates), n_workers)
        scores = score_library(client, candidates, sci_vecs, target, region, bad_bits)

    frames = [(i["path"], k) for i in candidates for k in range(i["nint"])]
    rank, selected, files, integrations = select_frames(scores, frames, top, threshold)
    if not files:  # only a threshold can select nothing
        best = np.nanmax(scores) if np.isfinite(scores).any() else float("nan")
        raise InputError("--threshold", f"no frame scores {threshold:g} or more (the best "
                                        f"scores {best:.4f})")
    for j, sci in enumerate(science):
        if threshold is not None and not selected[:, j].any():
            log.warning("%s: no frame scores %g or more (the association's references are "
                        "those of the other science exposures)", sci, threshold)
    rows = []
    for j, sci in enumerate(science):
        order = np.argsort(rank[:, j], kind="stable")
        for k in order:
            rows.append((frames[k][0], frames[k][1], sci, float(scores[k, j]),
                         int(rank[k, j]), bool(selected[k, j])))
    table = Table(rows=rows, names=("file", "integration", "science", "score", "rank",
                                            "selected"),
                  dtype=(str, np.int32, str, np.float64, np.int32, bool))
    n_sel = int(selected.any(axis=1).sum())
    if top is not None:
        table.meta["TOPN"] = int(top)
    if threshold is not None:
        table.meta["THRESH"] = float(threshold)
    table.meta.update({"INNER": float(inner), "OUTER": float(outer),
                       "NSOURCE": int(sources.sum()),
                       "NCANDID": len(frames), "NEXCLUDE": int(excluded),
                       "NEXCLFIL": len(excluded_files), "NSELFIL": len(files),
                       "NSELECT": n_sel})
    outputs = write_selection(output, science, files, table, asn_id=asn_id,
                              integrations=integrations)
    in_files = sum(i["nint"] for i in candidates if i["path"] in set(files))
    log.info("%d frame(s) selected in %d file(s) (which hold %d): %s", n_sel, len(files),
             in_files, output)
    return {"files": files, "integrations": integrations, "selected": n_sel, "table": table,
            "outputs": outputs, "candidates": len(frames), "excluded": excluded,
            "excluded_files": len(excluded_files), "workers": n_workers}
