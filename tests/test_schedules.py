import json

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


@pytest.mark.parametrize("sch", [S.DiscreteVP("linear", 2e-4, 0.03, 500, -7.0), S.DiscreteVP(),
                                 S.Flow(2.5, 1.0, -3.0, 0.01, 0.9), S.EDM(0.01, 50.0, 0.6, 5.0, -1.0, 1.1, -9.0)])
def test_every_schedule_round_trips_through_its_description(sch):
    """describe() holds every constructor argument, so a file's schedule is the schedule it was trained with:
    the same sigmas, network times, training levels and null timestep (non-default arguments included)."""
    assert set(S.Schedule.TYPES) == {"discrete_vp", "flow", "edm"}
    back = S.schedule_from_description(json.loads(json.dumps(sch.describe())))
    assert type(back) is type(sch) and back.describe() == sch.describe() and back.space is sch.space
    assert back.null_timestep == sch.null_timestep
    assert torch.equal(back.sigmas(12), sch.sigmas(12))
    s = sch.sigmas(12)[:-1]
    assert torch.equal(back.net_time(s), sch.net_time(s))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(back.training_sigmas(64, g()), sch.training_sigmas(64, g()))


def test_a_damaged_schedule_description_is_refused():
    with pytest.raises(ValueError, match="unknown schedule type 'cosine'"):
        S.schedule_from_description({"type": "cosine"})
    with pytest.raises(ValueError, match="samples in 'flow' space, not 've'"):
        S.schedule_from_description({"type": "flow", "space": "ve"})
    with pytest.raises(ValueError, match="does not fit a flow schedule"):
        S.schedule_from_description({"type": "flow", "betas": "linear"})
    assert S.schedule_from_description({"type": "flow", "shift": 3.0, "space": "flow"}).describe() == S.Flow(3.0).describe()
