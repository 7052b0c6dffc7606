"""Filter names, diffraction widths and the pixel-integrated Airy pattern."""

import numpy as np
import pytest

from coron_cli.core import airy_pixels, diffraction_fwhm_pix, filter_wavelength_um

@pytest.mark.parametrize("name,wave", [
    ("F356W", 3.56), ("F1140C", 11.40), ("F182M", 1.82), ("F444W", 4.44), ("F2300C", 23.00),
    ("F210M", 2.10), ("F070W", 0.70), ("F1065C", 10.65), ("F150W2", 1.50), ("F2550WR", 25.50),
    ("F405N", 4.05), (" f335m ", 3.35),
])
def test_filter_wavelength_from_name(name, wave):
    assert filter_wavelength_um(name) == pytest.approx(wave)


@pytest.mark.parametrize("name", ["CLEAR", "OPAQUE", "F070LP", "FND", "F444W;F405N", "", "F35W",
                                  "F35600W", None, 356, "WLP8"])
def test_filter_wavelength_unknown_is_none(name):
    assert filter_wavelength_um(name) is None


def test_diffraction_fwhm_known_values():
    # 1.029 lambda / D: F356W on NIRCam long wave, F1140C on MIRI, F210M on NIRCam short wave
    assert diffraction_fwhm_pix(3.56, 0.063) == pytest.approx(1.845, abs=0.002)
    assert diffraction_fwhm_pix(11.40, 0.11) == pytest.approx(3.384, abs=0.002)
    assert diffraction_fwhm_pix(2.10, 0.031) == pytest.approx(2.212, abs=0.002)
    # scales with lambda / (D * pixel)
    assert diffraction_fwhm_pix(4.0, 0.1, diameter_m=2.4) == pytest.approx(
        diffraction_fwhm_pix(2.0, 0.1, diameter_m=1.2))
    for args in [(0.0, 0.063), (3.56, -1.0), (np.nan, 0.063), (3.56, 0.063, 0.0)]:
        with pytest.raises(ValueError):
            diffraction_fwhm_pix(*args)


def test_airy_pixels_fwhm_and_integral():
    # finely sampled, the pattern is half its peak at FWHM / 2 and its first zero at 1.22 lambda/D
    fwhm = 2.0
    r = np.array([[0.0, 0.0], [0.0, fwhm / 2], [0.0, 1.22 * fwhm / 1.029]])
    vals = airy_pixels(fwhm, r / 1.0, oversample=1)
    np.testing.assert_allclose(vals, [1.0, 0.5, 0.0], atol=2e-3)
    # pixel integration broadens: the centred pixel's mean is below the peak
    assert airy_pixels(fwhm, np.zeros(2), oversample=15) < 1.0
    # the energy over a large grid is that of an Airy pattern: 4 (lambda/D)^2 / pi
    yy, xx = np.indices((121, 121)) - 60.0
    total = airy_pixels(fwhm, np.stack([yy, xx], -1), oversample=3).sum()
    assert total == pytest.approx(4 * (fwhm / 1.029) ** 2 / np.pi, rel=0.01)
