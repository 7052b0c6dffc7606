"""Observing set-ups for the simulator (:mod:`coron_cli.simulate`).

A :class:`Setup` describes how a coronagraphic RDI data set was taken: the
coronagraph, the science rolls, the reference stars and how each was observed
(dither pattern, rolls), the integrations per exposure and the sky
(background level, gradient, background exposures, whether the sky was
already subtracted). What is random within a set-up (fluxes, colours,
pointing errors, wavefronts, noise) is drawn from the simulation's seed.

:data:`SETUPS` holds named set-ups; :func:`draw_setup` draws one from a seed.
This module is plain data: no numerics beyond the draw, no I/O.

Dither patterns
---------------
Offsets are commanded in arcsec on the detector axes, as the ``XOFFSET`` and
``YOFFSET`` keywords of JWST exposures. The small-grid patterns used for
coronagraphic references (JWST user documentation, NIRCam and MIRI
coronagraphic imaging):

- ``NONE``: one pointing;
- ``5-POINT-BOX``: the centre and the corners of a +-15 mas box;
- ``5-POINT-DIAMOND``: the centre and +-20 mas along each axis;
- ``9-POINT-CIRCLE``: the centre and eight points on a 15 mas circle;
- ``9-POINT-SMALL-GRID``: a 3 x 3 grid (10 mas steps for MIRI, 15 mas for
  NIRCam), in the order of real MIRI exposures: centre, -x, (-x, +y), +y,
  (+x, +y), +x, (+x, -y), -y, (-x, -y);
- ``3-POINT-BAR`` and ``5-POINT-BAR``: 15 mas steps along the bar (x) only.

MIRI's coronagraphic patterns are written with an origin near
``(XOFFSET, YOFFSET) = (0.2185, 0.1273)`` arcsec: in the real HD 218261 set
(program 1194) every reference keeps its star on the 4QPM centre, within a
few tenths of a pixel of the science star, although its XOFFSET is ~2 px.
That origin is therefore a header convention, not a displacement of the
star; only the differences of XOFFSET within a visit move the star.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["CORONAGRAPHS", "DITHER_PATTERNS", "RefStar", "Setup", "SETUPS", "draw_setup",
           "dither_offsets"]

#: Coronagraphs the simulator models.
CORONAGRAPHS = ("nircam-round", "nircam-bar", "miri-4qpm")

# unit offsets of each pattern (in pattern steps) and the step (mas) by instrument
_CIRCLE = ((0.0, 0.0),) + tuple((float(np.cos(a)), float(np.sin(a)))
                                 for a in np.radians(45.0 * np.arange(8)))
_PATTERNS = {
    "NONE": (((0, 0),), {"NIRCAM": 0.0, "MIRI": 0.0}),
    "5-POINT-BOX": (((0, 0), (1, 1), (-1, 1), (-1, -1), (1, -1)),
                    {"NIRCAM": 15.0, "MIRI": 15.0}),
    "5-POINT-DIAMOND": (((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1)),
                        {"NIRCAM": 20.0, "MIRI": 20.0}),
    "9-POINT-CIRCLE": (_CIRCLE, {"NIRCAM": 15.0, "MIRI": 15.0}),
    "9-POINT-SMALL-GRID": (((0, 0), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1),
                            (0, -1), (-1, -1)), {"NIRCAM": 15.0, "MIRI": 10.0}),
    "3-POINT-BAR": (((0, 0), (1, 0), (-1, 0)), {"NIRCAM": 15.0, "MIRI": 15.0}),
    "5-POINT-BAR": (((0, 0), (1, 0), (-1, 0), (2, 0), (-2, 0)), {"NIRCAM": 15.0, "MIRI": 15.0}),
}
# coron's original synthetic pattern (the ``classic`` set-up): a 3 x 3 grid of
# 0.2 px steps starting at the centre, written as PATTTYPE '9-POINT-GRID'
_LEGACY_PATTERN = "9-POINT-GRID"
_LEGACY_ORDER = ((0, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0))
_LEGACY_STEP_PIX = 0.2

#: Dither pattern names (PATTTYPE) the simulator knows.
DITHER_PATTERNS = tuple(_PATTERNS) + (_LEGACY_PATTERN,)

# header origin of the commanded offsets of a dithered visit (arcsec)
_PATTERN_ORIGIN = {"NIRCAM": (0.0, 0.0), "MIRI": (0.2185, 0.1273)}


def dither_offsets(pattern, instrument, pixscale):
    """Commanded offsets of a dither pattern.

    Parameters
    ----------
    pattern : str
        One of :data:`DITHER_PATTERNS`.
    instrument : {"NIRCAM", "MIRI"}
    pixscale : float
        Detector pixel scale, arcsec per pixel.

    Returns
    -------
    offsets_pix : ndarray of shape (npoints, 2)
        Displacement (x, y) of the star, pixels, relative to the pattern's
        first position.
    header_arcsec : ndarray of shape (npoints, 2)
        ``XOFFSET``, ``YOFFSET`` to write, arcsec (the displacement plus the
        instrument's header origin, see the module notes).

    Raises
    ------
    ValueError
        Unknown pattern or instrument.
    """
    if pattern == _LEGACY_PATTERN:
        pix = _LEGACY_STEP_PIX * np.array(_LEGACY_ORDER, float)
        return pix, pix * pixscale
    if pattern not in _PATTERNS:
        raise ValueError(f"unknown dither pattern {pattern!r}; expected one of "
                         f"{list(DITHER_PATTERNS)}")
    if instrument not in _PATTERN_ORIGIN:
        raise ValueError(f"unknown instrument {instrument!r}")
    units, steps = _PATTERNS[pattern]
    arcsec = np.array(units, float) * (steps[instrument] / 1000.0)
    origin = np.array(_PATTERN_ORIGIN[instrument]) if len(units) > 1 else np.zeros(2)
    return arcsec / pixscale, arcsec + origin


@dataclass(frozen=True)
class RefStar:
    """One reference star and how it is observed.

    Parameters
    ----------
    dither : str
        Dither pattern (``PATTTYPE``) of each of its visits, see
        :data:`DITHER_PATTERNS`; ``"NONE"`` for a single pointing.
    nrolls : int
        Number of visits, each at its own roll angle (1 or 2; real
        programmes often take a reference at two rolls, as the AU Mic set).
    flux_ratio : float or None
        Total-flux ratio reference / science star; None draws it from the
        seed (log-uniform over 0.25-4).
    colour : float or None
        Colour mismatch with the science star: the reference's weights over
        the band's wavelengths are the science star's times
        ``(lambda / lambda_ref) ** -colour``; None draws it from the seed
        within +-``Setup.colour_spread``.
    wfe_nm : float or None
        RMS wavefront difference (nm) between its visits and the science
        visits; None draws it from the seed (2-6 nm).
    """

    dither: str = "NONE"
    nrolls: int = 1
    flux_ratio: float | None = None
    colour: float | None = None
    wfe_nm: float | None = None


@dataclass(frozen=True)
class Setup:
    """An observing set-up for :func:`coron_cli.simulate.simulate_dataset`.

    Parameters
    ----------
    name : str
        Label recorded in the truth.
    coronagraph : {"nircam-round", "nircam-bar", "miri-4qpm"}
        ``nircam-round``: NIRCam long-wave round mask (Gaussian amplitude
        profile), F444W-like band, 0.063"/px. ``nircam-bar``: NIRCam bar,
        the same profile across the bar with a width growing linearly along
        it. ``miri-4qpm``: MIRI four-quadrant phase mask, F1140C-like band
        (10.6-12.2 um), 0.11"/px, with a large thermal background.
    science_rolls : int
        Number of science exposures (1 or 2), each at its own roll.
    roll_delta_deg : float
        Roll difference between the two science exposures.
    nints : int or None
        Integrations per exposure (science, references and backgrounds);
        None uses the size's default (:data:`coron_cli.simulate.SIZES`).
    refs : tuple of RefStar
        One to three reference stars, each in its own visit(s).
    colour_spread : float
        Largest colour mismatch drawn for a reference with ``colour=None``.
    bar_offset : float
        Bar only: nominal star position along the bar, as a fraction of the
        frame width from the frame centre (the bar's width at the frame
        centre differs from that at the star).
    sky : float or None
        Sky level, counts per pixel per integration, before the mask's
        attenuation; None draws it for the instrument (NIRCam: 0.5-2 times
        the read noise; MIRI: 300-2000 times the read noise).
    sky_variation : float
        Fractional RMS of the sky level between visits (and a fifth of it
        between exposures of one visit).
    sky_gradient : float
        Peak-to-peak (counts) of a planar gradient present in the science
        exposures only (scattered light that neither the references nor the
        background exposures share); 0 for none.
    sci_backgrounds, ref_backgrounds : int
        Number of background exposures (empty sky, same set-up, exptype
        ``background``) taken for the science (0-2) and the references (0-1).
    background_subtracted : bool
        The sky was already removed from the science and reference
        exposures (up to a small residual), while the background exposures
        still hold it (as in the real MIRI HD 106906 set).
    bkdsub_keyword : bool
        With ``background_subtracted``, write ``S_BKDSUB = 'COMPLETE'`` in
        the science and reference headers (False: removed without a trace).
    separate_ref_program : bool
        References (and their backgrounds) come from another programme
        (``PROGRAM`` differs from the science's).
    neighbour_mask : bool
        NIRCam only: the bottom corners of the subarray see the edge of a
        neighbouring mask (near-zero transmission), as in real NIRCam
        coronagraphic subarrays.
    star_peak : float or None
        Peak of the star's unocculted PSF, counts per integration; None draws
        it (2e6-6e6). A brighter star makes the residual speckles stand
        further above the photon and read noise.
    """

    name: str = "custom"
    coronagraph: str = "nircam-round"
    science_rolls: int = 2
    roll_delta_deg: float = 10.0
    nints: int | None = None
    refs: tuple = field(default_factory=lambda: (RefStar(dither="9-POINT-CIRCLE"),))
    colour_spread: float = 1.0
    bar_offset: float = 0.0
    sky: float | None = None
    sky_variation: float = 0.03
    sky_gradient: float = 0.0
    sci_backgrounds: int = 0
    ref_backgrounds: int = 0
    background_subtracted: bool = False
    bkdsub_keyword: bool = False
    separate_ref_program: bool = False
    neighbour_mask: bool = False
    star_peak: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "refs", tuple(self.refs))
        self.validate()

    @property
    def instrument(self):
        """``"NIRCAM"`` or ``"MIRI"``."""
        return "MIRI" if self.coronagraph.startswith("miri") else "NIRCAM"

    def validate(self):
        """Check every field; raise ValueError naming the first bad one."""
        if self.coronagraph not in CORONAGRAPHS:
            raise ValueError(f"Setup.coronagraph: unknown {self.coronagraph!r}; expected one "
                             f"of {list(CORONAGRAPHS)}")
        if self.science_rolls not in (1, 2):
            raise ValueError("Setup.science_rolls must be 1 or 2")
        if not 0.0 < float(self.roll_delta_deg) < 180.0:
            raise ValueError("Setup.roll_delta_deg must be in (0, 180)")
        if self.nints is not None and int(self.nints) < 1:
            raise ValueError("Setup.nints must be a positive integer or None")
        if not 1 <= len(self.refs) <= 3:
            raise ValueError("Setup.refs must hold one to three RefStar")
        for k, r in enumerate(self.refs):
            if not isinstance(r, RefStar):
                raise ValueError(f"Setup.refs[{k}] is not a RefStar")
            if r.dither not in DITHER_PATTERNS:
                raise ValueError(f"Setup.refs[{k}].dither: unknown pattern {r.dither!r}")
            if r.nrolls not in (1, 2):
                raise ValueError(f"Setup.refs[{k}].nrolls must be 1 or 2")
            if r.flux_ratio is not None and not r.flux_ratio > 0:
                raise ValueError(f"Setup.refs[{k}].flux_ratio must be positive")
            if r.wfe_nm is not None and not r.wfe_nm >= 0:
                raise ValueError(f"Setup.refs[{k}].wfe_nm must be non-negative")
        if not self.colour_spread >= 0:
            raise ValueError("Setup.colour_spread must be non-negative")
        if self.star_peak is not None and not float(self.star_peak) > 0:
            raise ValueError("Setup.star_peak must be positive or None")
        if not abs(self.bar_offset) <= 0.25:
            raise ValueError("Setup.bar_offset must be within +-0.25 (fraction of the frame)")
        if self.bar_offset and self.coronagraph != "nircam-bar":
            raise ValueError("Setup.bar_offset applies to the nircam-bar coronagraph only")
        if self.sky is not None and not self.sky >= 0:
            raise ValueError("Setup.sky must be non-negative or None")
        if not 0 <= self.sky_variation < 0.5:
            raise ValueError("Setup.sky_variation must be in [0, 0.5)")
        if not self.sky_gradient >= 0:
            raise ValueError("Setup.sky_gradient must be non-negative")
        if self.sci_backgrounds not in (0, 1, 2):
            raise ValueError("Setup.sci_backgrounds must be 0, 1 or 2")
        if self.ref_backgrounds not in (0, 1):
            raise ValueError("Setup.ref_backgrounds must be 0 or 1")
        if self.bkdsub_keyword and not self.background_subtracted:
            raise ValueError("Setup.bkdsub_keyword needs background_subtracted")
        if self.neighbour_mask and self.instrument != "NIRCAM":
            raise ValueError("Setup.neighbour_mask applies to NIRCam coronagraphs only")

    def to_dict(self):
        """JSON-serialisable description (for the truth and for provenance)."""
        d = asdict(self)
        d["refs"] = [asdict(r) for r in self.refs]
        d["instrument"] = self.instrument
        return d

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d.pop("instrument", None)
        d["refs"] = tuple(RefStar(**r) for r in d.get("refs", ()))
        return cls(**d)


# the classic set-up: what simulate_dataset always produced (setup=None)
_CLASSIC = Setup(name="classic", coronagraph="nircam-round", science_rolls=2,
                 roll_delta_deg=10.0, nints=None,
                 refs=(RefStar(dither=_LEGACY_PATTERN, nrolls=1, colour=0.0, wfe_nm=4.0),),
                 colour_spread=0.0, sky=10.0, sky_variation=0.0)

#: Named set-ups. ``classic`` is what ``setup=None`` simulates.
SETUPS = {
    "classic": _CLASSIC,
    # the case that broke coron's defaults: a 9-POINT-CIRCLE small-grid dither
    # of one reference plus two single-visit references, each with its own
    # target-acquisition error, colour and wavefront offset
    "nircam-round-9circle-3stars": Setup(
        name="nircam-round-9circle-3stars", coronagraph="nircam-round", science_rolls=2,
        roll_delta_deg=10.0, nints=2,
        refs=(RefStar(dither="9-POINT-CIRCLE"), RefStar(), RefStar()),
        colour_spread=1.5, sky_gradient=4.0),
    # like the real AU Mic set (program 1184): three references, each at two
    # rolls, no dither, one integration per exposure
    "nircam-round-nodither-2rolls": Setup(
        name="nircam-round-nodither-2rolls", coronagraph="nircam-round", science_rolls=2,
        roll_delta_deg=10.0, nints=1,
        refs=(RefStar(nrolls=2), RefStar(nrolls=2), RefStar(nrolls=2)),
        colour_spread=1.5, neighbour_mask=True),
    # NIRCam bar, star off the frame centre along the bar, a 5-POINT-BAR dither
    "nircam-bar-5bar": Setup(
        name="nircam-bar-5bar", coronagraph="nircam-bar", science_rolls=2,
        roll_delta_deg=8.0, nints=2,
        refs=(RefStar(dither="5-POINT-BAR"), RefStar()),
        colour_spread=1.0, bar_offset=0.08),
    # like the real HD 106906 set: MIRI 4QPM, one science roll, a
    # 9-POINT-SMALL-GRID reference dither written from XOFFSET ~ 0.2",
    # backgrounds as exposures, the sky already removed without a keyword
    "miri-4qpm-9grid-bkg": Setup(
        name="miri-4qpm-9grid-bkg", coronagraph="miri-4qpm", science_rolls=1, nints=1,
        refs=(RefStar(dither="9-POINT-SMALL-GRID"),),
        colour_spread=1.0, sky_gradient=60.0, sci_backgrounds=2, ref_backgrounds=1,
        background_subtracted=True, bkdsub_keyword=False, separate_ref_program=True),
}

# dither patterns that suit each coronagraph's references
_DRAW_PATTERNS = {
    "nircam-round": ("5-POINT-BOX", "5-POINT-DIAMOND", "9-POINT-CIRCLE", "9-POINT-SMALL-GRID"),
    "nircam-bar": ("3-POINT-BAR", "5-POINT-BAR", "5-POINT-BOX"),
    "miri-4qpm": ("9-POINT-SMALL-GRID", "5-POINT-BOX", "9-POINT-CIRCLE"),
}

_S_SETUP = 101      # random-stream tag of draw_setup (simulate.py uses small tags)


def draw_setup(seed):
    """Draw a realistic observing set-up from a seed.

    Every dimension of :class:`Setup` is drawn: the coronagraph; one or two
    science rolls and their roll difference; one to three reference stars,
    typically only one of them dithered (with a pattern that suits the
    coronagraph) and the others single pointings, possibly at two rolls;
    one or several integrations; the sky (MIRI's large and usually measured
    in background exposures, already subtracted or not, with or without
    ``S_BKDSUB``), a gradient in the science or not; other programme or not.

    Parameters
    ----------
    seed : int
        Non-negative seed; the same seed always gives the same set-up.

    Returns
    -------
    Setup
        Named ``"random-<seed>"``.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError("seed must be non-negative")
    rng = np.random.default_rng([seed, _S_SETUP])
    coron = str(rng.choice(CORONAGRAPHS, p=[0.45, 0.2, 0.35]))
    miri = coron == "miri-4qpm"
    nref = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    ndith = int(rng.choice([0, 1, 2], p=[0.25, 0.65, 0.10]))
    ndith = min(ndith, nref)
    refs = []
    for k in range(nref):
        if k < ndith:
            pattern = str(rng.choice(_DRAW_PATTERNS[coron]))
            nrolls = 1
        else:
            pattern = "NONE"
            nrolls = int(rng.choice([1, 2], p=[0.5, 0.5]))
        refs.append(RefStar(dither=pattern, nrolls=nrolls))
    nsci = int(rng.choice([1, 2], p=[0.3, 0.7]))
    nints = [None, 1, 2, 3][int(rng.choice(4, p=[0.3, 0.4, 0.15, 0.15]))]
    # keep the number of reference integrations moderate (the panel's budget)
    nexp = sum(len(_PATTERNS.get(r.dither, ((0, 0),))[0]) * r.nrolls for r in refs)
    if nints is None and nexp > 6:
        nints = 1 if nexp > 10 else 2
    if miri:
        sci_bkg = int(rng.choice([0, 1, 2], p=[0.15, 0.35, 0.5]))
        ref_bkg = int(rng.random() < 0.8)
        gradient = float(rng.uniform(20.0, 150.0)) if rng.random() < 0.6 else 0.0
    else:
        sci_bkg = int(rng.choice([0, 1], p=[0.85, 0.15]))
        ref_bkg = int(sci_bkg > 0 and rng.random() < 0.5)
        gradient = float(rng.uniform(2.0, 10.0)) if rng.random() < 0.35 else 0.0
    subtracted = bool((sci_bkg or ref_bkg) and rng.random() < 0.5)
    keyword = bool(subtracted and rng.random() < 0.5)
    return Setup(
        name=f"random-{seed}", coronagraph=coron, science_rolls=nsci,
        roll_delta_deg=float(np.round(rng.uniform(5.0, 14.0), 2)), nints=nints,
        refs=tuple(refs), colour_spread=float(np.round(rng.uniform(0.3, 2.0), 2)),
        bar_offset=(float(np.round(rng.choice([-1, 1]) * rng.uniform(0.03, 0.10), 3))
                    if coron == "nircam-bar" else 0.0),
        sky=None, sky_variation=float(np.round(rng.uniform(0.01, 0.08), 3)),
        sky_gradient=gradient, sci_backgrounds=sci_bkg, ref_backgrounds=ref_bkg,
        background_subtracted=subtracted, bkdsub_keyword=keyword,
        separate_ref_program=bool(rng.random() < (0.6 if miri else 0.25)),
        neighbour_mask=bool(not miri and rng.random() < 0.4))
