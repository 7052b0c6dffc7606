"""--align-per exposure: the references registered once, on the mean of the science
integrations; a 3-D psfalign that coron-klip and coron3 run use for every integration."""

import numpy as np
from astropy.io import fits

from coron_cli import steps
from coron_cli.pipeline import run_association
from coron_cli.products import read_product
from coron_cli.steps import AlignConfig, PipelineConfig
from tests.helpers import invoke


def _inputs(folder):
    from coron_cli.asn import read_asn

    asn = read_asn(str(folder / "tiny_asn.json"))
    prod = asn.products[0]
    stack = steps.stack_step([read_product(p) for p in prod.psf])
    return read_product(prod.science[0]), stack


def test_registered_once_on_the_mean_of_the_integrations(small_asn):
    sci, stack = _inputs(small_asn.parent)
    once = steps.align_step(sci, stack, AlignConfig(per="exposure", method="fourier"))
    each = steps.align_step(sci, stack, AlignConfig(per="integration", method="fourier"))
    nint, nref = sci.sci.shape[0], stack.sci.shape[0]
    assert once.sci.shape == stack.sci.shape and once.err.shape == once.dq.shape == once.sci.shape
    assert each.sci.shape == (nint,) + stack.sci.shape
    assert once.sci_header["ALIGNPER"] == "EXPOSURE" and each.sci_header["ALIGNPER"] == \
        "INTEGRATION"
    assert once.primary["S_PSFALI"] == "COMPLETE"
    t = once.tables["SHIFTS"]
    assert len(t) == nint * nref
    dx = np.asarray(t["dx"]).reshape(nint, nref)
    assert (dx == dx[:1]).all()                   # every integration: the same shifts
    # the shift of the mean is about the mean of the per-integration shifts
    dxe = np.asarray(each.tables["SHIFTS"]["dx"]).reshape(nint, nref)
    assert np.abs(dx[0] - dxe.mean(axis=0)).max() < 0.02


