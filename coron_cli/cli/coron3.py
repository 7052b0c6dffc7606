"""coron3: the pipeline driver (run an association, run the demo)."""

import click

from . import options
from .batch import batch_command
from .common import (
    parse_exclude,
    read_mask,
    resolve_star_flux,
    run,
    setup_logging,
    step_progress,
)


@click.group(name="coron3", cls=options.Group)
@click.version_option(None, "--version", package_name="coron",
                      message="%(prog)s (coron) %(version)s")
def cli():
    """Coronagraphic PSF subtraction pipeline (stack, align, klip, combine, hlsp).

    \b
    Examples:
      coron3 demo --outdir demo_out
      coron3 check jw1234_coron_asn.json --outdir products
      coron3 run jw1234_coron_asn.json --outdir products --truncate 30
    """


def _klip_options(func):
    for dec in reversed([options.truncate, options.klip_zones, options.exclude, options.protect,
                         options.fit_weights, options.noise_width, options.bad_bits,
                         options.star_flux, options.fwhm]):
        func = dec(func)
    return func


@cli.command(name="run", no_args_is_help=True)
@click.argument("asn", metavar="ASN", type=click.Path())
@options.outdir("Folder for the products (created when missing).")
@options.registration
@options.align_per
@options.mask
@options.max_shift
@options.psfmask
@options.psfmask_weights
@options.min_transmission
@options.sky_order
@options.background_mode
@options.roll_refs
@_klip_options
@options.contrast
@options.snr_method
@options.detect
@options.table_format
@options.plot
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary on standard output: the products written (kind, "
                   "path), the parameters, the timings, the ASN and the coron version.")
@options.common
def run_cmd(asn, outdir, align_method, align_per, mask, max_shift, psfmask, psfmask_weights,
            min_transmission, sky_order, background, roll_refs, roll_move, truncate, zones,
            zone_width, zone_sectors,
            zone_fit, exclude, protect, weights, noise_width, bad_bits, star_flux, psf_offaxis,
            star_flux_method, fwhm, contrast, snr_method, detect, inner_radius, table_format,
            plot, as_json, verbose, quiet, debug):
    """Run stack, align, klip, combine and hlsp on an association.

    Writes, into DIR, for every product of the ASN: <product>_psfstack.fits;
    for every science member <exposure>_<asn_id>_psfalign.fits and
    <exposure>_<asn_id>_psfsub.fits; the combined north-up
    <product>_i2d.fits; and its <product>_snr.fits and
    <product>_contrast.fits. Products are identical to those of the single
    tools chained by hand.

    With --contrast (which needs --psf-offaxis), fake planets made from the
    off-axis PSF are KLIP-subtracted with each exposure's references and
    combined like the images: every psfsub and the i2d get a THROUGHPUT
    table (recovered over injected flux against separation) and the
    contrast table the throughput-calibrated 5-sigma contrast; inputs and
    real products are not touched. Background members of the ASN are
    subtracted from the science and the references they go with, unless
    --background says otherwise or the data show it was done already; the
    transmission map beside each science exposure (--psfmask) restricts the
    KL fit (--min-transmission), dims fake planets and calibrates the
    contrast. --detect SNR adds
    <product>_detections.fits and .ecsv (the candidates of the SNR map),
    --format ecsv <product>_contrast.ecsv, and --plot the figures
    <product>_contrast.png and <product>_snr.png.

    Each product is written atomically when it is ready: an interrupted run
    (Ctrl-C, SIGTERM, a failed write) leaves the products finished so far
    and no partial file. On a terminal a progress bar is shown on standard
    error; -v adds the timing of every step; standard output stays empty
    unless --json is given.

    \b
    Examples:
      coron3 run jw1234_coron_asn.json --outdir products --truncate 30
      coron3 run jw1234_coron_asn.json --json -q > run.json
      coron3 run jw1234_coron_asn.json --psf-offaxis offaxis_psf.fits --contrast --detect 5
    """
    setup_logging("coron3", verbose, quiet)
    import time

    from ..asn import read_asn
    from ..pipeline import plan, run_association, step_count
    from ..steps import PipelineConfig

    t0 = time.perf_counter()
    if plot:
        from ..plots import require_matplotlib

        require_matplotlib()
    star_flux, psf = resolve_star_flux(star_flux, psf_offaxis, star_flux_method, fwhm,
                                       need_psf=contrast)
    config = PipelineConfig.from_options(
        bad_bits=bad_bits, background=background, align_method=align_method,
        align_per=align_per, psfmask_weights=psfmask_weights, max_shift=max_shift, truncate=truncate, zones=zones,
        zone_width=zone_width, zone_sectors=zone_sectors, zone_fit=zone_fit,
        exclude=parse_exclude(exclude), protect=protect, weights=weights,
        min_transmission=min_transmission, sky_order=sky_order, noise_width=noise_width,
        contrast=contrast, fwhm=fwhm, star_flux=star_flux, star_flux_method=star_flux_method,
        snr_method=snr_method, detect=detect, inner_radius=inner_radius, psfmask=psfmask,
        table_format=table_format, plot=plot, roll_refs=roll_refs, roll_move=roll_move)
    weights_map = read_mask(mask)
    total = step_count(plan(read_asn(asn), outdir))
    with step_progress(total, enabled=not quiet) as on_step:
        summary = run_association(asn, outdir, config, mask=weights_map, offaxis_psf=psf,
                                  on_step=on_step)
    if as_json:
        _echo_json(summary, time.perf_counter() - t0)


