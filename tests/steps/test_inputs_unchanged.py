"""Every step leaves its inputs as they were.

Each function of :mod:`coron_cli.steps` that takes products or arrays is run on
the small simulation (the session's ``demo_data``: 9 dithered reference
integrations per exposure, two science rolls, 64 x 64 pixels), with a
transmission map, background exposures and the off-axis PSF where it takes
them. Its arguments are deep-copied before the call and compared after it:
every array (SCI, ERR, DQ, extra images, table columns) value for value with
its dtype and shape, NaN where NaN; every header card for card (HISTORY
included); every list, dict, table's metadata and dataclass field.
"""

import copy
import dataclasses
import inspect

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from coron_cli import steps
from coron_cli.products import Product

# --------------------------------------------------------------------------- comparison


def assert_same(after, before, where):
    """`after` equals its deep copy `before`, recursively (see the module's docstring)."""
    assert type(after) is type(before), (where, type(after), type(before))
    if isinstance(before, np.ndarray):
        assert after.dtype == before.dtype and after.shape == before.shape, where
        assert np.array_equal(after, before, equal_nan=before.dtype.kind in "fc"), where
    elif isinstance(before, fits.Header):
        assert after.tostring() == before.tostring(), where
    elif isinstance(before, Table):
        assert after.colnames == before.colnames, where
        for name in before.colnames:
            assert_same(np.asarray(after[name]), np.asarray(before[name]), f"{where}[{name}]")
        assert_same(dict(after.meta), dict(before.meta), f"{where}.meta")
    elif isinstance(before, Product) or dataclasses.is_dataclass(before):
        for f in dataclasses.fields(before):
            assert_same(getattr(after, f.name), getattr(before, f.name), f"{where}.{f.name}")
    elif isinstance(before, (list, tuple)):
        assert len(after) == len(before), where
        for k, (a, b) in enumerate(zip(after, before)):
            assert_same(a, b, f"{where}[{k}]")
    elif isinstance(before, dict):
        assert list(after) == list(before), where
        for k in before:
            assert_same(after[k], before[k], f"{where}[{k!r}]")
    elif isinstance(before, float) and np.isnan(before):
        assert np.isnan(after), where
    else:
        assert after == before, where


def _run_unchanged(name, func, args, kwargs):
    before = copy.deepcopy((args, kwargs))
    out = func(*args, **kwargs)
    for k, (a, b) in enumerate(zip(args, before[0])):
        assert_same(a, b, f"{name} argument {k}")
    for key in kwargs:
        assert_same(kwargs[key], before[1][key], f"{name} {key}=")
    return out


def test_assert_same_sees_a_change():
    """The comparison itself: a changed pixel, DQ bit, card, column or list is seen."""
    p = Product(sci=np.array([[1.0, np.nan]], np.float32), err=np.ones((1, 2), np.float32),
                dq=np.zeros((1, 2), np.uint32), primary=fits.Header({"A": 1}),
                tables={"T": Table({"x": [1.0, 2.0]})},
                images={"I": (np.zeros(2), fits.Header())})
    assert_same(p, copy.deepcopy(p), "p")                     # NaN equals NaN
    for change in (lambda q: q.sci.__setitem__((0, 0), 2.0),
                   lambda q: q.dq.__setitem__((0, 1), 1),
                   lambda q: q.primary.__setitem__("A", 2),
                   lambda q: q.primary.add_history("step"),
                   lambda q: q.sci_header.__setitem__("STARCENX", 1.0),
                   lambda q: q.tables["T"]["x"].__setitem__(0, 5.0),
                   lambda q: q.images["I"][0].__setitem__(1, 1.0),
                   lambda q: q.tables.__setitem__("U", Table()),
                   lambda q: setattr(q, "err", q.err.astype(np.float64))):
        q = copy.deepcopy(p)
        change(q)
        with pytest.raises(AssertionError):
            assert_same(q, p, "q")


# --------------------------------------------------------------------------- inputs

