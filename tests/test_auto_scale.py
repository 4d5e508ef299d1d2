"""The closed-loop NAG scale (comfy_nag/auto_scale.py): the scale at which the estimator reads the next state where a
true forward state at that level reads."""
import json
import math

import pytest
import torch

from comfy_nag import schedules
from comfy_nag.auto_scale import AutoScale, ReadingCalibration, Step, calibrate_reading, next_sigma

CAL = ReadingCalibration((0.0, 2.0, 4.0), (0.2, -0.2, 0.0), (0.5, 0.4, 0.3), 9.0)


class MeanReader(torch.nn.Module):
    """An 'estimator' whose reading (posterior-mean log-SNR) is a linear function of the state's mean."""

    def __init__(self, slope: float = 2.0, offset: float = 1.0):
        super().__init__()
        self.slope, self.offset, self.calls = slope, offset, 0

    def mean(self, x):
        self.calls += 1
        return self.offset + self.slope * x.flatten(1).mean(1)


def test_calibration_gives_the_expected_reading_of_forward_and_clean_states():
    lam = torch.tensor([-3.0, 0.0, 1.0, 3.0, 8.0, math.inf])
    want = torch.tensor([-3.0 + 0.2, 0.2, 1.0, 3.0 - 0.1, 8.0, 9.0])
    assert torch.allclose(CAL.expected(lam), want)
    assert ReadingCalibration.from_json(json.loads(json.dumps(CAL.to_json()))) == CAL
    with pytest.raises(ValueError, match="increase"):
        ReadingCalibration((1.0, 0.0), (0.0, 0.0), (1.0, 1.0), 5.0)
    with pytest.raises(ValueError, match="finite"):
        ReadingCalibration((0.0, 1.0), (0.0, math.nan), (1.0, 1.0), 5.0)
    with pytest.raises(ValueError, match="a reading calibration is"):
        ReadingCalibration.from_json({"logsnr": [0, 1]})


def test_next_sigma_is_the_next_sampled_level_per_sample():
    sig = torch.tensor([10.0, 5.0, 2.0, 0.5, 0.0])
    got = next_sigma(sig, torch.tensor([10.0, 5.0, 0.5, 3.0]))
    assert got.tolist() == [5.0, 2.0, 0.0, 2.0]


def _step(x, x0, delta, s=1.0, s1=0.5):
    B = x.shape[0]
    return Step(x, torch.full((B,), s), x0, delta, torch.full((B,), s1), torch.ones(B), schedules.Space.VE)


def test_the_scale_puts_the_next_states_reading_on_target_and_stays_in_bounds():
    """With a reading linear in the state, the rule's scale lands the DDIM next state's reading exactly on the
    calibrated target of the next level; a state already on target gets 0; NAG is never reversed; the bound holds."""
    est = MeanReader()
    rule = AutoScale(est, CAL, max_scale=4.0)
    B, D = 4, 8
    x0 = torch.zeros(B, D)
    delta = torch.ones(B, D)
    target = float(CAL.expected(schedules.Space.VE.logsnr(torch.tensor([0.5])))[0])
    # next state x0 + 0.5 (x - x0) = 0.5 x; its reading 1 + 2 * mean(0.5 x); w moves it by w * 0.5 * delta
    need = torch.tensor([0.3, 1.0, -0.5, 40.0])  # the reading gap to close, in units of one scale step
    x = ((target - 1.0 - need) / 1.0)[:, None].expand(B, D).clone()  # mean(0.5 x) * 2 = target - 1 - need
    w = rule(_step(x, x0, delta))
    assert est.calls == 1  # one batched estimator call for both probes (2B rows)
    assert torch.allclose(w[:2], need[:2], atol=1e-5)
    assert w[2] == 0 and w[3] == 4.0
    on_target = ((target - 1.0) * torch.ones(B, D))
    assert torch.allclose(rule(_step(on_target, x0, delta)), torch.zeros(B), atol=1e-6)
    flat = AutoScale(MeanReader(slope=0.0), CAL)  # the reading does not move with the scale: no guidance
    assert torch.equal(flat(_step(x, x0, delta)), torch.zeros(B))


def test_the_last_step_targets_the_reading_of_clean_data():
    est = MeanReader()
    B, D = 2, 4
    x0 = torch.full((B, D), 3.0)  # next state = x0 (s' = 0): reading 1 + 2*3 = 7; clean data reads 9
    w = AutoScale(est, CAL)(_step(torch.zeros(B, D), x0, torch.ones(B, D), s1=0.0))
    assert torch.allclose(w, torch.ones(B))  # moves the output by w * delta: reading 7 + 2w = 9


def test_calibration_is_measured_on_forward_states_of_the_schedule():
    sch = schedules.Flow()
    x0 = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))

    class Exactish(torch.nn.Module):  # reads the log-SNR from the variance of a unit-variance signal
        def mean(self, x):
            v = x.var(1).clamp(0.05, 50)
            s = (v - 1).clamp_min(0).sqrt()  # ve reading (wrong for flow on purpose: a biased estimator)
            return sch.space.logsnr(s.clamp(1e-3, 1 - 1e-3))

    cal = calibrate_reading(Exactish(), x0, sch, [0.0, 2.0], torch.Generator().manual_seed(1))
    assert cal.logsnr == (0.0, 2.0) and all(math.isfinite(b) for b in cal.bias) and all(sd > 0 for sd in cal.spread)
    assert abs(cal.bias[0]) > 0.1  # the biased reader's bias is measured, not assumed away
