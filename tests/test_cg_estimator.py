"""The estimator-recipe study: one factor per variant, and a report that reads its own rows."""
import dataclasses

import pytest

from studies import cg_estimator as ce

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_variant_changes_one_setting_of_the_base():
    assert ce.BASE.changed() == "the demo's estimator"
    names = [v.name for v in ce.VARIANTS]
    assert len(set(names)) == len(names) and names[0] == "base"
    for v in ce.VARIANTS[1:]:
        diff = [k for k in ("width", "depth", "steps", "bins", "target_width", "data") if getattr(v, k) != getattr(ce.BASE, k)]
        assert len(diff) == 1, (v.name, diff)


def test_tiny_study_measures_fidelity_and_sampling_against_the_exact_term(monkeypatch):
    """End to end on a tiny grid: fidelity rows per level, NAG-CG next to the exact score term, a summary."""
    from studies import toolkit

    tiny = toolkit.Config(quick=True, families=("sd1",), train_steps=120, estimator_steps=80, n_samples=120,
                          n_reference=120, bins=12, ablations=False)
    monkeypatch.setattr(toolkit.Config, "make", classmethod(lambda cls, quick, seed=0: dataclasses.replace(tiny, seed=seed)))
    monkeypatch.setattr(ce, "VARIANTS", (dataclasses.replace(ce.BASE, steps=60, bins=12),
                                         ce.Variant("soft_targets", steps=60, bins=12, target_width=0.5),
                                         ce.Variant("self_generated", steps=60, bins=12, data="generated")))
    monkeypatch.setattr(ce, "GENERATED", 256)
    cfg = ce.Config(quick=True, seeds=(0,), variants=("base", "soft_targets", "self_generated"), n_states=32, steps=6,
                    n_samples=120, grid=(1.0,))
    res = ce.study(cfg, log=lambda *a: None, progress=False)
    fid = {(r["variant"], r["term"], r["offset"], r["lam"]) for r in res["fidelity"]}
    assert {(v, "nag_cg", 0.0, lam) for v in cfg.variants for lam in ce.LAMS} <= fid
    assert {(v, t, o, lam) for v in cfg.variants for t in ce.EST_TERMS for o in (0.0, 0.5) for lam in ce.LAMS} <= fid
    assert {(t, o) for v, t, o, _ in fid if v == "ceiling"} == {(t, o) for t in ("nag_cf_est_exact", "marginal_null")
                                                                 for o in (0.0, 0.5)}
    assert {(r["variant"], r["method"]) for r in res["sampling"]} == {(v, m) for v in cfg.variants
                                                                      for m in ("nag_cg", "exact_score")}
    rows = ce.summary(res)
    assert [r["variant"] for r in rows] == ["base", "soft_targets", "self_generated"]
    assert all(-1 <= r["cos_late"] <= 1 and r["cross_entropy"] > 0 for r in rows)
    assert all(-1 <= r["est_cos"] <= 1 and -1 <= r["est3_cos"] <= 1 and r["posterior_mean_gap"] >= 0 for r in rows)
    assert [c["family"] for c in ce.ceilings(res)] == ["sd1"] and "sd1: null branch, 1 level" in ce.headline(res)
    res["meta"] = {"config": dataclasses.asdict(cfg), "seconds": 1.0, "torch": "x"}
    report = ce.write_report(res)
    assert "smoke test, not findings" in report.splitlines()[2] and "| 0 | sd1 | soft_targets |" in report


def test_results_estimator_table_matches_the_committed_run(results_block):
    """docs/results.md's estimator table is regenerated from docs/estimator/estimator.json, not typed by hand."""
    import json
    from pathlib import Path

    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/estimator/estimator.json").read_text())
    assert results_block("estimator") == ce.headline(committed), (
        "docs/results.md's estimator table differs from docs/estimator/estimator.json; paste "
        "studies.cg_estimator.headline(...) of it between the estimator markers in docs/results.md")
