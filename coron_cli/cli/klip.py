"""coron-klip: KLIP PSF subtraction of a science exposure."""

import logging

import click

from . import options
from .common import (
    check_output,
    check_stdin_once,
    parse_exclude,
    resolve_star_flux,
    run,
    setup_logging,
    timed,
)


@click.command(name="coron-klip", cls=options.Command, no_args_is_help=True)
@click.argument("science", metavar="SCIENCE")
@click.argument("psfalign", metavar="PSFALIGN")
@options.output("Output file (default: the PSFALIGN name with _psfalign replaced by _psfsub, "
                "in the current folder).")
@options.truncate
@options.klip_zones
@options.exclude
@options.protect
@options.fit_weights
@options.psfmask
@options.min_transmission
@options.sky_order
@options.noise_width
@options.bad_bits
@options.background_files
@options.roll_ref
@options.contrast
@options.psf_offaxis
@options.fwhm
@options.common
def cli(science, psfalign, output, truncate, zones, zone_width, zone_sectors, zone_fit,
        exclude, protect, weights, psfmask, min_transmission, sky_order, noise_width, bad_bits,
        background, roll_ref, roll_move, contrast, psf_offaxis, fwhm, verbose, quiet, debug):
    """Subtract a KLIP model of the PSF from every science integration.

    Each integration is fitted with its own layer of aligned references (a
    3-D psfalign, references aligned once as the JWST stage writes them, is
    used for every integration):
    images are made zero-mean, the Karhunen-Loeve basis of the references
    is computed once, the target is projected on the first K modes and the
    projection subtracted (Soummer, Pueyo & Larkin 2012). Writes a psfsub
    product with the science cube's shape; ERR combines the science noise,
    the noise the references carry into the model and the residual speckle
    noise measured in annuli; DQ is the science DQ. Several truncations add
    a KLSUB extension (ntrunc, nint, ny, nx); SCI holds the first.

    A bright companion inside the fitted region pulls the KL coefficients
    and loses part of its flux (and the star's halo around it is
    over-subtracted). So sources found above --protect SNR in a first pass
    are left out of the fit of a second pass, like --exclude circles; the
    psfsub header's KLPROTEC gives how many pixels were left out.

    The basis and the fit weigh every pixel by the inverse of its noise
    variance (--weights noise, from the science ERR): unweighted (--weights
    none, classic KLIP), the bright and noisy pixels next to the star set
    the coefficients for the whole image.

    The coronagraph's transmission map (--psfmask, by default the
    <exposure>_psfmask.fits beside the science) keeps pixels below
    --min-transmission out of the fit, dims the fake planets of --contrast
    where they sit, and goes into the product (TRANSMIS extension) for the
    contrast of coron-hlsp. --sky-order fits a polynomial sky with the KL
    modes, for a background gradient the references do not share.
    --background subtracts the science's background exposures first (give
    the same as to coron-align).

    --roll-ref FILE (repeatable) adds the target's other rolls as references:
    each is registered onto the science star and used where a source has
    moved by at least --roll-move lambda/D between the rolls (angular
    differential imaging with the references); the psfsub header's KLROLLS
    counts them.

    With --contrast, fake planets made from --psf-offaxis are
    KLIP-subtracted with the same references (at 6 position angles, every
    FWHM from 2 FWHM to the edge) and a THROUGHPUT table (recovered over
    injected flux against separation) is added, which coron-hlsp uses for
    the calibrated contrast. The science and its residuals are not touched.

    \b
    Examples:
      coron-klip sci_calints.fits sci_c1001_psfalign.fits --truncate 30
      coron-klip sci_calints.fits sci_c1001_psfalign.fits --truncate 5,10,30 --zones 4
      coron-klip sci_calints.fits sci_c1001_psfalign.fits --contrast --psf-offaxis psf.fits
    """
    setup_logging("coron-klip", verbose, quiet)
    from ..products import (
        exposure_product_name,
        read_product,
        transmission_for,
        write_product,
    )
    from ..steps.config import InjectConfig, KlipConfig
    from .common import split_background, subtract_backgrounds

    config = KlipConfig(truncate=truncate, zones=zones, zone_width=zone_width,
                        zone_sectors=zone_sectors, zone_fit=zone_fit,
                        exclude=parse_exclude(exclude), protect=protect, weights=weights,
                        min_transmission=min_transmission, sky_order=sky_order,
                        noise_width=noise_width, bad_bits=bad_bits, roll_move=roll_move)
    _, bkg_files = split_background(background)
    check_stdin_once([science, psfalign] + bkg_files + list(roll_ref))
    if output is None:
        output = exposure_product_name(psfalign if psfalign != "-" else science, "psfsub")
    check_output(output, [science, psfalign, psf_offaxis] + bkg_files + list(roll_ref))
    psf = None
    if contrast:
        _, psf = resolve_star_flux(None, psf_offaxis, fwhm=fwhm, need_psf=True)
    elif psf_offaxis is not None:
        logging.getLogger("coron").warning("--psf-offaxis is only used with --contrast")
    sci = read_product(science, what="science exposure")
    refs = read_product(psfalign, ndims=(3, 4), what="psfalign product")
    tmap = transmission_for(psfmask, science, sci.sci.shape[-2:])
    others = [read_product(p, what="other roll") for p in roll_ref]
    done = subtract_backgrounds([sci] + others, background, bad_bits)
    sci, others = done[0], done[1:]
    from ..steps import klip_inject_step, klip_step     # imported once the inputs are read

    rolls = None
    if others:
        from ..steps import roll_references
        from ..steps.config import AlignConfig, StackConfig

        rolls = roll_references(sci, others, StackConfig(bad_bits=bad_bits),
                                AlignConfig(bad_bits=bad_bits), transmission=tmap)
        if rolls is None:
            logging.getLogger("coron").warning(
                "--roll-ref: no exposure at another roll than %s; none used", science)
    kw = {"transmission": tmap, "params": {"science": science, "psfalign": psfalign,
                                           "roll_ref": list(roll_ref)}, "rolls": rolls}

    with timed("klip"):
        if contrast:
            product, _ = klip_inject_step(sci, refs, psf, config, InjectConfig(fwhm=fwhm), **kw)
        else:
            product = klip_step(sci, refs, config, **kw)
    write_product(product, output)


def main():
    run(cli, "coron-klip")


if __name__ == "__main__":
    main()