def test_klip_uses_the_one_alignment_for_every_integration(small_asn):
    """KLIP with the 3-D psfalign equals KLIP with it repeated for every integration."""
    from dataclasses import replace

    sci, stack = _inputs(small_asn.parent)
    once = steps.align_step(sci, stack, AlignConfig(per="exposure"))
    nint = sci.sci.shape[0]

    def rep(a):
        return np.repeat(np.asarray(a)[None], nint, axis=0)

    four = replace(once, sci=rep(once.sci), err=rep(once.err), dq=rep(once.dq))
    conf = steps.KlipConfig(truncate=(2,))
    a, b = steps.klip_step(sci, once, conf), steps.klip_step(sci, four, conf)
    np.testing.assert_allclose(a.sci, b.sci, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(a.err, b.err, rtol=1e-5)


def test_coron3_run_and_the_chained_tools_agree(small_asn, tmp_path, runner):
    from coron_cli.cli import align, klip, stack

    folder = small_asn.parent
    out = tmp_path / "run"
    run_association(str(small_asn), str(out), PipelineConfig.from_options(
        align_per="exposure", truncate=[2]))
    ali = out / "targ1_c1001_psfalign.fits"
    with fits.open(ali) as h:
        assert h["SCI"].data.ndim == 3 and h["SCI"].header["ALIGNPER"] == "EXPOSURE"
    chain = tmp_path / "chain"
    chain.mkdir()
    r = invoke(runner, stack, ["--asn", str(small_asn), "-o", str(chain / "s_psfstack.fits")])
    assert r.exit_code == 0, r.output
    r = invoke(runner, align, [str(folder / "targ1_calints.fits"), str(chain / "s_psfstack.fits"),
                               "--align-per", "exposure", "-o", str(chain / "a_psfalign.fits")])
    assert r.exit_code == 0, r.output
    r = invoke(runner, klip, [str(folder / "targ1_calints.fits"), str(chain / "a_psfalign.fits"),
                              "-k", "2", "-o", str(chain / "a_psfsub.fits"),
                              "--roll-ref", str(folder / "targ2_calints.fits")])
    assert r.exit_code == 0, r.output
    with fits.open(out / "targ1_c1001_psfsub.fits") as a, \
            fits.open(chain / "a_psfsub.fits") as b:
        np.testing.assert_allclose(a["SCI"].data, b["SCI"].data, rtol=1e-5, atol=1e-5)


def test_the_stack_is_repaired_once_for_every_science_exposure(small_asn, monkeypatch):
    """The pipeline aligns one stack onto each science exposure: its bad pixels are repaired
    once (the result read-only); a stack whose SCI or DQ array was replaced, or other bits,
    is repaired again."""
    from dataclasses import replace

    from coron_cli import core
    from coron_cli.steps import stack as stack_mod

    sci, stack = _inputs(small_asn.parent)
    calls = []
    real = core.repair_bad_pixels

    def counting(images, *a, **k):
        if images.shape == stack.sci.shape:      # a stack's repair, not a science one's
            calls.append(1)
        return real(images, *a, **k)

    monkeypatch.setattr(stack_mod.core, "repair_bad_pixels", counting)
    first = stack_mod._repair_stack(stack, 1)
    assert stack_mod._repair_stack(stack, 1) is first and len(calls) == 1
    assert not first.flags.writeable
    a = steps.align_step(sci, stack, AlignConfig())
    b = steps.align_step(sci, stack, AlignConfig())
    assert len(calls) == 1 and np.array_equal(a.sci, b.sci)
    stack_mod._repair_stack(stack, 3)
    assert len(calls) == 2
    other = replace(stack, sci=stack.sci.copy())
    assert stack_mod._repair_stack(other, 1) is not first and len(calls) == 3


def test_a_star_moving_within_the_exposure_is_warned_about(tmp_path, caplog):
    """Registered once per exposure, an exposure whose star moves between integrations
    (0.2 px from the median here) gets one warning naming it and ALMOTION; a still one gets neither."""
    import logging

    from astropy.io import fits as pyfits

    from coron_cli.products import Product
    from tests.helpers import gaussian_psf

    rng = np.random.default_rng(4)
    shape = (40, 40)

    def cube(moves):
        return np.stack([900.0 * gaussian_psf(shape, 19.5 + m, 19.5)
                         + rng.normal(0, 0.5, shape) for m in moves]).astype(np.float32)

    h = pyfits.Header()
    h["STARCENX"], h["STARCENY"] = 19.5, 19.5
    refs = cube([0.1, -0.1, 0.05, 0.0])
    stack = Product(sci=refs, err=np.ones_like(refs), dq=np.zeros(refs.shape, np.uint32),
                    primary=pyfits.Header(), sci_header=h.copy(), path="stack")
    for name, moves, warned in (("still", [0, 0.005, -0.005, 0], False),
                                ("moving", [-0.2, -0.05, 0.05, 0.2], True)):
        c = cube(moves)
        sci = Product(sci=c, err=np.full_like(c, 0.5), dq=np.zeros(c.shape, np.uint32),
                      primary=pyfits.Header(), sci_header=h.copy(), path=f"{name}_calints.fits")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="coron"):
            out = steps.align_step(sci, stack, AlignConfig(per="exposure", method="fourier"))
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                    and "moves by" in r.getMessage()]
        assert len(warnings) == (1 if warned else 0), name
        assert (out.sci_header["ALMOTION"] > 0.1) == warned, name
        if warned:
            assert f"{name}_calints.fits" in warnings[0].getMessage()


def test_keep_repaired_stack_aligns_the_same(small_asn):
    """keep_repaired (coron3 run, once the psfstack is written) replaces the stack's SCI by
    the repaired copy the align step uses and its DQ by the flagged pixels: the same
    psfalign; other bad bits refused."""
    import copy

    import pytest

    from coron_cli.steps.stack import keep_repaired

    sci, stack = _inputs(small_asn.parent)
    want = steps.align_step(sci, copy.deepcopy(stack), AlignConfig())
    raw = stack.sci
    kept = keep_repaired(stack, AlignConfig().bad_bits)
    assert kept is stack and stack.sci is not raw and not stack.sci.flags.writeable
    assert isinstance(stack.dq, tuple) and stack.dq[0] == raw.shape   # its flagged pixels
    got = steps.align_step(sci, stack, AlignConfig())
    for name in ("sci", "err", "dq"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    with pytest.raises(ValueError, match="cannot be repaired"):
        steps.align_step(sci, stack, AlignConfig(bad_bits=AlignConfig().bad_bits | 4))


def test_release_freed_memory_is_harmless():
    """coron3 run gives the heap's free pages back between steps (glibc malloc_trim, or
    nothing): callable any number of times, arrays untouched."""
    from coron_cli.pipeline import release_freed_memory

    keep = np.arange(1000.0)
    freed = [np.ones(2 ** 18) for _ in range(20)]
    del freed
    release_freed_memory()
    release_freed_memory()
    assert keep.sum() == 499500.0
