"""coron-combine: combine KLIP-subtracted exposures into one north-up image (i2d)."""

import logging
import os

import click

from . import options
from .common import check_output, check_stdin_once, run, setup_logging, timed


@click.command(name="coron-combine", cls=options.Command, no_args_is_help=True)
@click.argument("psfsub", nargs=-1, metavar="PSFSUB...")
@options.output("Output file (default: <root>_i2d.fits in the current folder, root being the "
                "first PSFSUB's name without its _psfsub suffix).")
@options.noise_width
@options.bad_bits
@options.common
def cli(psfsub, output, noise_width, bad_bits, verbose, quiet, debug):
    """Combine KLIP-subtracted exposures into one north-up image.

    Reads psfsub products (coron-klip's, or the JWST stage's) and writes
    the i2d product that coron3 run writes for them: each exposure's
    integrations are averaged (values flagged with --bad-bits in DQ left
    out), rotated about the star to north-up (angle from its WCS, else
    PA_APER or the roll in its header) with the star at the frame
    centre, and the exposures are averaged with inverse-variance weights.
    ERR is then recalibrated on the combined image in annuli --noise-width
    pixels wide (give the same as to coron3 run): raised where residual
    speckles remain, lowered where the rotation's interpolation has smoothed
    the noise below the propagated error. The i2d is a 2-D SCI/ERR/DQ image
    with a north-up celestial WCS, STARCENX/STARCENY and, when every psfsub
    carries one, the rotated and combined TRANSMIS map. Give the psfsubs in
    the order of the association's science members to reproduce coron3
    run's i2d exactly.

    The fake planets of coron-klip --contrast are not kept in the psfsub
    files, so the i2d gets no THROUGHPUT table (coron3 run --contrast makes
    one); the psfsubs' own THROUGHPUT tables are left out with a warning.

    \b
    Examples:
      coron-combine sci1_c1001_psfsub.fits sci2_c1001_psfsub.fits -o target_i2d.fits
      coron-combine sci*_c1001_psfsub.fits --noise-width 3 -o target_i2d.fits
      coron-combine sci1_c1001_psfsub.fits     # sci1_c1001_i2d.fits
    """
    setup_logging("coron-combine", verbose, quiet)
    from ..errors import InputError
    from ..products import exposure_root, read_product, write_product
    from ..steps.config import CombineConfig

    config = CombineConfig(noise_width=noise_width, bad_bits=bad_bits)
    if not psfsub:
        raise InputError(None, "no psfsub products given (see 'coron-combine --help')")
    check_stdin_once(psfsub)
    if output is None:
        root = "stdin" if psfsub[0] == "-" else exposure_root(psfsub[0])
        output = root + "_i2d.fits"
    check_output(output, list(psfsub))
    products, throughput = [], []
    for path in psfsub:
        product = read_product(path, ndims=(2, 3), what="psfsub product")
        _check_psfsub(product)
        if "THROUGHPUT" in product.tables:
            throughput.append(path)
        # combine_step uses SCI, ERR, the headers and TRANSMIS; the rest (KLSUB...) is freed
        product.images = {k: v for k, v in product.images.items() if k == "TRANSMIS"}
        product.tables = {}
        products.append(product)
    if throughput:
        logging.getLogger("coron").warning(
            "%s: THROUGHPUT table not combined (the fake planets are not in psfsub files); "
            "the i2d has none: coron3 run --contrast makes one", throughput[0])
    from ..steps import combine_step      # imported once the inputs are read

    with timed("combine"):
        product = combine_step(products, config,
                               params={"inputs": [os.path.basename(p) for p in psfsub]})
    write_product(product, output)


def _check_psfsub(product):
    """A KLIP-subtracted product: made by coron-klip, or by the JWST stage's klip step."""
    from ..errors import InputError

    tool = str(product.primary.get("CRN_TOOL", "") or "")
    jwst = str(product.primary.get("S_KLIP", "") or "").upper() == "COMPLETE"
    if tool != "coron-klip" and not jwst:
        made_by = f"made by {tool}" if tool else "no CRN_TOOL = coron-klip or S_KLIP = COMPLETE"
        raise InputError(product.path, f"not a psfsub product ({made_by}); give the output of "
                                       "coron-klip")


def main():
    run(cli, "coron-combine")


if __name__ == "__main__":
    main()
