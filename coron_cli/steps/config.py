"""The settings of each step, held once: frozen configuration objects.

Each step takes its inputs and one of these. A configuration holds its
defaults (the panel-chosen ones come from :mod:`coron_cli.defaults`),
checks itself when made (:class:`ConfigError` names the bad field; the
command layer turns a field into its flag, see
:data:`coron_cli.cli.options.FLAGS`) and renders itself for provenance
(:meth:`Config.params`) and ``--json`` (:meth:`Config.as_dict`).

    >>> KlipConfig(truncate="5,10")
    KlipConfig(truncate=(5, 10), ...)
    >>> KlipConfig(truncate=0)
    Traceback (most recent call last):
    ConfigError: truncate: must be positive integers, not 0
"""

import dataclasses
import math
from dataclasses import dataclass, field

from .. import defaults
from ..errors import ConfigError

__all__ = ["ConfigError", "Config", "StackConfig", "BackgroundConfig", "AlignConfig",
           "KlipConfig", "InjectConfig", "CombineConfig", "HlspConfig", "DetectConfig",
           "PipelineConfig", "parse_truncate"]

#: DQ bits meaning "do not use" (DO_NOT_USE)
BAD_BITS = 1
#: width of the annuli for noise profiles and error calibration, whole pixels
NOISE_WIDTH = 2


def parse_truncate(value):
    """'5,10,30' or 50 or (5, 10) -> (5, 10, 30) / (50,) / (5, 10).

    ConfigError (field ``truncate``) unless positive integers.
    """
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v for v in str(value).replace(" ", "").split(",")]
    out = []
    for item in items:
        try:
            k = int(str(item))
        except ValueError:
            raise ConfigError("truncate", f"must be positive integers, not {value!r}") from None
        if k < 1:
            raise ConfigError("truncate", f"must be positive integers, not {value!r}")
        out.append(k)
    if not out:
        raise ConfigError("truncate", "is empty")
    return tuple(out)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Config:
    """Base of the step configurations (frozen dataclasses)."""

    def __post_init__(self):
        self._check()

    def _check(self):
        """Normalise and validate the fields (raise ConfigError)."""

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def _choice(self, name, choices):
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(map(str, choices))}, "
                                    f"not {value!r}")

    def _number(self, name, *, low=None, high=None, integer=False, optional=False,
                open_low=False):
        value = getattr(self, name)
        if value is None and optional:
            return
        try:
            number = int(value) if integer else float(value)
            if integer and number != float(value):
                raise ValueError
        except (TypeError, ValueError):
            kind = "an integer" if integer else "a number"
            raise ConfigError(name, f"must be {kind}, not {value!r}") from None
        if not math.isfinite(number) or (low is not None and (
                number < low or (open_low and number == low))) or \
                (high is not None and number > high):
            bound = []
            if low is not None:
                bound.append(f"{'>' if open_low else '>='} {low:g}")
            if high is not None:
                bound.append(f"<= {high:g}")
            raise ConfigError(name, f"must be {' and '.join(bound) or 'finite'}, "
                                    f"not {value!r}")
        self._set(name, number)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self):
        """Field values as plain JSON-ready types."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def params(self):
        """Field values for a product's provenance (HIERARCH CORON cards)."""
        return self.as_dict()


@dataclass(frozen=True)
class StackConfig(Config):
    """coron-stack: DQ bits that mean "do not use"."""

    bad_bits: int = BAD_BITS

    def _check(self):
        self._number("bad_bits", low=0, integer=True)


@dataclass(frozen=True)
class BackgroundConfig(Config):
    """Background exposures: ``mode`` auto, subtract or off (see background_step)."""

    mode: str = defaults.BACKGROUND
    bad_bits: int = BAD_BITS

    def _check(self):
        self._choice("mode", ("auto", "subtract", "off"))
        self._number("bad_bits", low=0, integer=True)


@dataclass(frozen=True)
class AlignConfig(Config):
    """coron-align: registration method, weights and bounds (see align_step)."""

    method: str = "auto"
    psfmask_weights: bool = defaults.PSFMASK_WEIGHTS
    max_shift: float = defaults.MAX_SHIFT
    per: str = defaults.ALIGN_PER
    bad_bits: int = BAD_BITS

    def _check(self):
        self._choice("method", ("auto", "dither", "fourier"))
        self._choice("per", ("integration", "exposure"))
        self._set("psfmask_weights", bool(self.psfmask_weights))
        self._number("max_shift", low=0)
        self._number("bad_bits", low=0, integer=True)