@pytest.fixture(scope="module")
def d(demo_data):
    """The small simulation as products, and every intermediate product of a run."""
    from coron_cli.asn import read_asn
    from coron_cli.products import pixel_scale_arcsec, read_product

    asn = read_asn(demo_data["paths"]["asn"])
    prod = asn.products[0]
    refs = [read_product(p, what="reference exposure") for p in prod.psf]
    scis = [read_product(p, what="science exposure") for p in prod.science]
    lod = float(demo_data["truth"]["lambda_over_d_pix"])
    psf = np.asarray(demo_data["dataset"].offaxis_psf, dtype=np.float64)
    ny, nx = scis[0].sci.shape[-2:]
    yy, xx = np.indices((ny, nx))
    tmap = np.clip(np.hypot(xx - 32.0, yy - 32.0) / 10.0, 0.05, 1.0)
    weights = (tmap > 0.5).astype(np.float64)
    # background exposures of the science (same program, 0.01 d later) and of the references
    rng = np.random.default_rng(3)
    bkgs = []
    for k, (ref, when) in enumerate([(scis[0], 0.01), (scis[0], 0.02), (refs[0], 0.01)]):
        primary = ref.primary.copy()
        primary["EXPSTART"] = ref.primary["EXPSTART"] + when
        sky = (3.0 + rng.normal(0, 0.2, ref.sci.shape)).astype(np.float32)
        bkgs.append(Product(sci=sky, err=np.full(sky.shape, 0.2, np.float32),
                            dq=np.zeros(sky.shape, np.uint32), primary=primary,
                            sci_header=ref.sci_header.copy(), path=f"bkg{k}_calints.fits"))
    sky_sci = Product(sci=scis[0].sci + np.float32(3.0), err=scis[0].err, dq=scis[0].dq,
                      primary=scis[0].primary.copy(), sci_header=scis[0].sci_header.copy(),
                      path=scis[0].path)
    stack = steps.stack_step(refs, asn_id=asn.asn_id)
    aligned = [steps.align_step(s, stack, asn_id=asn.asn_id) for s in scis]
    klip = steps.KlipConfig(truncate=(5, 10))
    inject = steps.InjectConfig(fwhm=lod)
    pairs = [steps.klip_inject_step(s, a, psf, klip, inject, transmission=tmap)
             for s, a in zip(scis, aligned)]
    subs, injs = [p for p, _ in pairs], [i for _, i in pairs]
    fakes = steps.combine_injections(subs, injs)
    table = steps.throughput_table(fakes, fwhm=lod)
    i2d = steps.add_throughput(steps.combine_step(subs), table)
    hlsp = steps.HlspConfig(star_flux=float(psf.max()), fwhm=lod)
    snr, _ = steps.hlsp_step(i2d, hlsp)
    offaxis = Product(sci=psf[None].astype(np.float32), path="offaxis.fits")
    return dict(asn_id=asn.asn_id, refs=refs, scis=scis, lod=lod, psf=psf, tmap=tmap,
                weights=weights, bkgs=bkgs, sky_sci=sky_sci, stack=stack, aligned=aligned,
                klip=klip, inject=inject, subs=subs, injs=injs, fakes=fakes, table=table,
                i2d=i2d, hlsp=hlsp, snr=snr, offaxis=offaxis,
                scale=pixel_scale_arcsec(i2d.sci_header))


