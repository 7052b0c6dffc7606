"""coron-align: register the stacked references onto a science exposure."""

import click

from . import options
from .common import check_output, check_stdin_once, read_mask, run, setup_logging, timed


@click.command(name="coron-align", cls=options.Command, no_args_is_help=True)
@click.argument("science", metavar="SCIENCE")
@click.argument("psfstack", metavar="PSFSTACK")
@options.output("Output file (default: <exposure>_<asn_id>_psfalign.fits in the current "
                "folder).")
@options.mask
@options.psfmask
@options.psfmask_weights
@options.registration
@options.align_per
@options.max_shift
@options.bad_bits
@options.background_files
@options.asn_id
@options.common
def cli(science, psfstack, output, mask, psfmask, psfmask_weights, align_method, align_per,
        max_shift,
        bad_bits, background, asn_id, verbose, quiet, debug):
    """Align every reference slice onto a science exposure.

    Measures, in float64, the offset of the star in every reference slice
    relative to the science star, and the flux scale, then shifts the
    references with the Fourier shift theorem. By default the target is the
    mean of the science integrations, registered once (--align-per
    exposure): the star does not move within an exposure by more than the
    pointing jitter. With --align-per integration every integration gets
    its own registration. Every pair gets a rigid
    shift fit; behind a coronagraph that fit over-reads the star's offset
    (the image does not move rigidly), so when references of one star and
    visit were dithered (XOFFSET/YOFFSET in their headers) the fits between
    them measure by how much, and every shift is corrected (see
    --align-method). A shift more than --max-shift pixels from the headers'
    star positions is rejected, with a warning naming the exposure. Writes a
    psfalign product: SCI/ERR/DQ of shape (nrefs, ny, nx), as the JWST stage
    writes it (with --align-per integration: (nints_sci, nrefs, ny, nx)),
    and a SHIFTS table (sci_int, ref, dx, dy, scale, method, a row per
    integration and reference; dx, dy = science centre minus reference
    centre, in pixels). --background subtracts the science's background
    exposures first (give the same to coron-klip).

    \b
    Examples:
      coron-align sci_calints.fits target_psfstack.fits
      coron-align sci_calints.fits target_psfstack.fits --mask weights.fits -o sci_psfalign.fits
    """
    setup_logging("coron-align", verbose, quiet)
    from ..products import (
        exposure_product_name,
        read_product,
        transmission_for,
        write_product,
    )
    from ..steps.config import AlignConfig
    from .common import split_background, subtract_backgrounds

    config = AlignConfig(method=align_method, psfmask_weights=psfmask_weights,
                         max_shift=max_shift, per=align_per, bad_bits=bad_bits)
    _, bkg_files = split_background(background)
    check_stdin_once([science, psfstack, mask] + bkg_files)
    sci = read_product(science, what="science exposure")
    stack = read_product(psfstack, ndims=(3,), what="PSF stack")
    asn_id = asn_id or str(stack.primary.get("ASN_ID", "") or "")
    if output is None:
        output = exposure_product_name(science, "psfalign", asn_id)
    check_output(output, [science, psfstack, mask] + bkg_files)
    weights = read_mask(mask)
    tmap = transmission_for(psfmask, science, sci.sci.shape[-2:])
    sci = subtract_backgrounds([sci], background, bad_bits)[0]
    from ..steps import align_step        # imported once the inputs are read

    with timed("align"):
        product = align_step(sci, stack, config, mask=weights, transmission=tmap, asn_id=asn_id,
                             params={"science": science, "psfstack": psfstack})
    write_product(product, output)


def main():
    run(cli, "coron-align")


if __name__ == "__main__":
    main()
