"""One option vocabulary: a concept has one flag and one default in every tool, the
defaults are those of the step configurations, coron3 run has every step option of the
single tools, and the old spellings still work, with a warning."""

import click
import pytest

from coron_cli.cli import align, combine, coron3, hlsp, klip, options, select, stack
from coron_cli.steps import config as c

TOOLS = {"coron-stack": stack.cli, "coron-align": align.cli, "coron-klip": klip.cli,
         "coron-combine": combine.cli, "coron-hlsp": hlsp.cli,
         "coron3 run": coron3.cli.commands["run"], "coron3 check": coron3.cli.commands["check"],
         "coron3 demo": coron3.cli.commands["demo"], "coron-select": select.cli,
         "coron3 batch": coron3.cli.commands["batch"]}

#: one name, two readings, documented in cli/options.py: the single tools take background
#: files (and a mode), coron3 run and batch only the mode (the files come from the
#: associations); coron3 demo writes into its own default folder; coron-select's output
#: (the association it writes) is required
DIFFERENT_DEFAULT = {("background", "coron3 run"), ("background", "coron3 batch"),
                     ("outdir", "coron3 demo"), ("output", "coron-select")}


def _options(command):
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_one_name_and_one_default_per_concept():
    seen = {}
    for tool, command in TOOLS.items():
        for name, opt in _options(command).items():
            if (name, tool) in DIFFERENT_DEFAULT:
                continue
            key = (tuple(sorted(opt.opts)), opt.default, opt.multiple, opt.is_flag)
            seen.setdefault(name, {}).setdefault(key, []).append(tool)
    split = {name: ways for name, ways in seen.items() if len(ways) > 1}
    assert not split, split
    flags = {}
    for name, ways in seen.items():
        for opts, *_ in ways:
            for flag in opts:
                flags.setdefault(flag, set()).add(name)
    assert all(len(names) == 1 for names in flags.values()), \
        {f: n for f, n in flags.items() if len(n) > 1}


def test_defaults_are_the_configurations():
    run = _options(coron3.cli.commands["run"])
    expect = {"truncate": ",".join(map(str, c.KlipConfig.truncate)),
              "zones": c.KlipConfig.zones, "zone_width": c.KlipConfig.zone_width,
              "zone_sectors": c.KlipConfig.zone_sectors, "zone_fit": c.KlipConfig.zone_fit,
              "protect": c.KlipConfig.protect, "weights": c.KlipConfig.weights,
              "min_transmission": c.KlipConfig.min_transmission,
              "sky_order": str(c.KlipConfig.sky_order), "noise_width": c.KlipConfig.noise_width,
              "bad_bits": c.StackConfig.bad_bits, "align_method": c.AlignConfig.method,
              "max_shift": c.AlignConfig.max_shift,
              "psfmask_weights": c.AlignConfig.psfmask_weights,
              "background": c.BackgroundConfig.mode, "psfmask": c.PipelineConfig.psfmask,
              "star_flux_method": c.HlspConfig.star_flux_method,
              "snr_method": c.HlspConfig.snr_method,
              "table_format": c.PipelineConfig.table_format}
    assert {k: run[k].default for k in expect} == expect
    # and each configuration field of a step has the same default in every configuration
    for a in (c.KlipConfig, c.CombineConfig, c.HlspConfig):
        assert a.noise_width == c.KlipConfig.noise_width
    for a in (c.BackgroundConfig, c.AlignConfig, c.KlipConfig):
        assert a.bad_bits == c.StackConfig.bad_bits


def test_coron3_run_has_every_step_option_of_the_single_tools():
    run = set(_options(coron3.cli.commands["run"]))
    # what only a single tool can have: its output file(s), the association it may read
    own = {"output", "contrast_output", "asn_path", "asn_id", "roll_ref"}
    for tool in ("coron-stack", "coron-align", "coron-klip", "coron-combine", "coron-hlsp"):
        missing = set(_options(TOOLS[tool])) - own - run
        assert not missing, (tool, missing)


def test_every_configuration_field_has_its_flag():
    run = {flag for p in coron3.cli.commands["run"].params for flag in p.opts}
    fields = set()
    for names in c.PipelineConfig.OPTIONS.values():
        fields |= set(names)
    fields |= c.PipelineConfig.OTHER_OPTIONS
    assert {options.flag_for(f) for f in fields} <= run, \
        {options.flag_for(f) for f in fields} - run


@pytest.mark.parametrize("old, new, value", [("--annuli", "--zones", "2"),
                                             ("--subsections", "--zone-sectors", "2"),
                                             ("--annuli-width", "--noise-width", "3")])
def test_old_spellings_still_work_with_a_warning(old, new, value):
    from click.testing import CliRunner

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates them
        runner = CliRunner()
    command = klip.cli
    seen = {}
    for args in ([old, value], [f"{old}={value}"], [new, value]):
        ctx = command.make_context("coron-klip", ["sci.fits", "ali.fits"] + args)
        seen[tuple(args)] = ctx.params[new.lstrip("-").replace("-", "_")]
    assert len(set(seen.values())) == 1 and str(list(seen.values())[0]) == value
    r = runner.invoke(command, ["sci.fits", "ali.fits", old, value, "--help"])
    assert r.exit_code == 0
    assert f"{old} is deprecated; use {new}" in r.stderr


def test_old_method_spelling_on_coron3_run():
    ctx = coron3.cli.commands["run"].make_context("coron3 run", ["a.json", "--method",
                                                                 "fourier"])
    assert ctx.params["align_method"] == "fourier"


def test_a_config_error_names_the_flag(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from coron_cli.cli.klip import main; main()",
                        "a.fits", "b.fits", "--truncate", "0"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "coron-klip: error: --truncate: must be positive integers, not '0'"]


def test_configurations_validate_and_render():
    with pytest.raises(c.ConfigError) as e:
        c.KlipConfig(zone_fit="inside")
    assert e.value.field == "zone_fit"
    with pytest.raises(c.ConfigError) as e:
        c.KlipConfig(exclude=[(1, 2)])
    assert e.value.field == "exclude"
    with pytest.raises(c.ConfigError) as e:
        c.HlspConfig(noise_width=0)
    assert e.value.field == "noise_width"
    k = c.KlipConfig(truncate="5, 10", protect=0, sky_order="2")
    assert k.truncate == (5, 10) and k.protect is None and k.sky_order == 2
    with pytest.raises(Exception):
        k.truncate = (3,)                       # frozen
    d = c.PipelineConfig.from_options(truncate=[7], contrast=True, fwhm=2.5,
                                      detect=4).as_dict()
    assert d["klip"]["truncate"] == [7] and d["inject"]["fwhm"] == 2.5
    assert d["detect"]["threshold"] == 4.0 and d["hlsp"]["fwhm"] == 2.5
    assert k.params()["protect"] == "off" and k.params()["exclude"] == "none"