@dataclass(frozen=True)
class KlipConfig(Config):
    """coron-klip: truncations, zones, fit region, weights, sky and noise (see klip_step).

    ``zones`` N > 1 solves KLIP in N equal annuli, replacing ``zone_width``;
    ``zone_sectors`` splits every annulus into sectors; ``noise_width`` is
    the width of the annuli in which the residual noise is measured.
    ``protect`` 0 or None turns the source protection off.
    """

    truncate: tuple = (50,)
    zones: int = 1
    zone_width: str = defaults.ZONE_WIDTH
    zone_sectors: int = 1
    zone_fit: str = defaults.ZONE_FIT
    exclude: tuple = ()
    protect: float = 5.0
    weights: str = defaults.WEIGHTS
    min_transmission: float = defaults.MIN_TRANSMISSION
    sky_order: object = defaults.SKY_ORDER
    noise_width: int = NOISE_WIDTH
    bad_bits: int = BAD_BITS
    roll_refs: bool = defaults.ROLL_REFS
    roll_move: float = defaults.ROLL_MOVE

    def _check(self):
        from .klip import parse_zone_width

        self._set("truncate", parse_truncate(self.truncate))
        self._number("zones", low=1, integer=True)
        self._number("zone_sectors", low=1, integer=True)
        try:
            parse_zone_width(self.zone_width)
        except ValueError as exc:
            raise ConfigError("zone_width", str(exc)) from None
        self._choice("zone_fit", ("self", "around"))
        try:
            circles = tuple(tuple(float(v) for v in c) for c in self.exclude)
        except (TypeError, ValueError):
            circles = ((),)
        if any(len(c) != 3 or c[2] <= 0 or not all(map(math.isfinite, c)) for c in circles):
            raise ConfigError("exclude", f"must be (x, y, radius) circles with a positive "
                                         f"radius, not {self.exclude!r}")
        self._set("exclude", circles)
        if not self.protect:
            self._set("protect", None)
        else:
            self._number("protect", low=0)
        if self.weights is None:
            self._set("weights", "none")
        self._choice("weights", ("noise", "none"))
        self._number("min_transmission", low=0, high=1)
        order = self.sky_order
        if order is None:
            order = 0
        if str(order).strip().lower() == "auto":
            self._set("sky_order", "auto")
        else:
            self._set("sky_order", order)
            self._number("sky_order", low=0, high=3, integer=True)
        self._number("noise_width", low=1, integer=True)
        self._number("bad_bits", low=0, integer=True)
        self._set("roll_refs", bool(self.roll_refs))
        self._number("roll_move", low=0)

    def params(self):
        out = self.as_dict()
        out["exclude"] = ";".join(f"{a:g},{b:g},{c:g}" for a, b, c in self.exclude) or "none"
        out["protect"] = self.protect or "off"
        out["zone_width"] = str(self.zone_width) if self.zone_width else "none"
        return out


@dataclass(frozen=True)
class InjectConfig(Config):
    """Fake-source injection (--contrast): resolution element and grid.

    Sources at ``inner`` to the frame's edge every ``step`` resolution
    elements (``fwhm`` pixels, default 2), at ``n_pa`` angles each.
    """

    fwhm: float = None
    n_pa: int = 6
    step: float = 1.0
    inner: float = 2.0

    def _check(self):
        self._number("fwhm", low=0, open_low=True, optional=True)
        self._number("n_pa", low=1, integer=True)
        self._number("step", low=0, open_low=True)
        self._number("inner", low=0)

    @property
    def fwhm_pix(self):
        return 2.0 if self.fwhm is None else float(self.fwhm)


@dataclass(frozen=True)
class CombineConfig(Config):
    """coron-combine: the width of the annuli in which ERR is recalibrated, and the DQ
    bits whose pixels are left out of the combination."""

    noise_width: int = NOISE_WIDTH
    bad_bits: int = BAD_BITS

    def _check(self):
        self._number("noise_width", low=1, integer=True)
        self._number("bad_bits", low=0, integer=True)


@dataclass(frozen=True)
class HlspConfig(Config):
    """coron-hlsp: noise annuli, star flux, resolution element and SNR method."""

    noise_width: int = NOISE_WIDTH
    star_flux: float = None
    star_flux_method: str = "peak"
    fwhm: float = None
    snr_method: str = "ratio"

    def _check(self):
        self._number("noise_width", low=1, integer=True)
        self._number("star_flux", low=0, open_low=True, optional=True)
        self._choice("star_flux_method", ("peak", "aperture"))
        self._number("fwhm", low=0, open_low=True, optional=True)
        self._choice("snr_method", ("ratio", "mawet"))

    @property
    def fwhm_pix(self):
        return 2.0 if self.fwhm is None else float(self.fwhm)


