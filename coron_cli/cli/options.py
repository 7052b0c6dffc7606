"""Options shared by the coron commands, each defined once: the option vocabulary.

One concept, one name, one default, in every tool that has it:

========================  ===================================================  =============
flag                      meaning                                              tools
========================  ===================================================  =============
-o/--output               the product written ('-' = stdout)                   single tools
-d/--outdir               folder of the products (created when missing)        coron3
--asn FILE / ASN          the association: an option of coron-stack, the       stack, coron3
                          argument of coron3 (its subject)
--asn-id ID               association id for output names and ASN_ID           stack, align
--bad-bits                DQ bits meaning "do not use"                         all that read
                                                                               exposures
--background              background exposures (files, in the single tools)    stack, align,
                          and what to do with them (auto/subtract/off)         klip, coron3
--align-method            registration method (auto, dither, fourier)          align, coron3
--align-per               registered on each integration or once per exposure  align, coron3
--mask, --max-shift       registration weights; bound on the shifts            align, coron3
--psfmask                 the coronagraph's transmission map                   align, klip,
                                                                               hlsp, coron3
--psfmask-weights         registration weighted by it                          align, coron3
-k/--truncate             KL modes kept                                        klip, coron3
--zones, --zone-width,    KLIP zones: N equal annuli, or annuli W wide beyond  klip, coron3
--zone-sectors,           R; sectors per annulus; where each is fitted
--zone-fit
--exclude, --protect      regions and sources left out of the KL fit           klip, coron3
--weights                 pixel weights of the KL fit                          klip, coron3
--min-transmission        pixels below it left out of the KL fit               klip, coron3
--sky-order               polynomial sky fitted with the KL modes              klip, coron3
--roll-refs, --roll-ref,  the target's other rolls as references where a       coron3, klip
--roll-move               source has moved far enough between the rolls
--noise-width             width of the annuli of noise profiles and ERR        klip, combine,
                          calibration (whole pixels)                           hlsp, coron3
--contrast,               fake-planet throughput; the unocculted PSF           klip, coron3,
--psf-offaxis                                                                  hlsp
--fwhm                    resolution element in pixels                         klip, hlsp,
                                                                               coron3
--star-flux,              the star's flux and how it and the noise are         hlsp, coron3
--star-flux-method        measured
--snr-method              how the SNR map is made                              hlsp, coron3
--detect, --inner-radius  candidate detection                                  hlsp, coron3
--format, --plot          extra outputs (ECSV tables, PNG figures)             hlsp, coron3
========================  ===================================================  =============

Old spellings (:data:`RENAMED`) keep working for one release, with a
deprecation warning. A step's configuration field maps to its flag through
:func:`flag_for`. Defaults are those of the step configurations
(:mod:`coron_cli.steps.config`, which reads the panel-chosen ones from
:mod:`coron_cli.defaults`).
"""

import click

from .. import __version__
from ..steps.config import (
    AlignConfig,
    BackgroundConfig,
    HlspConfig,
    KlipConfig,
    PipelineConfig,
    StackConfig,
)

#: old spelling -> new, accepted for one release with a warning
RENAMED = {
    "--method": "--align-method",
    "--annuli": "--zones",
    "--subsections": "--zone-sectors",
    "--annuli-width": "--noise-width",
}

#: configuration field -> flag, where the flag is not the field's name with dashes
FLAGS = {
    "method": "--align-method",
    "mode": "--background",
    "inject": "--contrast",
    "threshold": "--detect",
    "table_format": "--format",
}


def flag_for(field_name):
    """The command-line flag of a step configuration field (``noise_width`` ->
    ``--noise-width``)."""
    return FLAGS.get(field_name, "--" + str(field_name).replace("_", "-"))


def _renamed(prog, args):
    """`args` with the old spellings of :data:`RENAMED` replaced, warning once for each."""
    out, seen = [], set()
    quiet = "-q" in args or "--quiet" in args
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if name in RENAMED:
            if name not in seen and not quiet:
                click.echo(f"{prog}: warning: {name} is deprecated; use {RENAMED[name]} (the old "
                           "name will be removed in the next release)", err=True)
            seen.add(name)
            arg = RENAMED[name] + eq + value
        out.append(arg)
    return out


