"""Product-level steps: stack, align, klip, inject, combine, hlsp, detect.

Each step takes :class:`~coron_cli.products.Product` objects and returns new
ones; it calls :mod:`coron_cli.core` for the numerics and never touches a
file, so ``coron3 run`` and the single commands share every line of it.
Messages go through the ``coron`` logger.

Modules
-------
stack        reference exposures into a psfstack (outliers flagged)
background   background exposures matched and subtracted
align        references registered onto every science integration (psfalign)
klip         KLIP subtraction of every integration (psfsub)
inject       fake-source injection: the algorithmic throughput
combine      psfsubs rotated north-up and combined (i2d)
hlsp         SNR map and contrast table
detect       point-source candidates
config       the frozen configuration of each step (defaults held once)
_common      what several steps share

The names below are loaded from their module on first use, so a tool that
runs one step does not import the others' dependencies.
"""

import importlib

_WHERE = {
    "prepare_science": "stack",
    "stack_step": "stack",
    "take_integrations": "stack",
    "match_backgrounds": "background",
    "background_step": "background",
    "align_step": "align",
    "klip_step": "klip",
    "resolve_sky_order": "klip",
    "parse_zone_width": "klip",
    "zone_width_pix": "klip",
    "ZONE_PIXELS_PER_MODE": "klip",
    "klip_inject_step": "inject",
    "roll_references": "rolls",
    "roll_subtract": "rolls",
    "rotated_fakes": "rolls",
    "source_in_rolls": "rolls",
    "RollReferences": "rolls",
    "Injection": "inject",
    "injection_separations": "inject",
    "combine_injections": "inject",
    "throughput_table": "inject",
    "add_throughput": "inject",
    "offaxis_image": "inject",
    "offaxis_flux": "inject",
    "offaxis_peak": "inject",
    "combine_step": "combine",
    "hlsp_step": "hlsp",
    "detect_step": "detect",
    "transmission_image": "_common",
    "product_transmission": "_common",
    "parse_truncate": "config",
    "ConfigError": "config",
    "StackConfig": "config",
    "BackgroundConfig": "config",
    "AlignConfig": "config",
    "KlipConfig": "config",
    "InjectConfig": "config",
    "CombineConfig": "config",
    "HlspConfig": "config",
    "DetectConfig": "config",
    "PipelineConfig": "config",
    "estimate_err": "_common",
}

__all__ = [
    "AlignConfig",
    "BackgroundConfig",
    "CombineConfig",
    "ConfigError",
    "DetectConfig",
    "HlspConfig",
    "InjectConfig",
    "Injection",
    "KlipConfig",
    "PipelineConfig",
    "RollReferences",
    "StackConfig",
    "ZONE_PIXELS_PER_MODE",
    "add_throughput",
    "align_step",
    "background_step",
    "combine_injections",
    "combine_step",
    "detect_step",
    "estimate_err",
    "hlsp_step",
    "injection_separations",
    "klip_inject_step",
    "klip_step",
    "match_backgrounds",
    "offaxis_flux",
    "offaxis_image",
    "offaxis_peak",
    "parse_truncate",
    "parse_zone_width",
    "prepare_science",
    "product_transmission",
    "resolve_sky_order",
    "roll_references",
    "roll_subtract",
    "rotated_fakes",
    "source_in_rolls",
    "stack_step",
    "take_integrations",
    "throughput_table",
    "transmission_image",
    "zone_width_pix",
]


_MODULES = ("stack", "background", "align", "klip", "inject", "combine", "hlsp", "detect",
            "config", "_common")


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
