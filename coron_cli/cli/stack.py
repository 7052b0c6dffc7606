"""coron-stack: concatenate reference exposures into a PSF stack."""

import os

import click

from . import options
from .common import check_output, check_stdin_once, run, setup_logging, timed


@click.command(name="coron-stack", cls=options.Command, no_args_is_help=True)
@click.argument("psf", nargs=-1, metavar="PSF...")
@click.option("--asn", "asn_path", default=None, metavar="FILE",
              help="Take the psf members of this association instead of PSF arguments (only "
                   "the integrations a member lists under \"integrations\", when it does); "
                   "writes <product>_psfstack.fits for each of its products.")
@options.output("Output file (default: <root>_psfstack.fits in the current folder, root being "
                "the ASN product name or the first PSF's name).")
@options.asn_id
@options.bad_bits
@options.background_files
@options.common
def cli(psf, asn_path, output, asn_id, bad_bits, background, verbose, quiet, debug):
    """Stack the integrations of reference (PSF) exposures into one cube.

    Reads JWST-style exposures (SCI/ERR/DQ, e.g. *_calints.fits) and writes
    a psfstack product whose SCI is (nrefs_total, ny, nx), in the order
    given, with ERR and DQ alongside and a REFS table naming the source file
    and integration of every slice. Outliers (cosmic rays) found within an
    exposure are flagged in DQ. --background subtracts the references'
    background exposures from every reference first (with --asn, its
    background members that go with the references, unless files are
    given).

    \b
    Examples:
      coron-stack ref1_calints.fits ref2_calints.fits -o target_psfstack.fits
      coron-stack --asn jw1234_coron_asn.json
      coron-stack ref*_calints.fits -o - | coron-align sci_calints.fits - -o sci_psfalign.fits
    """
    setup_logging("coron-stack", verbose, quiet)
    from ..asn import read_asn
    from ..errors import InputError
    from ..products import exposure_root, read_product, write_product
    from ..steps.config import BackgroundConfig, StackConfig
    from .common import split_background, subtract_backgrounds

    config = StackConfig(bad_bits=bad_bits)
    if asn_path and psf:
        raise InputError(asn_path, "give either --asn or PSF files, not both")
    if asn_path:
        asn = read_asn(asn_path)
        jobs = [(p.name + "_psfstack.fits", p.psf, asn_id or asn.asn_id, p)
                for p in asn.products]
        if output and len(jobs) > 1:
            raise InputError(asn_path, "has several products; -o can name only one")
        if output:
            jobs = [(output, jobs[0][1], jobs[0][2], jobs[0][3])]
    else:
        if not psf:
            raise InputError(None, "no PSF exposures given (see 'coron-stack --help')")
        check_stdin_once(psf)
        root = "stdin" if psf[0] == "-" else exposure_root(psf[0])
        jobs = [(output or root + "_psfstack.fits", list(psf), asn_id, None)]
    mode, files = split_background(background)
    for out, members, job_id, prod in jobs:
        check_output(out, members)
        with timed("stack"):
            exposures = [read_product(p, what="reference exposure") for p in members]
            from ..steps import match_backgrounds, stack_step, take_integrations

            ints = [None] * len(members)
            if prod is not None:   # the integrations the association names, if it does
                from ..asn import check_integrations

                ints = [check_integrations(asn, prod, p, e.sci.shape[0])
                        for p, e in zip(members, exposures)]
                exposures = [take_integrations(e, i) for e, i in zip(exposures, ints)]

            if files:
                exposures = subtract_backgrounds(exposures, background, bad_bits)
            elif prod is not None and prod.background:
                from ..steps import background_step

                bkgs = [read_product(p, what="background exposure") for p in prod.background]
                heads = [read_product(p, what="science exposure") for p in prod.science]
                _, for_refs, _ = match_backgrounds(bkgs, heads, exposures)
                bconf = BackgroundConfig(mode=mode, bad_bits=bad_bits)
                exposures = [background_step(e, for_refs, bconf)[0] for e in exposures]
            product = stack_step(exposures, config, asn_id=job_id,
                                 params={"inputs": [os.path.basename(m) for m in members]},
                                 integrations=ints)
            write_product(product, out)


def main():
    run(cli, "coron-stack")


if __name__ == "__main__":
    main()
