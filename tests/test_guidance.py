"""Guidance math and the batched guided denoiser."""
import json

import pytest
import torch

from comfy_nag.guidance import Variant
from comfy_nag import classifier_guidance, guidance, models, readout, scale_profiles, schedules
from comfy_nag.denoiser import Denoiser
from comfy_nag.guidance import Guidance, branches, combine, eps_scaled_x0


def _net(dim=6, classes=3, seed=0, sch=None):
    torch.manual_seed(seed)
    sch = sch or schedules.Flow()
    net = models.MLPDenoiser(dim, classes, hidden=32, depth=2, null=models.NullCondition(timestep=sch.null_timestep))
    for p in net.parameters():  # make every branch matter (zero-init output would hide bugs)
        torch.nn.init.normal_(p, std=0.3)
    return net.eval(), sch


def test_branch_plan_skips_unused_evaluations():
    assert branches(1.0, 0.0) == ("cond",)
    assert branches(1.0, 0.5) == ("cond", "null_cond")
    assert branches(4.0, 0.0) == ("cond", "uncond")
    assert branches(4.0, 0.5, Variant.A) == ("cond", "uncond", "null_cond")
    assert branches(4.0, 0.5, Variant.B) == ("cond", "uncond", "null_cond", "null_uncond")


def test_variants_formulas():
    c, u, n, nu = (torch.tensor([v]) for v in (1.0, 2.0, 5.0, 7.0))
    outs = {"cond": c, "uncond": u, "null_cond": n, "null_uncond": nu}
    assert combine(outs, 3.0, 0.5, Variant.A).item() == pytest.approx(2 + 3 * (1 - 2) + 0.5 * (1 - 5))
    cp, up = 1 + 0.5 * (1 - 5), 2 + 0.5 * (2 - 7)
    assert combine(outs, 3.0, 0.5, Variant.B).item() == pytest.approx(up + 3 * (cp - up))
    assert combine({"cond": c, "null_cond": n}, 1.0, 2.0).item() == pytest.approx(1 + 2 * (1 - 5))


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_scale_zero_is_bit_identical_and_costs_nothing(cfg):
    net, sch = _net()
    x, s, y = torch.randn(5, 6), torch.full((5,), 0.6), torch.tensor([0, 1, 2, 0, 1])
    plain = Denoiser(net, sch, "velocity", Guidance(cfg_scale=cfg))
    zero = Denoiser(net, sch, "velocity", Guidance(cfg_scale=cfg, nag_scale=0.0, cg_scale=0.0, eps_scale=1.0))
    assert torch.equal(plain(x, s, y), zero(x, s, y))
    assert zero.evaluations == plain.evaluations == (1 if cfg == 1.0 else 2)


def test_null_branch_feeds_the_null_timestep():
    net, sch = _net()
    seen = []
    orig = net.forward
    net.forward = lambda x, t, y=None, drop_t=None: seen.append((t.clone(), drop_t.clone())) or orig(x, t, y, drop_t)
    Denoiser(net, sch, "velocity", Guidance(nag_scale=1.0))(torch.randn(3, 6), torch.full((3,), 0.5), torch.tensor([0, 1, 2]))
    (t, drop), = seen  # one batched forward
    assert drop.tolist() == [False] * 3 + [True] * 3 and torch.allclose(t, torch.full((6,), 500.0))


@pytest.mark.parametrize("variant", [Variant.A, Variant.B])
def test_batched_equals_unbatched(variant):
    net, sch = _net()
    x, s, y = torch.randn(4, 6), torch.full((4,), 0.3), torch.tensor([0, 1, 2, 1])
    g = Guidance(cfg_scale=2.0, nag_scale=0.8, variant=variant)
    a = Denoiser(net, sch, "velocity", g, batched=True)(x, s, y)
    b = Denoiser(net, sch, "velocity", g, batched=False)(x, s, y)
    assert torch.allclose(a, b, atol=1e-5)


def test_nag_changes_output_and_window_gates_it():
    net, sch = _net()
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 1])
    s = torch.tensor([0.9, 0.9, 0.2, 0.2])
    base = Denoiser(net, sch, "velocity")(x, s, y)
    d = Denoiser(net, sch, "velocity", Guidance(nag_scale=1.0, nag_window=(0.0, 0.5)))
    out = d(x, s, y)
    assert torch.equal(out[:2], base[:2]) and not torch.allclose(out[2:], base[2:])
    d(x, torch.full((4,), 0.9), y)  # entirely outside the window: no null branch evaluated
    assert d.evaluations == 2 + 1


def test_eps_scaling_matches_comfyui_in_ve_space_and_is_identity_at_one():
    x, x0, s = torch.randn(3, 4), torch.randn(3, 4), torch.full((3,), 2.0)
    assert torch.allclose(eps_scaled_x0(x0, x, s, schedules.Space.VE, 1.01), x - (x - x0) / 1.01, atol=1e-6)
    assert eps_scaled_x0(x0, x, s, schedules.Space.VE, 1.0) is x0


def test_bad_inputs_raise_clear_errors():
    net, sch = _net()
    d = Denoiser(net, sch, "velocity")
    with pytest.raises(ValueError, match="does not match the model's input"):
        d(torch.randn(2, 5), torch.full((2,), 0.5))
    with pytest.raises(FloatingPointError, match="NaN"):
        d(torch.full((2, 6), float("nan")), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="variant must be guidance.Variant"):
        Guidance(variant="C")
    with pytest.raises(ValueError, match="needs a noise-level estimator"):
        Denoiser(net, sch, "velocity", Guidance(cg_scale=1.0))
    with pytest.raises(ValueError, match="unknown parameterisation"):
        Denoiser(net, sch, "flow")


