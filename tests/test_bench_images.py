"""The image benchmark end to end on a tiny configuration: files, row format, every method."""
import json
import math
from pathlib import Path

import pytest
import torch

from studies import bench_digits, bench_report
from studies import bench_images as bi

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config():
    return bench_digits.Config(quick=True, families=("sit",), n_train=300, pretrain_steps=30, finetune_steps=5, batch_size=32,
                     hidden=32, depth=1, samplers=("euler", "sde"), steps=(4,), n_samples=60,
                     classifier_steps=30, estimator_steps=30, bins=8, tune_steps=4, plot_steps=4,
                     estimator_width=16, estimator_depth=2,
                     grid={"nag_cf": [0.5], "window": [0.0], "nag_cf_est": [1.0], "nag_cg": [1.0], "eps_scaling": [1.005],
                           "time_shift": [0.1], "cfg": [1.5], "nag_cf_cfg": [0.5]})


def test_bench_images_writes_report_and_rows(tmp_path):
    res = bi.run_bench(tmp_path, config=tiny_config(), log=lambda *a: None)
    for name in ("metrics.json", "report.md", "noise_shift.png", "samples.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    est = [r for r in rows if r["method"] == "nag_cf_est"]  # on the model with no null branch: no fine-tune needed
    assert {r["model"] for r in est} == {"pretrained"} and len(est) == 2
    assert res["samples"]["sit"]["panels"].keys() == {label for _, _, label in bi.SAMPLE_PANELS}
    assert len(rows) == len(res["rows"])
    ft = [r for r in rows if r["model"] == "ncd_finetune"]
    assert {r["method"] for r in ft} == set(bi.PLAN["ncd_finetune"]) == set(bi.METHODS) | {"nag_cf_auto"}
    assert {r["model"] for r in rows} == set(bi.MODELS)
    assert {r["sampler"] for r in rows} == {"euler", "euler_maruyama"}
    for r in rows:
        for key in ("method", "sampler", "steps", "nfe_per_step", "noise_shift", "quality", "quality_metric",
                    "precision", "recall", "accuracy"):
            assert key in r, key
        assert r["quality_metric"] == bench_digits.QUALITY_METRIC and math.isfinite(r["quality"]) and r["quality"] >= 0
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["accuracy"] <= 1
    nfe = {(r["model"], r["method"]): r["nfe_per_step"] for r in rows if r["sampler"] == "euler"}
    assert nfe[("pretrained", "baseline")] == 1 and nfe[("ncd_finetune", "cfg")] == 2 and nfe[("ncd_finetune", "nag_cg")] == 1
    assert nfe[("pretrained", "nag_cf_est")] == nfe[("ncd_finetune", "nag_cf")]  # one level, the same window
    # the closed-loop scale costs no network evaluation; its verdict is in the report
    assert nfe[("pretrained", "nag_cf_est_auto")] == nfe[("pretrained", "nag_cf_est")]
    assert nfe[("pretrained", "nag_cg_auto")] == 1 and nfe[("ncd_finetune", "nag_cf_auto")] == nfe[("ncd_finetune", "nag_cf")]
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2].startswith("> **Quick mode: a smoke test, not findings.**")  # said before any number
    for q in ("cost quality at scale 0", "reduce the measured shift", "On top of CFG", "prior fixes", "Cost per step",
              "NAG that sets its own strength"):
        assert q in report
    assert bench_report.headline(res) in report and "nag_cf vs baseline" in bench_report.headline(res)


def test_bench_images_is_reproducible(tmp_path):
    """Seeded end to end: training, tuning and every metric come out the same on a rerun."""
    a = bi.run_bench(tmp_path / "a", config=tiny_config(), log=lambda *a: None)
    b = bi.run_bench(tmp_path / "b", config=tiny_config(), log=lambda *a: None)
    assert a["rows"] == b["rows"] and a["knobs"] == b["knobs"]


def test_results_image_table_matches_the_committed_benchmark_run(results_block):
    """docs/results.md's image-scale table is regenerated from docs/bench/metrics.json, not typed by hand."""
    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/bench/metrics.json").read_text())
    assert results_block("bench-images") == bench_report.headline(committed), (
        "docs/results.md's image-scale table differs from docs/bench/metrics.json; paste "
        "studies.bench_report.headline(...) of it (also in docs/bench/report.md) between the markers in docs/results.md")


def test_precision_recall_follow_the_knn_definition():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g)
    same = torch.randn(200, 4, generator=g)
    far = torch.randn(200, 4, generator=g) + 10
    p, r = bench_digits.precision_recall(real, same, 3)
    assert p > 0.8 and r > 0.8
    assert bench_digits.precision_recall(real, far, 3) == (0.0, 0.0)
    # a collapsed generator: precise, no recall
    p, r = bench_digits.precision_recall(real, real[:1].repeat(200, 1) + 1e-3 * same, 3)
    assert p == 1.0 and r < 0.1


def test_rerun_in_the_same_folder_reuses_every_finished_stage(tmp_path):
    """The same command again: models, classifier, estimator and tuning are reused; the rows come out the same."""
    a = bi.run_bench(tmp_path, config=tiny_config(), log=lambda *a: None)
    logged = []
    b = bi.run_bench(tmp_path, config=tiny_config(), log=logged.append)
    reused = [m for m in logged if m.startswith("reusing")]
    # 4 trainer runs, the classifier, the estimator, the tuning, the estimator null branch's tuning
    assert len(reused) == 8, logged
    assert a["rows"] == b["rows"] and a["knobs"] == b["knobs"]
