"""Host-independent math of the ComfyUI patches (comfy_nag.guidance corrections, comfy_nag.patching, comfy_nag.shift_report)."""
import json
import math

import numpy as np
import pytest
import torch

from comfy_nag.guidance import Variant
from comfy_nag import classifier_guidance, guidance, patching
from comfy_nag.estimators import LevelBins, NoiseLevelEstimator
from comfy_nag.patching import WindowUnit as Unit
from comfy_nag.schedules import SamplingKind as Kind
from comfy_nag.schedules import Space
from comfy_nag.shift_report import ShiftRecording, shift_report, window_steps


def _branches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(2, 4, 5, 5, generator=g) for k in guidance.BRANCHES}


@pytest.mark.parametrize("variant", [Variant.A, Variant.B])
@pytest.mark.parametrize("cfg", [1.0, 4.5])
def test_correction_matches_combine(variant, cfg):
    o = _branches()
    names = guidance.branches(cfg, 1.7, variant)
    outs = {k: o[k] for k in names}
    want = guidance.combine(outs, cfg, 1.7, variant)
    cfg_result = o["cond"] + 0 if cfg == 1.0 else o["uncond"] + cfg * (o["cond"] - o["uncond"])
    got = cfg_result + guidance.nag_correction(o["cond"], o["null_cond"], 1.7, variant, cfg,
                                               outs.get("uncond"), outs.get("null_uncond"))
    assert torch.allclose(got, want, atol=1e-5)


def test_correction_zero_scale_is_exact_zero():
    o = _branches(1)
    assert torch.equal(guidance.nag_correction(o["cond"], o["null_cond"], 0.0), torch.zeros_like(o["cond"]))


def test_null_timestep_choice():
    Src = patching.NullTimestepSource
    assert patching.choose_null_timestep(None, Kind.DISCRETE) == (-1000.0, Src.AUTO)
    assert patching.choose_null_timestep(None, Kind.DISCRETE_FLOW, 1000.0)[0] == -1000.0
    assert patching.choose_null_timestep(None, Kind.DISCRETE_FLOW, 1.0)[0] == -1.0
    assert patching.choose_null_timestep(None, Kind.FLUX)[0] == -1.0
    assert patching.choose_null_timestep(None, Kind.EDM)[0] == pytest.approx(0.25 * math.log(1e-20))
    assert patching.choose_null_timestep(-250.0, Kind.DISCRETE) == (-250.0, Src.METADATA)
    assert patching.choose_null_timestep(-250.0, Kind.DISCRETE, manual=-7.0, source=Src.MANUAL) == (-7.0, Src.MANUAL)
    with pytest.raises(ValueError, match="no comfy-nag metadata"):
        patching.choose_null_timestep(None, Kind.DISCRETE, source=Src.METADATA)
    with pytest.raises(ValueError, match="unsupported sampling schedule"):
        patching.choose_null_timestep(None, Kind("cascade"))


def test_sigma_window():
    p2s = lambda p: 10.0 * (1 - p)  # noqa: E731
    assert patching.sigma_window(0.25, 0.75, Unit.PERCENT, p2s) == (2.5, 7.5)
    assert patching.sigma_window(5.0, 0.5, Unit.SIGMA) == (0.5, 5.0)
    # signal share SNR/(1+SNR): 0.5 is log-SNR 0 (ve sigma 1, flow sigma 0.5); 1 is clean (sigma 0)
    assert patching.sigma_window(0.5, 1.0, Unit.SIGNAL, space=Space.VE) == pytest.approx((0.0, 1.0))
    assert patching.sigma_window(0.5, 1.0, Unit.SIGNAL, space=Space.FLOW) == pytest.approx((0.0, 0.5))
    assert patching.sigma_window(0.2, 0.8, Unit.SIGNAL, space=Space.VE) == pytest.approx((0.5, 2.0))
    assert patching.sigma_window(0.2, 0.8, Unit.SIGNAL, space=Space.FLOW) == pytest.approx((1 / 3, 2 / 3))
    assert patching.sigma_window(0.0, 1.0, Unit.SIGNAL, space=Space.FLOW) == (0.0, 1.0)
    for bad in [(0.8, 0.2, Unit.PERCENT), (0.5, 2.0, Unit.SIGMA), (0.5, 1.5, Unit.SIGNAL)]:
        with pytest.raises(ValueError):
            patching.sigma_window(*bad, percent_to_sigma=p2s, space=Space.VE)
    with pytest.raises(ValueError):
        Unit("steps")
    assert patching.in_window(torch.tensor([3.0]), (2.5, 7.5)) and not patching.in_window(torch.tensor([8.0]), (2.5, 7.5))


def test_level_gradient_inside_inference_mode_matches_plain_autograd():
    torch.manual_seed(0)
    est = NoiseLevelEstimator((4, 8, 8), LevelBins(-8, 8, 12), width=16, depth=2)
    x = torch.randn(2, 4, 8, 8)
    s, c = torch.tensor([0.4, 0.6]), torch.tensor([1.0, 1.0])
    ref = classifier_guidance.level_gradient(est, x, s, Space.FLOW, c)
    with torch.inference_mode():
        got = classifier_guidance.level_gradient(est, x.clone(), s.clone(), Space.FLOW, c.clone())
        shift = classifier_guidance.classifier_correction(est, x.clone(), s.clone(), Space.FLOW, c.clone(), 2.0)
    assert torch.allclose(ref, got) and ref.abs().sum() > 0
    alpha = (1 - s).reshape(-1, 1, 1, 1)
    assert torch.allclose(shift, 2.0 * ref * (s.reshape(-1, 1, 1, 1) ** 2) / alpha, atol=1e-6)


def test_check_finite():
    patching.check_finite(torch.zeros(2), "x")
    with pytest.raises(FloatingPointError, match="NaN/Inf"):
        patching.check_finite(torch.tensor([0.0, float("nan")]), "x")


def test_shift_report_reads_forward_states_at_their_level():
    g = torch.Generator().manual_seed(0)
    rec = ShiftRecording(Space.VE, data_variance=1.0, window=(0.5, 5.0))
    sig = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    for i, s in enumerate(sig):
        x0 = torch.randn(4, 4, 16, 16, generator=g)
        rec.add(i, s, x0 + s * torch.randn(4, 4, 16, 16, generator=g))
    rep = shift_report([("fwd", rec)])
    run = rep["json"]["runs"][0]
    assert run["step"] == list(range(6)) and run["window_steps"] == [1, 4] and rep["window_steps"] == (1, 4)
    # forward states read at their level (the variance estimate is loose once s^2 << data variance)
    assert np.allclose(run["estimated_mean"][:5], run["nominal_logsnr"][:5], atol=0.3)
    json.loads(json.dumps(rep["json"], allow_nan=False))
    assert window_steps(sig, None) is None


def test_shift_report_given_estimates_and_flow_endpoint():
    rec = ShiftRecording(Space.FLOW, readout="estimator")
    rec.add(0, 1.0, torch.zeros(2, 3), torch.tensor([-5.0, -7.0]))
    rec.add(1, 0.5, torch.zeros(2, 3), torch.tensor([0.5, -0.5]))
    run = shift_report([("a", rec)])["json"]["runs"][0]
    assert run["nominal_logsnr"][0] is None and run["estimated_mean"] == [-6.0, 0.0]
    with pytest.raises(ValueError, match="recorded no steps"):
        shift_report([("empty", ShiftRecording(Space.VE))])
