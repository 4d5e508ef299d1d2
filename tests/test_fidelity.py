"""The fidelity measurement (studies/terms.py) and the fidelity study (studies/fidelity.py, its recipes and report)
against known answers."""
import torch

from comfy_nag import estimators, models
from comfy_nag.denoiser import Denoiser
from comfy_nag.losses import denoising_loss, training_batch
from comfy_nag.predictions import target
from comfy_nag.families import family
from dataclasses import asdict as dataclasses_asdict

from studies import fidelity, fidelity_recipes, fidelity_report, terms, testbed


def _gmm():
    return testbed.GaussianMixture.make(dim=4, num_classes=2, per_class=2, rank=2, seed=3)


def test_agreement_reads_direction_and_size():
    v = torch.randn(64, 5)
    same = terms.agreement(2 * v, v)
    assert abs(same["cos"] - 1) < 1e-9 and abs(same["norm_ratio"] - 2) < 1e-9
    assert abs(terms.agreement(-v, v)["cos"] + 1) < 1e-9


def test_exact_level_gradient_matches_finite_differences():
    gmm, fam = _gmm(), family("sd1")
    sch = fam.schedule
    bins = estimators.LevelBins(-6.0, 8.0, 14)
    s = sch.sigma_from_logsnr(torch.full((3,), 1.5))
    x = gmm.sample(3, generator=torch.Generator().manual_seed(0))[0] + s[:, None] * torch.randn(3, 4)
    grad = testbed.exact_level_gradient(gmm, x.double(), s, sch, bins)
    grid = bins.lo + bins.width * (torch.arange(bins.k * 4, dtype=torch.float64) + 0.5) / 4

    def log_post(z):
        c, a, sg = sch.native(s)
        zn = c.double()[:, None] * z
        lps = [gmm.log_prob(zn, *sch.native(sch.sigma_from_logsnr(lam.reshape(1).float()))[1:]) for lam in grid]
        return gmm.log_prob(zn, a, sg) - torch.logsumexp(torch.stack(lps, 1), 1)

    h, num = 1e-5, torch.zeros(3, 4, dtype=torch.float64)
    for d in range(4):
        e = torch.zeros(4, dtype=torch.float64)
        e[d] = h
        num[:, d] = (log_post(x.double() + e) - log_post(x.double() - e)) / (2 * h)
    assert torch.allclose(grad, num, rtol=1e-4, atol=1e-6)


def test_marginal_of_the_exact_conditional_branch_is_the_exact_null_branch():
    """``exact_null_x0`` with ``branch`` = the exact conditional prediction equals its own default."""
    gmm, fam = _gmm(), family("sit")
    sch = fam.schedule
    x0, y = gmm.sample(16, generator=torch.Generator().manual_seed(1))
    s = torch.full((16,), 0.4)
    x = (1 - s[:, None]) * x0 + s[:, None] * torch.randn(16, 4)

    def exact_branch(xn, sl):
        _, a, sg = (v.double() for v in sch.native(sl))
        ex0 = gmm.posterior_x0(xn, a, sg, y)[0]
        return target(fam.prediction, ex0, (xn.double() - a * ex0) / sg, a, sg)

    levels = testbed.training_levels(sch, 32)
    ref = testbed.exact_null_x0(gmm, x, s, sch, fam.prediction, y, levels=levels)
    got = testbed.exact_null_x0(gmm, x, s, sch, fam.prediction, y, levels=levels, branch=exact_branch)
    assert torch.allclose(got, ref, atol=1e-5)


def _recipe_loss(net, x0, y, fam, rate, seed, recipe):
    batch = training_batch(net, x0, y, fam.schedule, fam.prediction, noise_condition_dropout_rate=rate,
                           generator=torch.Generator().manual_seed(seed))
    return recipe.loss(net, batch)


