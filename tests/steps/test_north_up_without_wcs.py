"""Without a celestial WCS the detector's angle on the sky is PA_APER (= ROLL_REF -
VPARITY * V3I_YANG); on a MIRI-like header (V3I_YANG ~ 5 deg, VPARITY -1) the i2d and the
position angles of detections agree with the WCS route to 0.01 deg."""

import numpy as np
from astropy.io import fits

from coron_cli import steps
from coron_cli.products import Product, roll_angle

ROLL_REF, V3I_YANG, VPARITY = 64.817, 4.8292, -1
PA_APER = ROLL_REF - VPARITY * V3I_YANG


def _miri_like(with_wcs, pa_aper=True):
    n = 61
    y, x = np.indices((n, n), dtype=np.float64)
    cx, cy = 29.3, 31.1
    # a companion at 12 px, PA 130 deg east of north, seen on a detector whose +y axis
    # points PA_APER east of north (east to the left when north is up)
    a = np.radians(130.0 - PA_APER)
    px, py = cx - 12 * np.sin(a), cy + 12 * np.cos(a)
    rng = np.random.default_rng(0)
    img = 40 * np.exp(-((x - px) ** 2 + (y - py) ** 2) / 3.0) + rng.normal(0, 1, (n, n))
    h = fits.Header()
    h["STARCENX"], h["STARCENY"] = (cx, "0-based"), (cy, "0-based")
    if with_wcs:
        s, t = 0.11 / 3600, np.radians(PA_APER)
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
        h["CRPIX1"], h["CRPIX2"] = cx + 1, cy + 1
        h["CRVAL1"], h["CRVAL2"] = 10.0, -20.0
        h["CD1_1"], h["CD1_2"] = -s * np.cos(t), s * np.sin(t)
        h["CD2_1"], h["CD2_2"] = s * np.sin(t), s * np.cos(t)
    p = fits.Header()
    p["INSTRUME"], p["ROLL_REF"], p["V3I_YANG"], p["VPARITY"] = "MIRI", ROLL_REF, V3I_YANG, \
        VPARITY
    if pa_aper:
        p["PA_APER"] = PA_APER
    sci = img[None].astype(np.float32)
    return Product(sci=sci, err=np.ones_like(sci), dq=np.zeros(sci.shape, np.uint32),
                   primary=p, sci_header=h, path="miri_psfsub")


def test_roll_angle_routes_agree():
    wcs, src = roll_angle(_miri_like(True).sci_header, _miri_like(True).primary)
    assert src == "WCS" and abs(wcs - PA_APER) < 0.01
    for pa_aper in (True, False):
        p = _miri_like(False, pa_aper)
        angle, src = roll_angle(p.sci_header, p.primary)
        assert abs(angle - wcs) < 0.01 and src != "ROLL_REF"
    assert abs(ROLL_REF - wcs) > 4        # what the roll alone would have rotated by


def test_i2d_and_detections_agree_with_the_wcs_route():
    with_wcs, without = _miri_like(True), _miri_like(False)
    a = steps.combine_step([with_wcs])
    b = steps.combine_step([without])
    both = np.isfinite(a.sci) & np.isfinite(b.sci)
    assert both.mean() > 0.5
    np.testing.assert_allclose(a.sci[both], b.sci[both], atol=1e-4)
    pas = []
    for p in (with_wcs, without):
        snr, _ = steps.hlsp_step(p)
        det = steps.detect_step(p, snr, steps.DetectConfig(threshold=8))
        assert len(det.tables["DETECTIONS"]) >= 1
        pas.append(float(det.tables["DETECTIONS"]["pa"][0]))
    assert abs(pas[0] - pas[1]) < 0.01 and abs(pas[0] - 130.0) < 2.0
