"""Parameterisation conversions: round trips and mixture consistency."""
import pytest
import torch

from comfy_nag.guidance import Variant
from comfy_nag import predictions as P
from comfy_nag import schedules as S
from comfy_nag.guidance import combine

KINDS_VP = ["eps", "v", "x0", "score"]


def _state(schedule, s, shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    s = torch.full((shape[0],), s, dtype=torch.float64)
    _, a, sig = schedule.native(s)
    return x0, eps, a[:, None] * x0 + sig[:, None] * eps, a, sig


@pytest.mark.parametrize("schedule,kinds", [(S.DiscreteVP(), KINDS_VP), (S.EDM(), KINDS_VP),
                                             (S.Flow(), KINDS_VP + ["velocity"])])
@pytest.mark.parametrize("s", [0.05, 0.7])
def test_round_trips_and_targets(schedule, kinds, s):
    x0, eps, x, a, sig = _state(schedule, s)
    for src in kinds:
        t = P.target(src, x0, eps, a, sig)
        # the target of a kind, read back as x0, is the true x0
        assert torch.allclose(P.to_x0(t, src, x, a, sig), x0, atol=1e-10)
        for dst in kinds:
            back = P.convert(P.convert(t, src, dst, x, a, sig), dst, src, x, a, sig)
            assert torch.allclose(back, t, atol=1e-9), (src, dst)
            assert torch.allclose(P.convert(t, src, dst, x, a, sig), P.target(dst, x0, eps, a, sig), atol=1e-9)


def test_velocity_is_flow_only_identity():
    # the linear-path velocity equals alpha'*x0 + sigma'*eps with alpha = 1-s, sigma = s
    x0, eps, x, a, sig = _state(S.Flow(), 0.4)
    assert torch.allclose(P.target("velocity", x0, eps, a, sig), -x0 + eps)


@pytest.mark.parametrize("variant", [Variant.A, Variant.B])
def test_guidance_mixture_agrees_across_spaces(variant):
    sch = S.DiscreteVP()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64)
    s = torch.full((4,), 0.9, dtype=torch.float64)
    _, a, sig = sch.native(s)
    eps_branches = {k: torch.randn(4, 8, generator=g, dtype=torch.float64) for k in ("cond", "uncond", "null_cond", "null_uncond")}
    results = {}
    for kind in ("eps", "v", "x0", "score"):
        br = {k: P.convert(v, "eps", kind, x, a, sig) for k, v in eps_branches.items()}
        results[kind] = P.to_x0(combine(br, 3.0, 0.7, variant), kind, x, a, sig)
    for kind in results:
        assert torch.allclose(results[kind], results["x0"], atol=1e-9), kind


def test_unknown_parameterisation_is_a_clear_error():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown parameterisation 'epsilon'"):
        P.to_x0(x, "epsilon", x, 1.0, 1.0)
