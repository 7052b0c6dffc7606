"""coron-select: pick the reference frames of a library that best match science exposures."""

import logging

import click

from . import options
from .common import check_output, run, setup_logging, timed

log = logging.getLogger("coron")


@click.command(cls=options.Command, no_args_is_help=True)
@click.argument("science", nargs=-1, required=True, metavar="SCIENCE...", type=click.Path())
@click.option("-L", "--library", "library", multiple=True, required=True, metavar="PATH",
              help="Reference library: a file, a folder (its *_calints.fits), a glob (quoted) "
                   "or a list of paths (@list.txt: one path, glob or folder a line, # "
                   "comments). Repeatable.")
@click.option("-o", "--output", "output", required=True, metavar="ASN.json",
              type=click.Path(),
              help="The association to write; the scores go to <root>_refscores.fits and "
                   ".ecsv beside it (root: the name without _asn.json or .json).")
@click.option("-n", "--top", type=click.IntRange(min=1), default=None, metavar="N",
              help="Frames kept per science exposure, the best first [default: 20, or no "
                   "limit with --threshold].")
@click.option("--threshold", type=click.FloatRange(min=-1.0, max=1.0), default=None,
              metavar="S", help="Keep the frames scoring S or more (a correlation, -1 to 1); "
                                "with --top, the best N of those.")
@click.option("--inner", type=click.FloatRange(min=0), default=8.0, show_default=True,
              metavar="PIX", help="Radius of the star's core left out of the correlation.")
@click.option("--outer", type=click.FloatRange(min=0), default=None, metavar="PIX",
              help="Pixels beyond this radius are left out [default: the largest circle "
                   "about the star inside the frame].")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Address of a dask.distributed scheduler (tcp://host:8786) to compute on, "
                   "instead of starting local workers; its workers must have coron installed "
                   "and see the same files at the same paths.")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes of the local cluster (one thread each) [default: 1].")
@options.bad_bits
@options.asn_id
@options.common
def cli(science, library, output, top, threshold, inner, outer, scheduler, workers, bad_bits,
        asn_id, verbose, quiet, debug):
    """Rank the frames of a reference library against science exposures and write a
    CORON association of the best.

    Every frame (each integration of each file) of the library with the
    science's INSTRUME, CORONMSK, FILTER and SUBARRAY (those the science
    has) and frame size is scored against each science exposure (the mean
    of its integrations): both moved so that the stars (STARCENX/Y, else
    CRPIX) coincide, the score is the Pearson correlation of the two images
    between --inner and --outer pixels from the star (unflagged cosmic rays
    cleaned first: the science prepared as for KLIP, the library frames'
    outliers, found as KLIP's preparation finds them and grown along their
    tracks, left out), divided, for a file of two integrations or more, by
    sqrt(1 - f), f the share of the frame's variance there that is noise
    (the pixels' variance across the integrations): the correlation of the
    frame's noiseless image with the science, so that a faint reference is
    not ranked down for its photon noise (the score may then exceed 1 a
    little). With two science exposures or more (rolls), the pixels where
    one exceeds another by 5 sigma (its ERR), and 2 pixels about them, are
    left out of the region: the science's own sources (companions, disks),
    which turn with the roll, would otherwise hold much of its variance.
    The --top best frames
    of each science exposure are kept (or those scoring --threshold or more,
    or, with both, the best --top of those); the files holding them, best
    first, become the psf members of the association, each with the
    integrations selected (for any science exposure) as its "integrations"
    list, which 'coron3 run' follows (the JWST pipeline ignores the key and
    would use every integration). Frames of another set-up are left out and
    counted. A science exposure is never its own reference.

    The scores are computed on dask, one block per library file, on a local
    cluster of --workers processes or on --scheduler; they do not depend on
    the number of workers (ties go to the file name, then the integration).
    Writes ASN.json and <root>_refscores.fits (table REFSCORES: file,
    integration, science, score, rank, selected) and .ecsv. Exit status 0,
    or 2 with one line naming the problem (a bad file, no candidate, no
    frame above --threshold, dask not installed: pip install 'coron[dask]').

    \b
    Examples:
      coron-select jw1_calints.fits --library refs/ -o jw1_select_asn.json
      coron-select sci/*_calints.fits -L @library.txt --top 30 --workers 4 -o sel_asn.json
      coron-select jw1_calints.fits -L refs/ --threshold 0.9 -o jw1_select_asn.json
      coron3 check sel_asn.json && coron3 run sel_asn.json -d products
    """
    setup_logging("coron-select", verbose, quiet)
    from ..select import find_library, require_dask, run_select

    require_dask()
    if scheduler is not None and workers is not None:
        raise click.UsageError("give --scheduler or --workers, not both")
    if output == "-":
        raise click.UsageError("-o must name a file (the score table goes beside it)")
    paths = find_library(library)
    check_output(output, list(science) + paths)
    if top is None and threshold is None:
        top = 20
    with timed("selection"):
        result = run_select(list(science), paths, output, top=top, threshold=threshold,
                            inner=inner, outer=outer, bad_bits=bad_bits, workers=workers,
                            scheduler=scheduler, asn_id=asn_id, debug=debug)
    log.info("%d candidate frame(s), %d left out (another set-up); %d frame(s) of %d psf "
             "file(s) in %s", result["candidates"], result["excluded"], result["selected"],
             len(result["files"]), output)


def main():
    run(cli, "coron-select")


if __name__ == "__main__":
    main()