def test_null_target_replaces_only_the_dropped_rows_targets():
    fam, gmm = family("sit"), _gmm()
    net = models.MLPDenoiser(4, 2, 16, 1, null=models.NullCondition(timestep=fam.schedule.null_timestep))
    x0, y = gmm.sample(32, generator=torch.Generator().manual_seed(2))
    zero = lambda xn, s, yy: torch.zeros_like(xn)  # noqa: E731
    kept = denoising_loss(net, x0, y, fam.schedule, fam.prediction, generator=torch.Generator().manual_seed(5))[0]
    same = _recipe_loss(net, x0, y, fam, 0.0, 5, testbed.LossRecipe(zero))[0]
    assert torch.equal(kept, same)  # no dropped row: the target is untouched
    loss, per, drop = _recipe_loss(net, x0, y, fam, 1.0, 5, testbed.LossRecipe(zero))
    assert bool(drop.all())
    g = torch.Generator().manual_seed(5)  # replay the same draws to get the network's output
    s = fam.schedule.training_sigmas(32, g)
    eps = torch.randn(x0.shape, generator=g)
    xn = fam.schedule.noised(x0, s, eps)[0]
    pred = net(xn, fam.schedule.net_time(s), y, torch.ones(32, dtype=torch.bool))
    assert torch.allclose(per, pred.pow(2).mean(1).detach(), atol=1e-6)


def test_exact_term_nag_adds_the_exact_difference_inside_its_window_only():
    gmm, fam = _gmm(), family("sd1")
    net = models.MLPDenoiser(4, 2, 16, 1, null=models.NullCondition(timestep=fam.schedule.null_timestep)).eval()
    x = torch.randn(8, 4) * 3
    s = torch.full((8,), 2.0)
    y = torch.randint(0, 2, (8,))
    with torch.no_grad():
        den = Denoiser(net, fam.schedule, fam.prediction)
        plain = den(x, s, y)
        guided = testbed.ExactTermNAG(den, gmm, fam, 0.0, (0.0, 10.0))(x, s, y)
        moved = testbed.ExactTermNAG(den, gmm, fam, 1.0, (0.0, 10.0))(x, s, y)
        outside = testbed.ExactTermNAG(den, gmm, fam, 1.0, (0.0, 1.0))(x, s, y)
    assert torch.equal(plain, guided) and torch.equal(plain, outside)  # scale 0, or outside the window
    exact = testbed.exact_term(gmm, x, s, fam.schedule, fam.prediction, y)
    assert torch.allclose(moved - plain, exact.float(), atol=1e-5)


def test_cond_target_and_null_weight_act_on_their_own_rows():
    fam, gmm = family("sit"), _gmm()
    net = models.MLPDenoiser(4, 2, 16, 1, null=models.NullCondition(timestep=fam.schedule.null_timestep))
    x0, y = gmm.sample(64, generator=torch.Generator().manual_seed(2))
    zero = lambda xn, s, yy: torch.zeros_like(xn)  # noqa: E731
    plain, per, drop = denoising_loss(net, x0, y, fam.schedule, fam.prediction, noise_condition_dropout_rate=0.5,
                                      generator=torch.Generator().manual_seed(5))
    assert 0 < int(drop.sum()) < 64
    # a cond target changes only the kept rows' losses, a null target only the dropped rows'
    _, per_c, _ = _recipe_loss(net, x0, y, fam, 0.5, 5, testbed.LossRecipe(cond_target=zero))
    _, per_n, _ = _recipe_loss(net, x0, y, fam, 0.5, 5, testbed.LossRecipe(null_target=zero))
    assert torch.equal(per_c[drop], per[drop]) and not torch.equal(per_c[~drop], per[~drop])
    assert torch.equal(per_n[~drop], per[~drop]) and not torch.equal(per_n[drop], per[drop])
    # null_weight is a weighted mean over rows
    w3, per3, _ = _recipe_loss(net, x0, y, fam, 0.5, 5, testbed.LossRecipe(null_weight=3.0))
    want = (per[~drop].sum() + 3 * per[drop].sum()) / (int((~drop).sum()) + 3 * int(drop.sum()))
    assert torch.equal(per3, per) and torch.isclose(w3, want, rtol=1e-6)


