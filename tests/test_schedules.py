import pytest
import torch

from comfy_nag import families
from comfy_nag import schedules as S


@pytest.mark.parametrize("sch", [S.DiscreteVP(), S.DiscreteVP("linear"), S.Flow(), S.Flow(shift=3.0), S.EDM()])
def test_logsnr_round_trip_and_monotone(sch):
    s = sch.sigmas(20)[:-1]
    if sch.space is S.Space.FLOW:
        s = s.clamp(1e-3, 1 - 1e-3)
    lam = sch.logsnr(s)
    assert torch.all(lam[1:] > lam[:-1]), "log-SNR must increase as sampling proceeds"
    assert torch.allclose(sch.sigma_from_logsnr(lam), s, rtol=1e-4)


@pytest.mark.parametrize("sch", [S.DiscreteVP(), S.Flow(), S.EDM()])
def test_native_space_is_consistent_with_logsnr(sch):
    s = torch.tensor([0.1, 0.5, 0.9])
    c, a, sig = sch.native(s)
    # log-SNR is the same in sampling and network space
    assert torch.allclose(2 * torch.log(a / sig), sch.logsnr(s), atol=1e-5)
    # c maps the sampling state x = alpha_space*x0 + s*eps onto a*x0 + sig*eps
    assert torch.allclose(c * sch.alpha(s), a, atol=1e-6) and torch.allclose(c * s, sig, atol=1e-6)


def test_vp_net_time_inverts_the_table():
    sch = S.DiscreteVP()
    t = torch.tensor([0.0, 1.0, 10.5, 500.0, 998.25, 999.0])
    assert torch.allclose(sch.net_time(sch.sigma_at(t)), t, atol=1e-3)
    sig = sch.sigmas(10)
    assert sig[0] == pytest.approx(sch.sigma_max) and sig[-1] == 0 and sig[-2] == pytest.approx(sch.sigma_min)


def test_null_time_is_outside_every_real_network_time():
    for sch in (S.DiscreteVP(), S.Flow(), S.Flow(multiplier=1.0), S.EDM()):
        real = sch.net_time(sch.sigmas(50)[:-1].clamp_min(1e-6))
        assert sch.null_timestep <= float(real.min()) - 0.99


def test_flow_null_time_is_minus_one_flow_unit():
    assert S.Flow().null_timestep == -1000.0 and S.Flow(multiplier=1.0).null_timestep == -1.0
    assert S.DiscreteVP().null_timestep == -1000.0


def test_description_round_trip_and_unknown_family():
    for sch in (S.DiscreteVP("linear"), S.Flow(shift=3.0), S.EDM()):
        again = S.schedule_from_description(sch.describe())
        assert torch.allclose(again.sigmas(7), sch.sigmas(7))
    with pytest.raises(ValueError, match="unknown model family 'sd9'"):
        families.family("sd9")
    with pytest.raises(ValueError, match="unknown schedule type"):
        S.schedule_from_description({"type": "cosine"})


def test_last_step_jump_is_largest_for_dit_schedules():
    """The cause of DiT's Heun late-shift readout (studies/last_step.py, docs/bench.md): uniform-timestep
    discrete VP schedules end with a large log-SNR jump to the table's minimum sigma; flow schedules do not."""
    from studies.last_step import jumps

    j = {r["family"]: r for r in jumps(10)}
    assert j["dit"]["jump"] > j["sd1"]["jump"] > 3 * j["sit"]["jump"] > 0
    assert j["dit"]["last"] > 9 and j["dit"]["second_last"] < 2.5
