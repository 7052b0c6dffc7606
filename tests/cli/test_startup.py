"""What each tool loads: coron-stack never loads what only KLIP needs, and a tool that is
only asked for help loads no step at all (module sets, never timings)."""

from tests.helpers import modules_loaded as _loaded


def test_coron_stack_does_not_load_klip():
    mods = _loaded("import coron_cli.cli.stack\n"
                   "from coron_cli.steps import stack_step, match_backgrounds\n"
                   "from coron_cli.products import read_product, write_product")
    assert not {m for m in mods if m.startswith(("scipy.signal", "scipy.stats"))}
    assert not {"coron_cli.core.klip", "coron_cli.steps.klip", "coron_cli.steps.inject",
                "coron_cli.core.metrics"} & mods


def test_the_commands_load_no_step_and_no_scipy_before_they_run():
    for module in ("stack", "align", "klip", "combine", "hlsp", "coron3"):
        mods = _loaded(f"import coron_cli.cli.{module}")
        assert not {m for m in mods if m.startswith(("scipy", "astropy", "dask"))}, module
        assert not {m for m in mods if m.startswith("coron_cli.steps.")
                    and m != "coron_cli.steps.config"}, module