def _echo_json(summary, elapsed):
    import json

    from .. import __version__
    from .common import json_plain as plain

    out = {"tool": "coron3 run", "coron_version": __version__, **summary,
           "elapsed": round(elapsed, 3)}
    out["timings"] = {k: round(v, 3) for k, v in summary.get("timings", {}).items()}
    click.echo(json.dumps(out, indent=2, default=plain))


@cli.command(name="check", no_args_is_help=True)
@click.argument("asn", metavar="ASN", type=click.Path())
@options.outdir("Folder the products would go to (writable, or one that can be created).")
@options.bad_bits
@options.common
def check_cmd(asn, outdir, bad_bits, verbose, quiet, debug):
    """Check an association and list the products a run would write.

    Reads the association and every member: each must exist and be a
    readable FITS exposure with SCI data (ERR and DQ of the same shape),
    with some pixels not flagged; every product needs science and psf
    members whose frames have the same size; DIR must be a writable folder
    (or one that can be created) and no product may overwrite an input.
    Writes nothing. Prints the plan
    on standard output, one product a line: KIND, a tab, PATH. Exit status
    0 when 'coron3 run' can start, 2 with one line naming the problem
    otherwise.

    \b
    Examples:
      coron3 check jw1234_coron_asn.json --outdir products
      coron3 check jw1234_coron_asn.json | cut -f2      # the file names only
    """
    setup_logging("coron3", verbose, quiet)
    from ..pipeline import check_association

    _, planned = check_association(asn, outdir, bad_bits=bad_bits)
    for kind, path, _ in planned:
        click.echo(f"{kind}\t{path}")


@cli.command(name="demo")
@click.option("-d", "--outdir", default="demo_out", show_default=True, metavar="DIR",
              type=click.Path(),
              help="Folder for the simulated data and the products (created if missing).")
@click.option("--size", type=click.Choice(["small", "medium", "large"]), default="medium",
              show_default=True,
              help="Simulation size: 64, 160 or 320 pixels square; 3, 5 or 10 integrations.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@options.truncate
@options.noise_width
@options.common
def demo_cmd(outdir, size, seed, truncate, noise_width, verbose, quiet, debug):
    """Simulate a coronagraphic data set, run the pipeline on it, report the planets.

    The simulation: a star behind a coronagraph with speckles that drift
    between visits, two roll angles, reference-star exposures on a 9-point
    dither, photon, read and row noise, bad pixels, cosmic rays and
    injected planets. It is written with its association to DIR, processed
    like 'coron3 run', and a table of the planets with their measured
    signal-to-noise in the combined image goes to standard output.
    """
    setup_logging("coron3", verbose, quiet)
    import os

    from ..demo import measure_planets, write_simulation
    from ..errors import OutputError
    from ..pipeline import run_association
    from ..products import read_product, star_center
    from ..simulate import simulate_dataset
    from ..steps import PipelineConfig, offaxis_peak

    PipelineConfig.from_options(truncate=truncate)       # a bad --truncate: before simulating
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        raise OutputError(outdir, f"cannot create the folder ({exc.strerror})") from None
    if not quiet:
        click.echo(f"coron3: simulating a {size} data set (seed {seed}) in {outdir}", err=True)
    ds = simulate_dataset(size, seed=seed)
    paths = write_simulation(ds, outdir)
    star = offaxis_peak(read_product(paths["offaxis"], what="off-axis PSF"))
    if not quiet:
        click.echo(f"coron3: running the pipeline on {paths['asn']}", err=True)
    config = PipelineConfig.from_options(truncate=truncate, noise_width=noise_width,
                                         star_flux=star, fwhm=ds.truth.get("lambda_over_d_pix"))
    summary = run_association(paths["asn"], outdir, config)
    i2d_path = next(p["path"] for p in summary["products"] if p["kind"] == "i2d")
    i2d = read_product(i2d_path, ndims=(2,), what="i2d")
    center, _ = star_center(i2d.sci_header, i2d.sci.shape)
    rows = measure_planets(i2d.sci, i2d.err, center, ds.truth)
    click.echo(f"# coron demo: {size} simulation, seed {seed}; products in {outdir}")
    click.echo(f"# i2d: {i2d_path}")
    click.echo(f"{'planet':>6} {'sep_lod':>8} {'pa_deg':>7} {'contrast':>9} {'x':>7} {'y':>7} "
               f"{'snr_map':>8} {'snr_ap':>7}")
    for i, r in enumerate(rows, 1):
        click.echo(f"{i:>6} {r['sep_lod']:>8.2f} {r['pa']:>7.1f} {r['contrast']:>9.1e} "
                   f"{r['x']:>7.2f} {r['y']:>7.2f} {r['snr_map']:>8.1f} "
                   f"{r['snr_aperture']:>7.1f}")


cli.add_command(batch_command(run_cmd))


def main():
    run(cli, "coron3")


if __name__ == "__main__":
    main()
