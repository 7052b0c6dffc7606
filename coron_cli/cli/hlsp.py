"""coron-hlsp: signal-to-noise image and contrast table of a KLIP-subtracted product."""

import click

from . import options
from .common import check_output, run, setup_logging, timed


@click.command(name="coron-hlsp", no_args_is_help=True)
@click.argument("image", metavar="IMAGE")
@options.output("SNR image (default: IMAGE's name with its suffix replaced by _snr, in the "
                "current folder).")
@click.option("--contrast-output", default=None, metavar="PATH",
              help="Contrast table (default: IMAGE's name with its suffix replaced by "
                   "_contrast, in the current folder).")
@options.annuli_width
@options.star_flux
@click.option("--fwhm", type=click.FloatRange(min=0.5), default=None, metavar="PIX",
              help="Resolution element in pixels for the small-sample correction "
                   "[default: 2].")
@options.common
def cli(image, output, contrast_output, annuli_width, star_flux, psf_offaxis, fwhm, verbose,
        quiet, debug):
    """Make the SNR image and the contrast table of a KLIP-subtracted image.

    IMAGE is a psfsub cube (averaged over integrations first) or a combined
    i2d image. The SNR image is SCI/ERR (NaN where ERR is not positive). The
    contrast table (extension CONTRAST) gives, in annuli of whole pixels
    about the star, the radius (pixels; arcsec when the WCS gives the scale),
    the number of pixels and the 1-sigma noise; with the star's flux it
    adds the 5-sigma contrast with the small-sample correction of Mawet et
    al. (2014).

    \b
    Examples:
      coron-hlsp sci_c1001_psfsub.fits          # sci_c1001_snr.fits, sci_c1001_contrast.fits
      coron-hlsp target_i2d.fits --annuli-width 3 --psf-offaxis offaxis_psf.fits
    """
    setup_logging("coron-hlsp", verbose, quiet)
    from ..errors import InputError
    from ..products import read_product, replace_suffix, write_product
    from ..steps import hlsp_step, offaxis_peak

    base = image if image != "-" else "stdin.fits"
    output = output or replace_suffix(base, "_snr")
    contrast_output = contrast_output or replace_suffix(base, "_contrast")
    if contrast_output == "-" and output == "-":
        raise InputError("-o", "only one product can go to standard output")
    check_output(output, [image, psf_offaxis])
    check_output(contrast_output, [image, psf_offaxis])
    if star_flux is not None and psf_offaxis is not None:
        raise InputError("--star-flux", "give either --star-flux or --psf-offaxis, not both")
    if star_flux is not None and not star_flux > 0:
        raise InputError("--star-flux", "must be a positive number")
    if psf_offaxis is not None:
        star_flux = offaxis_peak(read_product(psf_offaxis, what="off-axis PSF image"))
    img = read_product(image, ndims=(2, 3), what="KLIP-subtracted image")
    with timed("hlsp"):
        snr, contrast = hlsp_step(img, annuli_width=annuli_width, star_flux=star_flux,
                                  fwhm=fwhm, params={"image": image})
    write_product(snr, output)
    write_product(contrast, contrast_output)


def main():
    run(cli, "coron-hlsp")


if __name__ == "__main__":
    main()
