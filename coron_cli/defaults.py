"""Defaults of the options added for real data, held once (no heavy imports here).

Each is chosen on the panel (``make panel``: several simulated observing
set-ups and seeds plus real JWST data; SPEC section 6), not on one data set.
The command-line options, the steps and the pipeline all read them from here.
"""

#: Transmission map of each exposure: "auto" = ``<exposure>_psfmask.fits`` beside it.
PSFMASK = "auto"
#: Weigh the registration fit by the transmission map (as the JWST stage does).
PSFMASK_WEIGHTS = False
#: Pixels whose coronagraph transmission is below this are left out of the KL fit.
MIN_TRANSMISSION = 0.0
#: Polynomial order of the sky fitted with the KL modes (0 = the zone mean only).
SKY_ORDER = 0
#: What to do with background exposures: auto, subtract or off.
BACKGROUND = "auto"
#: KLIP zones: annuli of this width ("2lod" = 2 lambda/D, or pixels); None = --annuli.
ZONE_WIDTH = None
#: At most (fit pixels of a zone / this) KL modes in a zone; None = no limit.
PIXELS_PER_MODE = None
#: Registration shifts farther than this (pixels) from the headers' prediction are rejected.
MAX_SHIFT = 1.0