#: name -> (function name in coron_cli.steps, builder of (args, kwargs) from the inputs)
CASES = {
    "prepare_science": ("prepare_science", lambda d: (
        (d["scis"][0],), {"outliers": True, "return_outliers": True})),
    "stack_step": ("stack_step", lambda d: (
        (d["refs"], steps.StackConfig()), {"asn_id": d["asn_id"],
                                           "params": {"inputs": ["a", "b"]}})),
    "stack_step-integrations": ("stack_step", lambda d: (
        ([steps.take_integrations(d["refs"][0], [0, 2])] + d["refs"][1:],),
        {"integrations": [[0, 2]] + [None] * (len(d["refs"]) - 1)})),
    "take_integrations": ("take_integrations", lambda d: ((d["refs"][1], [2, 0]), {})),
    "match_backgrounds": ("match_backgrounds", lambda d: (
        (d["bkgs"], d["scis"], d["refs"]), {})),
    "background_step-subtract": ("background_step", lambda d: (
        (d["sky_sci"], d["bkgs"][:2], steps.BackgroundConfig(mode="subtract")), {})),
    "background_step-auto": ("background_step", lambda d: (
        (d["sky_sci"], d["bkgs"][:2], steps.BackgroundConfig(mode="auto")), {})),
    "align_step-auto-psfmask": ("align_step", lambda d: (
        (d["scis"][0], d["stack"], steps.AlignConfig(psfmask_weights=True)),
        {"transmission": d["tmap"], "asn_id": d["asn_id"]})),
    "align_step-fourier-mask": ("align_step", lambda d: (
        (d["scis"][1], d["stack"], steps.AlignConfig(method="fourier")),
        {"mask": d["weights"], "asn_id": d["asn_id"]})),
    "klip_step": ("klip_step", lambda d: (
        (d["scis"][0], d["aligned"][0], d["klip"].replace(min_transmission=0.2)),
        {"transmission": d["tmap"], "params": {"science": "s"}})),
    "klip_step-zones-noise": ("klip_step", lambda d: (
        (d["scis"][1], d["aligned"][1],
         steps.KlipConfig(truncate=(4,), zones=2, zone_sectors=2, zone_width="none",
                          weights="noise", sky_order=1)), {})),
    "klip_inject_step": ("klip_inject_step", lambda d: (
        (d["scis"][0], d["aligned"][0], d["psf"], d["klip"], d["inject"]),
        {"transmission": d["tmap"]})),
    "roll_references": ("roll_references", lambda d: (
        (d["scis"][0], d["scis"], steps.StackConfig(), steps.AlignConfig()),
        {"transmission": d["tmap"]})),
    "source_in_rolls": ("source_in_rolls", lambda d: (
        (d["tmap"] > 0.5, np.array([10.0, -5.0]), (32.0, 32.0)), {})),
    "rotated_fakes": ("rotated_fakes", lambda d: (
        (d["injs"][0].model, np.array([10.0]), (32.0, 32.0)), {})),
    "roll_subtract": ("roll_subtract", lambda d: (
        (steps.prepare_science(d["scis"][0])[0], np.asarray(d["aligned"][0].sci)[None],
         steps.roll_references(d["scis"][0], d["scis"], steps.StackConfig(),
                               steps.AlignConfig())),
        {"center": (32.0, 32.0), "min_move": 2.0, "truncations": (5,)})),
    "klip_step-rolls": ("klip_step", lambda d: (
        (d["scis"][0], d["aligned"][0], d["klip"]),
        {"rolls": steps.roll_references(d["scis"][0], d["scis"], steps.StackConfig(),
                                        steps.AlignConfig())})),
    "combine_step": ("combine_step", lambda d: ((d["subs"], steps.CombineConfig()), {})),
    "combine_injections": ("combine_injections", lambda d: ((d["subs"], d["injs"]), {})),
    "throughput_table": ("throughput_table", lambda d: (
        (d["fakes"],), {"fwhm": d["lod"], "scale": d["scale"]})),
    "add_throughput": ("add_throughput", lambda d: ((d["i2d"], d["table"]), {})),
    "hlsp_step-cube": ("hlsp_step", lambda d: ((d["subs"][0], steps.HlspConfig()), {})),
    "hlsp_step-mawet": ("hlsp_step", lambda d: (
        (d["i2d"], d["hlsp"].replace(snr_method="mawet", star_flux_method="aperture")),
        {"throughput": d["table"]})),
    "detect_step": ("detect_step", lambda d: (
        (d["i2d"], d["snr"], steps.DetectConfig(threshold=3.0, fwhm=d["lod"],
                                                star_flux=float(d["psf"].max()))),
        {"psf": d["psf"], "throughput": d["table"]})),
    "offaxis_image": ("offaxis_image", lambda d: ((d["offaxis"],), {})),
    "offaxis_flux": ("offaxis_flux", lambda d: (
        (d["offaxis"],), {"method": "aperture", "fwhm": d["lod"]})),
    "offaxis_peak": ("offaxis_peak", lambda d: ((d["offaxis"],), {})),
    "zone_width_pix": ("zone_width_pix", lambda d: ((d["scis"][0], "1lod@auto"),
                                                    {"nmodes": 10})),
    "resolve_sky_order": ("resolve_sky_order", lambda d: ((d["scis"][0], "auto"), {})),
    "estimate_err": ("estimate_err", lambda d: ((d["scis"][0].sci,), {})),
    "transmission_image": ("transmission_image", lambda d: ((d["tmap"], (32.0, 32.0)), {})),
    "product_transmission": ("product_transmission", lambda d: ((d["subs"][0],), {})),
}

