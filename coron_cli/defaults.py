"""Defaults of the options added for real data, held once (no heavy imports here).

Each is chosen on the panel (``make panel``: several simulated observing
set-ups and seeds plus real JWST data; SPEC section 6), not on one data set.
The step configurations (:mod:`coron_cli.steps.config`) read them from here, and the
command-line options take their defaults from the configurations.
"""

#: Transmission map of each exposure: "auto" = ``<exposure>_psfmask.fits`` beside it.
PSFMASK = "auto"
#: Weigh the registration fit by the transmission map (as the JWST stage does).
PSFMASK_WEIGHTS = False
#: Pixels whose coronagraph transmission is below this are left out of the KL fit (the
#: star's core under the mask, a neighbouring mask's edge); still subtracted.
MIN_TRANSMISSION = 0.2
#: Polynomial order of the sky fitted with the KL modes in every zone (0 = the zone mean
#: only); "auto" = 2 behind a four-quadrant phase mask, whose background has the four-fold
#: pattern of the quadrant boundaries, 1 otherwise (a plane: a gradient the references do
#: not share). Order 2 also fits an edge-on disk's two-sided pattern, hence not everywhere.
SKY_ORDER = "auto"
#: What to do with background exposures: auto, subtract or off.
BACKGROUND = "auto"
#: KLIP zones: annuli of this width ("1lod" = 1 lambda/D, or pixels) beyond a radius ("@4lod",
#: or "@auto": where an annulus holds 10 pixels per KL mode; inside it the coefficients are
#: fitted on the whole frame); None = one zone (or --zones N).
ZONE_WIDTH = "1lod@auto"
#: Where a zone's coefficients are fitted: "self" (its own pixels) or "around" (the annuli
#: within two zone widths of it, not itself, as LOCI separates its subtraction and
#: optimization regions): a zone then cannot fit its own sources away.
ZONE_FIT = "self"
#: Pixel weights of the KL fit: "none" (classic KLIP) or "noise" (inverse ERR variance).
WEIGHTS = "none"
#: Registration shifts farther than this (pixels) from the headers' prediction are rejected.
MAX_SHIFT = 1.0
#: What the references are registered on: "integration" (every science integration, a
#: 4-D psfalign) or "exposure" (the mean of the exposure's integrations, once: a 3-D
#: psfalign, as the JWST stage writes it, and one KL decomposition per zone for all).
ALIGN_PER = "exposure"
#: The target's other rolls as references where a source moves by at least ROLL_MOVE
#: lambda/D between them and they hold no extended source (angular differential imaging
#: with the references). Chosen on the panel (2026-12-07): median SNR ratio to plain KLIP
#: 1.05 -> 1.17, AU Mic 1.08 -> 1.34, no companion below 0.9x the defaults without it;
#: 1.5 lambda/D gave 1.08.
ROLL_REFS = True
ROLL_MOVE = 1.0
