"""coron-hlsp: SNR image, contrast table, detections and figures of a KLIP-subtracted product."""

import click

from . import options
from .common import check_output, resolve_star_flux, run, setup_logging, timed


@click.command(name="coron-hlsp", cls=options.Command, no_args_is_help=True)
@click.argument("image", metavar="IMAGE")
@options.output("SNR image (default: IMAGE's name with its suffix replaced by _snr, in the "
                "current folder).")
@click.option("--contrast-output", default=None, metavar="PATH",
              help="Contrast table (default: IMAGE's name with its suffix replaced by "
                   "_contrast, in the current folder).")
@options.noise_width
@options.star_flux
@options.fwhm
@options.psfmask
@options.snr_method
@options.detect
@options.table_format
@options.plot
@options.common
def cli(image, output, contrast_output, noise_width, star_flux, psf_offaxis, star_flux_method,
        fwhm, psfmask, snr_method, detect, inner_radius, table_format, plot, verbose, quiet,
        debug):
    """Make the SNR image and the contrast table of a KLIP-subtracted image.

    IMAGE is a psfsub cube (averaged over integrations first) or a combined
    i2d image. The SNR image is SCI/ERR (NaN where ERR is not positive), or
    with --snr-method mawet the aperture t-test of Mawet et al. (2014) at
    every pixel. The contrast table (extension CRN_CONTRAST; CONTRAST holds
    its radius and sigma as JWST's ContrastModel has them) gives, in annuli
    of whole pixels about the star, the radius (pixels; arcsec when the WCS
    gives the scale), the number of pixels and the 1-sigma noise; with the
    star's flux it adds the 5-sigma contrast with the small-sample
    correction of Mawet et al. (2014), and when IMAGE carries a THROUGHPUT
    table (coron-klip or coron3 run with --contrast) the throughput and the
    calibrated contrast. The coronagraph's transmission (the TRANSMIS
    extension coron-klip and coron3 run write when they had a map, or a
    --psfmask FILE on IMAGE's pixel grid) adds a transmission column and
    enters the calibrated contrast: near the inner working angle a curve
    that ignores it is too deep. --detect lists the point-source candidates of the
    SNR map in <root>_detections.fits and .ecsv; --plot draws the contrast
    curve and the SNR map as PNG files.

    \b
    Examples:
      coron-hlsp sci_c1001_psfsub.fits          # sci_c1001_snr.fits, sci_c1001_contrast.fits
      coron-hlsp target_i2d.fits --noise-width 3 --psf-offaxis offaxis_psf.fits
      coron-hlsp target_i2d.fits --psf-offaxis offaxis_psf.fits --snr-method mawet \\
          --detect 5 --format ecsv --plot
    """
    setup_logging("coron-hlsp", verbose, quiet)
    from ..errors import InputError
    from ..pipeline import write_hlsp_files
    from ..products import (
        exposure_root,
        read_product,
        replace_suffix,
        sibling_path,
        write_product,
    )
    from ..steps.config import DetectConfig, HlspConfig

    if plot:
        from ..plots import require_matplotlib

        require_matplotlib()
    base = image if image != "-" else "stdin.fits"
    output = output or replace_suffix(base, "_snr")
    contrast_output = contrast_output or replace_suffix(base, "_contrast")
    if contrast_output == "-" and output == "-":
        raise InputError("-o", "only one product can go to standard output")
    extra = {}
    if table_format == "ecsv":
        extra["contrast_ecsv"] = sibling_path(contrast_output, "_contrast", ".ecsv", base=base)
    if detect is not None:
        extra["detections"] = sibling_path(output, "_detections", base=base)
        extra["detections_ecsv"] = sibling_path(output, "_detections", ".ecsv", base=base)
    if plot:
        extra["contrast_png"] = sibling_path(contrast_output, "_contrast", ".png", base=base)
        extra["snr_png"] = sibling_path(output, "_snr", ".png", base=base)
    for path in [output, contrast_output, *extra.values()]:
        check_output(path, [image, psf_offaxis] + ([psfmask] if psfmask not in ("auto", "none")
                                                    else []))
    star_flux, psf = resolve_star_flux(star_flux, psf_offaxis, star_flux_method, fwhm)
    img = read_product(image, ndims=(2, 3), what="KLIP-subtracted image")
    if psfmask == "none":
        img.images.pop("TRANSMIS", None)
    elif psfmask != "auto":
        from ..products import read_psfmask, star_center
        from ..steps import transmission_image

        center, _ = star_center(img.sci_header, img.sci.shape, img.primary)
        img.images["TRANSMIS"] = transmission_image(
            read_psfmask(psfmask, img.sci.shape[-2:]), center)
    from ..steps import detect_step, hlsp_step          # imported once the inputs are read

    with timed("hlsp"):
        snr, contrast = hlsp_step(img, HlspConfig(
            noise_width=noise_width, star_flux=star_flux, star_flux_method=star_flux_method,
            fwhm=fwhm, snr_method=snr_method), params={"image": image})
    write_product(snr, output)
    write_product(contrast, contrast_output)
    det = None
    if detect is not None:
        det = detect_step(img, snr, DetectConfig(
            threshold=detect, inner_radius=inner_radius, fwhm=fwhm, star_flux=star_flux,
            star_flux_method=star_flux_method), psf=psf,
            params={"image": image, "snr_method": snr_method})
    write_hlsp_files(extra, contrast, snr, det, title=exposure_root(base))


def main():
    run(cli, "coron-hlsp")


if __name__ == "__main__":
    main()
