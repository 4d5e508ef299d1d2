"""The capacity study: one factor per network, and a report that reads its own rows."""
import dataclasses

import pytest

from studies import capacity as cap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_network_changes_size_or_length_of_the_demos():
    assert cap.BASE.changed() == "the demo's denoiser"
    names = [v.name for v in cap.VARIANTS]
    assert len(set(names)) == len(names) and names[0] == "demo"
    size = lambda v: (v.hidden, v.depth)  # noqa: E731 - width and depth together are the one "size" factor
    for v in cap.VARIANTS[1:]:
        changed = {"size": size(v) != size(cap.BASE), "length": v.steps_factor != cap.BASE.steps_factor}
        assert any(changed.values()), v.name
    from studies import toolkit

    d = cap.VARIANTS[-1].demo_config(toolkit.Config())
    assert (d.hidden, d.depth, d.train_steps) == (256, 4, 4 * toolkit.Config().train_steps) and d.t_dropout == 0.1


def test_tiny_study_reads_each_network_against_its_exact_term(monkeypatch, tmp_path):
    """End to end on a tiny grid: fidelity and ceiling per level, the four sampling methods per setting,
    the criterion per network, a resumable stage per network, and a report marked as a smoke test."""
    from studies import toolkit

    tiny = toolkit.Config(quick=True, families=("sd1",), train_steps=60, estimator_steps=40, n_samples=100,
                          n_reference=100, bins=12, ablations=False, grid={**toolkit.Config().grid, "nag_cf": [1.0]},
                          tune_steps=6)
    monkeypatch.setattr(toolkit.Config, "make", classmethod(lambda cls, quick, seed=0: dataclasses.replace(tiny, seed=seed)))
    cfg = cap.Config(quick=True, seeds=(0,), variants=("demo", "size_256x4"), n_states=16, samplers=("euler",), steps=(6,))
    res = cap.study(cfg, log=lambda *a: None, progress=False, work=tmp_path)
    assert [(n["variant"], n["scale"]) for n in res["networks"]] == [("demo", 1.0), ("size_256x4", 1.0)]
    assert res["networks"][1]["params"] > 2 * res["networks"][0]["params"]
    assert {(r["variant"], r["term"]) for r in res["fidelity"]} == {(v, t) for v in cfg.variants
                                                                    for t in ("nag_cf", "marginal_null")}
    assert sorted(r["method"] for r in res["rows"] if r["variant"] == "demo") == sorted(cap.METHODS)
    rows = cap.summary(res)
    assert [r["variant"] for r in rows] == ["demo", "size_256x4"]
    assert all(-1 <= r["cos_late"] <= 1 and r["both_tuned"] in ("0/1", "1/1") for r in rows)
    again = cap.study(cfg, log=lambda *a: None, progress=False, work=tmp_path)  # every stage reused
    assert again["rows"] == res["rows"]
    res["meta"] = {"config": dataclasses.asdict(cfg), "seconds": 1.0, "torch": "x"}
    report = cap.write_report(res)
    assert "smoke test, not findings" in report.splitlines()[2] and "| 0 | sd1 | size_256x4 |" in report


def test_results_capacity_table_matches_the_committed_run(results_block):
    """docs/results.md's capacity table is regenerated from docs/capacity/capacity.json, not typed by hand."""
    import json
    from pathlib import Path

    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/capacity/capacity.json").read_text())
    assert results_block("capacity") == cap.headline(committed), (
        "docs/results.md's capacity table differs from docs/capacity/capacity.json; "
        "paste studies.capacity.headline(...) of it between the markers in docs/results.md")