#: exported functions that take no product and no array (strings, shapes, numbers)
NO_ARRAYS = {"parse_truncate", "parse_zone_width", "injection_separations"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_leaves_its_inputs_unchanged(d, case):
    name, build = CASES[case]
    args, kwargs = build(d)
    out = _run_unchanged(case, getattr(steps, name), args, kwargs)
    assert out is not None or name == "product_transmission"


def test_every_step_function_is_covered():
    exported = {n for n in steps.__all__ if inspect.isfunction(getattr(steps, n))}
    covered = {name for name, _ in CASES.values()}
    assert exported - NO_ARRAYS == covered, (exported - NO_ARRAYS) ^ covered


def test_the_inputs_exercise_what_they_should(d):
    """The cases above reach the paths they are meant to: a background subtracted, the
    dither model in align, several truncations, the transmission map carried, fakes."""
    sub, why = steps.background_step(d["sky_sci"], d["bkgs"][:2],
                                     steps.BackgroundConfig(mode="subtract"))
    assert sub.primary["BKGSUB"] is True and "subtract" in why
    s, r, left = steps.match_backgrounds(d["bkgs"], d["scis"], d["refs"])
    assert [b.path for b in s] == ["bkg0_calints.fits", "bkg1_calints.fits"]
    assert [b.path for b in r] == ["bkg2_calints.fits"] and left == []
    assert d["aligned"][0].sci_header["ALIGNMTH"] == "fourier+gain"
    assert d["subs"][0].images["KLSUB"][0].shape == (2, 3, 64, 64)
    assert steps.product_transmission(d["subs"][0]) is not None
    assert "THROUGHPUT" in d["i2d"].tables and len(d["table"]) >= 3
    assert d["stack"].sci.shape == (27, 64, 64)


def test_stack_step_consume_drops_the_list_entries_only():
    """consume=True: the same psfstack, the caller's list emptied (entries None), the
    exposures themselves unchanged."""
    rng = np.random.default_rng(6)

    def exposure(k, nint):
        sci = rng.normal(100.0, 1.0, (nint, 12, 14)).astype(np.float32)
        sci[0, 2, 3] = np.nan
        dq = np.zeros(sci.shape, np.uint32)
        dq[-1, 5, 5] = 1
        return Product(sci=sci, err=np.ones_like(sci), dq=dq, path=f"ref{k}_calints.fits")

    refs = [exposure(0, 3), exposure(1, 2)]
    kept = copy.deepcopy(refs)
    want = steps.stack_step(copy.deepcopy(refs))
    handed = list(refs)
    got = steps.stack_step(handed, consume=True)
    assert handed == [None, None]
    for name in ("sci", "err", "dq"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert getattr(got, name).dtype == getattr(want, name).dtype
    assert repr(got.tables["REFS"].as_array().tolist()) == \
        repr(want.tables["REFS"].as_array().tolist())
    for a, b in zip(refs, kept):
        np.testing.assert_array_equal(a.sci, b.sci)
        np.testing.assert_array_equal(a.dq, b.dq)