def test_recipes_change_one_factor_each():
    names = [r.name for r in fidelity_recipes.RECIPES]
    assert len(set(names)) == len(names) and names[0] == "base"
    for r in fidelity_recipes.RECIPES[1:]:
        assert r.factor() and "," not in r.factor(), r  # exactly one setting differs from the base
    learned = fidelity_recipes.recipe_net(models.MLPDenoiser(4, 2, 16, 1), fidelity_recipes.Recipe("x", null_mode="learned"))
    assert learned.cond.null_emb is not None and float(learned.cond.null_emb.detach().abs().sum()) == 0.0


def test_study_runs_end_to_end_and_reuses_finished_recipes(tmp_path):
    cfg = fidelity_recipes.Config(quick=True, seeds=(0,), pretrain_steps=40, n_states=16, samplers=("euler",), steps=(4,),
                          n_samples=40, track=(0.0, 0.3), recipes=("base", "control", "length_30%"), lams=(0.0, 4.0),
                          stock_estimators=(30,))
    import studies.toolkit as toolkit

    small = lambda quick, seed: toolkit.Config(quick=True, seed=seed, dim=4, families=("sit",), estimator_steps=20,  # noqa: E731
                                               n_samples=40, n_reference=40, bins=8, hidden=16, depth=1)
    from studies import harness
    orig = toolkit.Config.make
    toolkit.Config.make = staticmethod(small)
    try:
        res = fidelity.study(cfg, log=lambda *a: None, progress=False, stages=harness.Stages(tmp_path, lambda *a: None),
                             families=("sit",))
        again = fidelity.study(cfg, log=lambda *a: None, progress=False, stages=harness.Stages(tmp_path, lambda *a: None),
                               families=("sit",))
    finally:
        toolkit.Config.make = orig
    assert res["fidelity"] == again["fidelity"] and res["sampling"] == again["sampling"]  # reused, not re-run
    assert res["stock"] == again["stock"]
    (st,) = res["stock"]  # the pretrained network as it is, the null branch from the (one, here) estimator
    assert st["estimator_steps"] == cfg.stock_estimators[0]
    assert {(r["sampler"], r["steps"], r["method"]) for r in st["rows"]} == {
        ("euler", n, m) for n in (4, 50) for m in fidelity.STOCK_METHODS}
    assert {r["term"] for r in st["fidelity"]} == set(fidelity_recipes.STOCK_TERMS)
    (row,) = fidelity_report.stock_table(res)
    assert row["n"] == 2 and 0 <= row["both"] <= 2 and -1 <= row["cos_nag_cf_est"] <= 1
    assert {r["recipe"] for r in res["fidelity"]} == {"base", "control", "length_30%"}
    assert {r["term"] for r in res["fidelity"] if r["recipe"] == "base"} == set(terms.TERMS)
    assert {r["step"] for r in res["track"]} == {0, 12}
    rows = fidelity_report.summary(res)
    assert len(rows) == 3 and all(-1 <= r["cos_late"] <= 1 for r in rows)
    assert [r["quality_w0_vs_control"] for r in rows if r["recipe"] == "control"] == [0.0]
    res["meta"] = {"config": dataclasses_asdict(cfg), "seconds": 1.0}
    report = fidelity_report.write_report(tmp_path, res)
    assert "smoke test, not findings" in report.splitlines()[2] and "| 0 | sit | length_30% |" in report
    assert "## The pretrained network as it is" in report


def test_results_recipe_table_matches_the_committed_fidelity_run(results_block):
    """docs/results.md's recipe table is regenerated from docs/fidelity/fidelity.json, not typed by hand."""
    import json
    from pathlib import Path

    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/fidelity/fidelity.json").read_text())
    assert results_block("fidelity") == fidelity_report.headline(committed), (
        "docs/results.md's recipe table differs from docs/fidelity/fidelity.json; "
        "paste studies.fidelity_report.headline(...) of it between the markers in docs/results.md")