@dataclass(frozen=True)
class DetectConfig(Config):
    """coron-hlsp --detect: candidates above ``threshold`` beyond ``inner_radius``."""

    threshold: float = 5.0
    inner_radius: float = None
    fwhm: float = None
    star_flux: float = None
    star_flux_method: str = "peak"

    def _check(self):
        self._number("threshold", low=0)
        self._number("inner_radius", low=0, optional=True)
        self._number("fwhm", low=0, open_low=True, optional=True)
        self._number("star_flux", low=0, open_low=True, optional=True)
        self._choice("star_flux_method", ("peak", "aperture"))

    @property
    def fwhm_pix(self):
        return 2.0 if self.fwhm is None else float(self.fwhm)


@dataclass(frozen=True)
class PipelineConfig(Config):
    """coron3 run: one configuration per step, and what is written besides the products.

    ``inject`` None: no fake-source injection; ``detect`` None: no detection
    table. ``psfmask``: auto, none or a file (the transmission map of every
    science exposure). ``table_format`` ecsv also writes the contrast table
    as ECSV; ``plot`` writes the PNG figures.
    """

    stack: StackConfig = field(default_factory=StackConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    klip: KlipConfig = field(default_factory=KlipConfig)
    inject: InjectConfig = None
    combine: CombineConfig = field(default_factory=CombineConfig)
    hlsp: HlspConfig = field(default_factory=HlspConfig)
    detect: DetectConfig = None
    psfmask: str = defaults.PSFMASK
    table_format: str = "fits"
    plot: bool = False

    def _check(self):
        for name, kind in (("stack", StackConfig), ("background", BackgroundConfig),
                           ("align", AlignConfig), ("klip", KlipConfig),
                           ("combine", CombineConfig), ("hlsp", HlspConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(name, f"must be a {kind.__name__}")
        if self.inject is not None and not isinstance(self.inject, InjectConfig):
            raise ConfigError("inject", "must be an InjectConfig or None")
        if self.detect is not None and not isinstance(self.detect, DetectConfig):
            raise ConfigError("detect", "must be a DetectConfig or None")
        self._choice("table_format", ("fits", "ecsv"))
        self._set("plot", bool(self.plot))

    def as_dict(self):
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.as_dict() if isinstance(value, Config) else _plain(value)
        return out

    #: the flat option names :meth:`from_options` takes, by the configuration they go to
    OPTIONS = {
        "stack": {"bad_bits": "bad_bits"},
        "background": {"background": "mode", "bad_bits": "bad_bits"},
        "align": {"align_method": "method", "psfmask_weights": "psfmask_weights",
                  "max_shift": "max_shift", "align_per": "per", "bad_bits": "bad_bits"},
        "klip": {k: k for k in ("truncate", "zones", "zone_width", "zone_sectors", "zone_fit",
                                "exclude", "protect", "weights", "min_transmission",
                                "sky_order", "noise_width", "bad_bits", "roll_refs",
                                "roll_move")},
        "inject": {"fwhm": "fwhm"},
        "combine": {"noise_width": "noise_width", "bad_bits": "bad_bits"},
        "hlsp": {k: k for k in ("noise_width", "star_flux", "star_flux_method", "fwhm",
                                "snr_method")},
        "detect": {"detect": "threshold", "inner_radius": "inner_radius", "fwhm": "fwhm",
                   "star_flux": "star_flux", "star_flux_method": "star_flux_method"},
    }

    #: the flat option names of the pipeline's own fields
    OTHER_OPTIONS = frozenset({"contrast", "psfmask", "table_format", "plot"})

    @classmethod
    def from_options(cls, **options):
        """A PipelineConfig from the flat option names of ``coron3 run`` (its flags with
        underscores: ``truncate``, ``zones``, ``align_method``, ``noise_width``,
        ``contrast``, ``detect``, ``psfmask``...), each given to every step that has it.

        ConfigError names an option no step takes.
        """
        known = {k for names in cls.OPTIONS.values() for k in names} | cls.OTHER_OPTIONS
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(unknown[0], "is not an option of coron3 run")
        kinds = {"stack": StackConfig, "background": BackgroundConfig, "align": AlignConfig,
                 "klip": KlipConfig, "inject": InjectConfig, "combine": CombineConfig,
                 "hlsp": HlspConfig, "detect": DetectConfig}
        parts = {}
        for name, names in cls.OPTIONS.items():
            if name == "inject" and not options.get("contrast"):
                continue
            if name == "detect" and options.get("detect") is None:
                continue
            parts[name] = kinds[name](**{field: options[opt] for opt, field in names.items()
                                         if opt in options})
        for key in ("psfmask", "table_format", "plot"):
            if key in options:
                parts[key] = options[key]
        return cls(**parts)