def test_null_branch_readout_is_the_bayes_identity_for_an_exact_pair():
    """Where the classifier-free term *is* the estimator's gradient as an x0 change, the readout reads
    cosine 1 and ratio 1; a random term reads about 0; a doubled one ratio 2."""
    from comfy_nag.estimators import LevelBins, NoiseLevelEstimator

    torch.manual_seed(0)
    est = NoiseLevelEstimator((6,), LevelBins(-6.0, 6.0, 12), width=16, depth=1)
    x, s = torch.randn(64, 6), torch.full((64,), 0.7)
    c = torch.ones(64)
    cg = classifier_guidance.score_to_x0_shift(classifier_guidance.level_gradient(est, x, s, schedules.Space.VE, c), x, s, schedules.Space.VE)
    x0c = torch.randn(64, 6)
    cos, ratio = readout.null_branch_readout(x0c, x0c - cg, est, x, s, schedules.Space.VE, c)
    assert torch.allclose(cos, torch.ones(64, dtype=torch.float64), atol=1e-5) and torch.allclose(ratio, torch.ones(64, dtype=torch.float64), atol=1e-5)
    cos2, ratio2 = readout.null_branch_readout(x0c, x0c - 2 * cg, est, x, s, schedules.Space.VE, c)
    assert torch.allclose(ratio2, 2 * torch.ones(64, dtype=torch.float64), atol=1e-5)
    cos3, _ = readout.null_branch_readout(x0c, torch.randn(64, 6), est, x, s, schedules.Space.VE, c)
    assert abs(float(cos3.mean())) < 0.2


def test_scale_profile_interpolates_in_logsnr_and_is_flat_beyond_its_knots():
    p = scale_profiles.ScaleProfile((0.0, 1.0, 3.0), (1.0, 0.5, 2.0))
    lam = torch.tensor([-5.0, 0.0, 0.5, 1.0, 2.0, 3.0, float("inf"), -float("inf")])
    assert p(lam).tolist() == pytest.approx([1.0, 1.0, 0.75, 0.5, 1.25, 2.0, 2.0, 1.0])
    assert scale_profiles.ScaleProfile((2.0,), (0.3,))(torch.tensor([0.0, 9.0])).tolist() == pytest.approx([0.3, 0.3])
    for knots, values, what in (((0.0, 1.0), (1.0,), "as many values"), ((1.0, 0.0), (1.0, 1.0), "increase"),
                                ((0.0, 1.0), (1.0, float("nan")), "finite")):
        with pytest.raises(ValueError, match=what):
            scale_profiles.ScaleProfile(knots, values)


def test_scale_fit_recovers_each_levels_projection_and_round_trips_as_metadata():
    """Per knot, the least-squares scale of the states nearest it; states far outside the knots are left
    out; negative scales are clipped to 0 in the profile; the profile survives JSON."""
    from comfy_nag import metadata

    g = torch.Generator().manual_seed(0)
    fit = scale_profiles.ScaleFit((0.0, 1.0, 2.0))
    for lam, k in ((0.1, 0.4), (0.9, -0.3), (5.0, 9.0)):  # knot 0, knot 1, outside (left out)
        a, other = torch.randn(32, 5, generator=g), torch.randn(32, 5, generator=g)
        other = other - (other * a).sum() / (a * a).sum() * a  # orthogonal to a over the batch
        fit.add(a, k * a + other, torch.full((32,), lam))
    assert fit.values()[:2] == pytest.approx([0.4, -0.3], rel=1e-6) and fit.values()[2] is None
    prof = fit.profile()
    assert prof.logsnr == (0.0, 1.0) and prof.value == pytest.approx((0.4, 0.0))
    meta = {"nag.scale_profile": json.dumps(prof.to_json())}
    assert metadata.scale_profile(meta) == prof and metadata.scale_profile({}) is None
    with pytest.raises(ValueError, match="scale_profile is damaged.*re-export"):
        metadata.scale_profile({"nag.scale_profile": '{"logsnr": [1, 0], "value": [1, 1]}'})
    with pytest.raises(ValueError, match="nothing to fit"):
        scale_profiles.ScaleFit((0.0,)).profile()


def test_a_scale_profile_multiplies_the_nag_scale_per_level():
    """A profile of value v equals the plain scale times v, follows each sample's own level, and at
    scale 0 changes nothing and costs nothing."""
    net, sch = _net()
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 1])
    s = torch.tensor([0.2, 0.2, 0.6, 0.6])
    lam = sch.space.logsnr(s)
    flat = scale_profiles.ScaleProfile((0.0,), (0.5,))
    a = Denoiser(net, sch, "velocity", Guidance(nag_scale=1.0, rule=flat))(x, s, y)
    b = Denoiser(net, sch, "velocity", Guidance(nag_scale=0.5))(x, s, y)
    assert torch.allclose(a, b, atol=1e-6)
    step = scale_profiles.ScaleProfile((float(lam[2]), float(lam[0])), (0.0, 2.0))  # 0 at s=0.6, 2 at s=0.2
    out = Denoiser(net, sch, "velocity", Guidance(nag_scale=1.0, rule=step))(x, s, y)
    two = Denoiser(net, sch, "velocity", Guidance(nag_scale=2.0))(x, s, y)
    plain = Denoiser(net, sch, "velocity")(x, s, y)
    assert torch.allclose(out[:2], two[:2], atol=1e-6) and torch.allclose(out[2:], plain[2:], atol=1e-6)
    zero = Denoiser(net, sch, "velocity", Guidance(nag_scale=0.0, rule=step))
    assert torch.equal(zero(x, s, y), plain) and zero.evaluations == 1