class Command(click.Command):
    """A click command that accepts the old option spellings (:data:`RENAMED`)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _renamed(ctx.command_path, args))


class Group(click.Group):
    """A click group whose commands accept the old option spellings."""

    command_class = Command

__all__ = ["common", "output", "bad_bits", "truncate", "klip_zones", "exclude", "protect",
           "fit_weights", "noise_width", "max_shift", "asn_id", "Command", "Group", "RENAMED",
           "FLAGS", "flag_for", "star_flux", "psf_offaxis", "fwhm", "contrast", "snr_method",
           "detect", "plot", "table_format", "mask", "registration", "align_per", "outdir", "psfmask",
           "psfmask_weights", "min_transmission", "sky_order", "background_files",
           "background_mode", "BACKGROUND_MODES", "roll_refs", "roll_ref", "roll_move"]


def _compose(*decorators):
    def apply(func):
        for dec in reversed(decorators):
            func = dec(func)
        return func
    return apply


#: -v/-q/--debug/--version, on every command.
common = _compose(
    click.option("-v", "--verbose", count=True,
                 help="More messages on stderr: -v adds steps and timings, -vv debugging."),
    click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr."),
    click.option("--debug", is_flag=True,
                 help="Show the full traceback of an error (for bug reports)."),
    click.version_option(__version__, "--version", message="%(prog)s (coron) %(version)s"),
)


def output(help_text):
    """-o/--output PATH, '-' for standard output."""
    return click.option("-o", "--output", "output", metavar="PATH", default=None,
                        help=help_text + " '-' writes FITS to standard output.")


bad_bits = click.option(
    "--bad-bits", default=StackConfig.bad_bits,
    show_default=True, type=click.IntRange(min=0), metavar="INT",
    help="DQ bits that mark a pixel as unusable (1 = DO_NOT_USE); such pixels are repaired "
         "from good neighbours and stay flagged.")

truncate = click.option(
    "-k", "--truncate", default=",".join(map(str, KlipConfig.truncate)),
    show_default=True, metavar="K[,K...]",
    help="KL modes kept; a comma list (e.g. 5,10,30) gives several truncations from one "
         "decomposition. Clamped, with a warning, to the number of references.")

klip_zones = _compose(
    click.option("--zones", default=KlipConfig.zones, show_default=True, type=click.IntRange(min=1),
                 metavar="N", help="Solve KLIP separately in N concentric annuli of equal "
                                   "width; N > 1 replaces --zone-width."),
    click.option("--zone-width", default=KlipConfig.zone_width, show_default=True,
                 metavar="W[@R]",
                 help="Solve KLIP separately in annuli W wide beyond radius R (pixels, or "
                      "lambda/D with a 'lod' suffix, lambda/D from FILTER and the pixel "
                      "scale); inside R the coefficients are fitted on the whole frame, as "
                      "without zones (near the star a narrow zone over-fits). none = one "
                      "zone."),
    click.option("--zone-sectors", default=KlipConfig.zone_sectors, show_default=True,
                 type=click.IntRange(min=1), metavar="M",
                 help="Split every annulus into M angular sectors."),
    click.option("--zone-fit", default=KlipConfig.zone_fit, show_default=True,
                 type=click.Choice(["self", "around"]),
                 help="Where each annulus's KL coefficients are fitted: on its own pixels, "
                      "or around it (the annuli within two zone widths, not itself, as "
                      "LOCI does), so that it cannot fit its own sources away."),
)

exclude = click.option(
    "--exclude", multiple=True, metavar="X,Y,R",
    help="Leave the circle of radius R (pixels) about (X, Y) (0-based, detector pixels) out "
         "of the KL fit, e.g. a known companion; it is still subtracted. Repeatable.")

protect = click.option(
    "--protect", default=KlipConfig.protect,
    show_default=True, type=click.FloatRange(min=0), metavar="SNR",
    help="Sources found above SNR in a first KLIP pass (an exposure's mean over "
         "integrations) are left out of the KL fit of a second pass, so that a companion "
         "does not bias the fit and lose flux; 0 turns this off.")

fit_weights = click.option(
    "--weights", "weights", default=KlipConfig.weights, show_default=True,
    type=click.Choice(["noise", "none"]),
    help="Pixel weights of the KL basis and fit: none = classic, unweighted KLIP; noise = "
         "inverse noise variance (the science ERR), so the bright, noisy pixels next to the "
         "star do not set the fit alone (it raised the residual on real NIRCam data).")

noise_width = click.option(
    "--noise-width", default=KlipConfig.noise_width,
    show_default=True, type=click.IntRange(min=1), metavar="W",
    help="Width in whole pixels of the annuli for noise profiles and error calibration.")

max_shift = click.option(
    "--max-shift", default=AlignConfig.max_shift, show_default=True,
    type=click.FloatRange(min=0), metavar="PIX",
    help="A registration shift farther than PIX from where the headers' star positions "
         "(dither offsets included) put the star is rejected and replaced by that "
         "prediction, with a warning naming the exposure.")

asn_id = click.option(
    "--asn-id", default=None, metavar="ID",
    help="Association id, for the default output names and the ASN_ID keyword (default: "
         "the association's, or the input's ASN_ID).")

psf_offaxis = click.option(
    "--psf-offaxis", default=None, metavar="FILE",
    help="Unocculted (off-axis) PSF image of the star, in the image's units: its peak or "
         "aperture flux (--star-flux-method) is the star flux, --contrast injects it as fake "
         "planets, and --detect uses its rings to tell a bright source's sidelobes from "
         "other sources.")

star_flux = _compose(
    click.option("--star-flux", type=float, default=None, metavar="FLUX",
                 help="The star's unocculted flux, in the image's units (its peak, or its "
                      "aperture sum with --star-flux-method aperture); adds the 5-sigma "
                      "contrast to the contrast table."),
    psf_offaxis,
    click.option("--star-flux-method", type=click.Choice(["peak", "aperture"]),
                 default=HlspConfig.star_flux_method,
                 show_default=True,
                 help="How the star flux and the noise are measured: the peak pixel against "
                      "the per-pixel noise, or the sum in a disk of diameter --fwhm against "
                      "the spread of such sums in the annulus."),
)

fwhm = click.option(
    "--fwhm", type=click.FloatRange(min=0.5), default=None, metavar="PIX",
    help="Resolution element (about lambda/D) in pixels: the small-sample correction, the "
         "apertures, the detection and the fake-source grid use it [default: 2].")

contrast = click.option(
    "--contrast", is_flag=True,
    help="Measure the algorithmic throughput: fake planets made from --psf-offaxis are "
         "KLIP-subtracted like the science (6 angles every FWHM from 2 FWHM to the edge); "
         "adds a THROUGHPUT table and the calibrated contrast. Inputs and the real products "
         "are not touched.")

snr_method = click.option(
    "--snr-method", type=click.Choice(["ratio", "mawet"]), default=HlspConfig.snr_method,
    show_default=True,
    help="SNR map: ratio = SCI/ERR; mawet = the aperture t-test of Mawet et al. (2014) at "
         "every pixel (apertures of diameter --fwhm against the others at the same radius).")

detect = _compose(
    click.option("--detect", type=float, default=None, metavar="SNR",
                 help="Find point-source candidates with SNR >= this in the SNR map; writes "
                      "<root>_detections.fits (table DETECTIONS) and <root>_detections.ecsv."),
    click.option("--inner-radius", type=click.FloatRange(min=0), default=None, metavar="PIX",
                 help="Do not search inside this radius about the star [default: 2 FWHM]."),
)

plot = click.option(
    "--plot", is_flag=True,
    help="Also write PNG figures: <root>_contrast.png (contrast curve) and <root>_snr.png "
         "(SNR map, candidates marked). Needs matplotlib: pip install 'coron[plot]'.")

table_format = click.option(
    "--format", "table_format", type=click.Choice(["fits", "ecsv"]),
    default=PipelineConfig.table_format,
    show_default=True,
    help="ecsv also writes the contrast table as <root>_contrast.ecsv next to the FITS one.")

registration = click.option(
    "--align-method", "align_method", type=click.Choice(["auto", "dither", "fourier"]),
    default=AlignConfig.method, show_default=True,
    help="How offsets are measured. Every pair gets a rigid shift and flux fit ('fourier' "
         "stops there). Behind a coronagraph that fit over-reads the star's offset; 'auto' "
         "measures by how much on references of one visit dithered over 2+ positions "
         "(XOFFSET/YOFFSET) and corrects every shift. 'dither' also uses an empirical model "
         "of the image against the star's position, learned from such references, where it "
         "fits a science integration better than a rigid shift (a warning names an "
         "exposure that rejects it). Shifts more than --max-shift pixels from the headers' "
         "star positions are rejected.")

roll_move = click.option(
    "--roll-move", "roll_move", default=KlipConfig.roll_move, show_default=True,
    type=click.FloatRange(min=0), metavar="LOD",
    help="The other rolls serve as references only where a source moves by at least LOD "
         "resolution elements (lambda/D) between the rolls, so that it is not subtracted "
         "with the star; closer in, the references alone are used.")

roll_refs = _compose(
    click.option(
        "--roll-refs/--no-roll-refs", "roll_refs", default=KlipConfig.roll_refs,
        show_default=True,
        help="Use each science exposure's other rolls (the association's science members "
             "at another roll angle: same star, nearly the same wavefront) as references "
             "too, registered like the references, where a source has moved far enough "
             "between the rolls (--roll-move): angular differential imaging with the "
             "references."),
    roll_move)

roll_ref = _compose(
    click.option(
        "--roll-ref", "roll_ref", multiple=True, metavar="FILE",
        help="Another roll of the same target (a calints file): registered onto the "
             "science star (coron-align's default registration) and used as a reference "
             "where a source has moved far enough between the rolls (--roll-move). "
             "Repeatable. coron3 run takes them from the association (--roll-refs)."),
    roll_move)

align_per = click.option(
    "--align-per", "align_per", type=click.Choice(["integration", "exposure"]),
    default=AlignConfig.per, show_default=True,
    help="What the references are registered on: every science integration (a 4-D "
         "psfalign, nint x nref frames) or, with 'exposure', the mean of the integrations, "
         "once (a 3-D psfalign as the JWST stage writes, and one KL decomposition for all "
         "integrations: much faster with many integrations; the star does not move within "
         "an exposure by more than the pointing jitter).")


def outdir(help_text):
    """-d/--outdir DIR (coron3 run, coron3 check)."""
    return click.option("-d", "--outdir", default=".", show_default=True, metavar="DIR",
                        type=click.Path(), help=help_text)


mask = click.option(
    "--mask", default=None, metavar="FILE",
    help="FITS image of fit weights for the registration (1 = use, 0 = ignore).")


psfmask = click.option(
    "--psfmask", default=PipelineConfig.psfmask, show_default=True, metavar="FILE|auto|none",
    help="The coronagraph's transmission map (a JWST PSFMASK file cut to the subarray, 1 = "
         "unobstructed, on the exposure's pixel grid): pixels below --min-transmission are "
         "left out of the KL fit, fake planets are dimmed by it, and the contrast is "
         "divided by it. auto = <exposure>_psfmask.fits beside the science exposure, if "
         "there is one; none = no map.")

psfmask_weights = click.option(
    "--psfmask-weights/--no-psfmask-weights", default=AlignConfig.psfmask_weights,
    show_default=True,
    help="Weigh the registration fit by the transmission map (as the JWST stage does), "
         "when no --mask is given.")

min_transmission = click.option(
    "--min-transmission", type=click.FloatRange(min=0.0, max=1.0),
    default=KlipConfig.min_transmission, show_default=True, metavar="T",
    help="Leave pixels whose coronagraph transmission (--psfmask) is below T out of the KL "
         "fit (they are still subtracted).")

def _sky_order(ctx, param, value):
    if value is None or str(value).strip().lower() == "auto":
        return "auto"
    try:
        order = int(value)
    except ValueError:
        raise click.BadParameter(f"must be auto or 0-3, not {value!r}") from None
    if not 0 <= order <= 3:
        raise click.BadParameter(f"must be auto or 0-3, not {value!r}")
    return order


sky_order = click.option(
    "--sky-order", default=str(KlipConfig.sky_order), show_default=True, metavar="auto|N",
    callback=_sky_order,
    help="Fit a polynomial sky of order N in every zone with the KL modes (0 = only the "
         "mean, as classic KLIP; 1 = a plane: a gradient the references do not share; 2 = "
         "also the four-fold pattern of a four-quadrant mask's background). auto = 2 behind "
         "a 4QPM (CORONMSK), else 1.")

#: the keywords of --background; anything else is a file
BACKGROUND_MODES = ("auto", "subtract", "off")

background_files = click.option(
    "--background", "background", multiple=True, metavar="FILE|MODE",
    help="Background exposure(s) (empty sky, same set-up) to subtract, combined robustly, "
         "their noise added to ERR; repeatable. A value auto, subtract or off sets what is "
         "done with them: auto (the default) skips the subtraction when S_BKDSUB = COMPLETE "
         "or when the exposure's sky is already far below the background's.")

background_mode = click.option(
    "--background", "background", type=click.Choice(BACKGROUND_MODES),
    default=BackgroundConfig.mode, show_default=True,
    help="What to do with the association's background members: science backgrounds go "
         "with the science, reference backgrounds with the references (by program, else "
         "nearest in time). auto skips the subtraction when S_BKDSUB = COMPLETE or when "
         "an exposure's sky is already far below its background's (says so).")
