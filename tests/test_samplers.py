"""Every sampler, driven by the exact denoiser, reproduces the true distribution."""
import pytest
import torch

from comfy_nag import samplers, schedules
from studies import testbed

GMM = testbed.GaussianMixture.make(dim=2, seed=0)
REF, YREF = GMM.sample(1500, generator=torch.Generator().manual_seed(1))


def _run(name, sch, steps=30):
    y = GMM.sample(1500, generator=torch.Generator().manual_seed(2))[1]
    x = samplers.initial_noise((1500, 2), sch, torch.Generator().manual_seed(3))
    out = samplers.get_sampler(name, sch.space, torch.Generator().manual_seed(4))(
        testbed.exact_denoiser(GMM, sch.space), x, sch.sigmas(steps), extra_args={"y": y})
    return testbed.class_energy_distance(out, y, REF, YREF)


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
@pytest.mark.parametrize("sch", [schedules.Flow(), schedules.DiscreteVP()], ids=["flow", "vp"])
def test_exact_denoiser_reaches_the_data(name, sch):
    # two independent true sample sets are ~0.01 apart in this metric
    assert _run(name, sch) < 0.025


def test_callback_sees_every_step_and_final_step_returns_x0():
    sch = schedules.Flow()
    seen = []
    x = torch.randn(8, 2)
    den = testbed.exact_denoiser(GMM, schedules.Space.FLOW)
    out = samplers.sample_euler(den, x, sch.sigmas(5), callback=lambda d: seen.append((d["i"], float(d["sigma"]), d["denoised"])))
    assert [i for i, _, _ in seen] == list(range(5))
    assert [s for _, s, _ in seen] == pytest.approx(sch.sigmas(5)[:-1].tolist())
    assert torch.equal(out, seen[-1][2])


def test_time_shift_level_fn_is_identity_on_forward_samples_of_known_variance():
    from comfy_nag.samplers import time_shift_level_fn
    fn = time_shift_level_fn(schedules.Space.VE, data_var=1.0, window=10.0)
    x0 = torch.randn(64, 4096)
    s = torch.full((64,), 0.5)
    got = fn(x0 + 0.5 * torch.randn_like(x0), s, 5, 10)
    # per-sample variance over 4096 dims has ~3% sampling error in sigma
    assert abs(float(got.mean()) - 0.5) < 0.01 and float((got - s).abs().max()) < 0.12
    assert torch.equal(time_shift_level_fn(schedules.Space.VE, 1.0, start_frac=0.6)(x0, s, 5, 10), s)


def test_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        samplers.get_sampler("dpm")
