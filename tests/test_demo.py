"""The main job end to end on a tiny configuration: files, row format, every method, honest metrics."""
import json
import math

import pytest
from PIL import Image

from studies import demo, demo_report, harness, toolkit

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config():
    return toolkit.Config(quick=True, families=("sit",), samplers=("euler", "ddpm"), steps=(6,), train_steps=120,
                          estimator_steps=80, n_samples=120, n_reference=120, bins=12, tune_steps=6, plot_steps=6,
                          grid={"nag_cf": [0.5], "nag_cf_est": [1.0], "nag_cg": [1.0], "eps_scaling": [0.995], "time_shift": [0.1]},
                          ablations=False)


def test_demo_writes_the_promised_files_and_rows(tmp_path):
    res = demo.run_demo(tmp_path, config=tiny_config())
    for name in ("metrics.json", "report.md", "noise_shift.png", "samples.png", "fidelity.png"):
        assert (tmp_path / name).stat().st_size > 0
    fid = res["fidelity"]["sit"]
    terms = ("nag_cf", "readout", "nag_cg", "nag_cf_est", "nag_cf_est3", "nag_cf_est_exact")
    assert {(r["term"], r["offset"]) for r in fid} == {(t, o) for t in terms for o in (0.0, 0.5)}
    assert all(-1 <= r["cos"] <= 1 and r["norm_ratio"] > 0 for r in fid)
    for name in ("noise_shift.png", "samples.png", "fidelity.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert len(rows) == len(res["rows"]) == 2 * len(demo.METHODS)
    assert {r["method"] for r in rows} == set(demo.METHODS)
    assert {r["sampler"] for r in rows} == {"euler", "ddpm"}
    for r in rows:
        for key in ("method", "sampler", "steps", "nfe_per_step", "noise_shift", "quality", "quality_metric"):
            assert key in r, key
        assert r["steps"] == 6 and r["quality_metric"] == toolkit.QUALITY_METRIC
        assert math.isfinite(r["noise_shift"]) and r["noise_shift"] >= 0
        assert math.isfinite(r["quality"])
    nfe = {(r["sampler"], r["method"]): r["nfe_per_step"] for r in rows}
    # CFG doubles the cost; NAG-CF adds the null branch only inside its window; CG adds no network call
    assert nfe[("euler", "baseline")] == 1 and nfe[("euler", "cfg")] == 2 and nfe[("euler", "nag_cg")] == 1
    assert 1 < nfe[("euler", "nag_cf")] < 2
    assert nfe[("euler", "nag_cf_est")] == nfe[("euler", "nag_cf")]  # one level: the cost of a learned null branch
    report = (tmp_path / "report.md").read_text()
    nd = res["no_dropout"]["sit"]  # the same network without noise-condition dropout: the rows a stock model gets
    assert {(r["sampler"], r["steps"]) for r in nd["rows"]} == {("euler", 6), ("ddpm", 6)}  # every setting of the run
    assert {r["method"] for r in nd["rows"]} == set(demo.NO_DROPOUT_METHODS) and all(r["model"] == "no_dropout" for r in nd["rows"])
    crit = demo_report.no_dropout_criterion(res)
    assert crit[0]["family"] == "sit" and crit[0]["n"] == 2 and 0 <= crit[0]["both"] <= 2
    # the closed-loop scale: at most two estimator calls' worth of work, no extra network evaluation, its choices traced
    nd_nfe = {(r["sampler"], r["method"]): r["nfe_per_step"] for r in nd["rows"]}
    assert nd_nfe[("euler", "nag_cf_est_auto")] == nd_nfe[("euler", "nag_cf_est")] and nd_nfe[("euler", "nag_cg_auto")] == 1
    assert nfe[("euler", "nag_cf_auto")] == nfe[("euler", "nag_cf")]
    trace = nd["auto_scale"]
    assert len(trace["mean"]) == len(trace["logsnr"]) > 0 and all(0 <= m <= 1.5 for m in trace["mean"])
    assert (tmp_path / "auto_scale.png").stat().st_size > 0 and "## NAG that sets its own strength" in report
    assert "noise_shift" in report and "last 20%" in report
    assert report.splitlines()[2].startswith("> **Quick mode: a smoke test, not findings.**")  # said before any number
    assert "| sit | euler | nag_cf |" in report


def test_rerun_reuses_finished_stages_and_redraw_rewrites_the_outputs(tmp_path, capsys):
    first = demo.run_demo(tmp_path, config=tiny_config())
    work = {p.name for p in (tmp_path / "work").iterdir()}
    assert {"sit_sentinel_dim32.safetensors", "sit_tuning.json", "sit_sentinel_dim2.safetensors",
            "sit_sentinel_no_dropout_dim32.safetensors", "sit_no_dropout_tuning.json", "sit_no_dropout_rows"} <= work
    capsys.readouterr()
    second = demo.run_demo(tmp_path, config=tiny_config())
    log = capsys.readouterr()
    assert (log.out + log.err).count("reusing") == 5  # the 32-D family, its tuning, the same without dropout, the 2-D model
    assert second["rows"] == first["rows"] and second["knobs"] == first["knobs"]
    report = (tmp_path / "report.md").read_text()
    for name in ("report.md", "noise_shift.png"):
        (tmp_path / name).unlink()
    demo.redraw(tmp_path)
    assert (tmp_path / "report.md").read_text() == harness.mark_redrawn(report, "demo")
    assert (tmp_path / "noise_shift.png").stat().st_size > 0


def test_one_process_per_family_then_merge_gives_one_report(tmp_path):
    """The full study runs as parallel --families processes; --merge joins them into the usual outputs."""
    cfg = toolkit.Config(**{**tiny_config().__dict__, "families": ("sit", "sd1"), "samplers": ("euler",)})
    with pytest.raises(harness.StudyError, match="unknown families"):
        demo.run_demo(tmp_path, config=cfg, families=("sd3",))
    with pytest.raises(harness.StudyError, match="--families first"):
        demo.merge(tmp_path)
    demo.run_demo(tmp_path, config=cfg, families=("sd1",))
    assert not (tmp_path / "samples.png").exists()  # the 2-D figure belongs to the first family's process
    demo.run_demo(tmp_path, config=cfg, families=("sit",))
    res = demo.merge(tmp_path)
    assert [r["family"] for r in res["rows"]] == ["sit"] * len(demo.METHODS) + ["sd1"] * len(demo.METHODS)
    assert set(res["knobs"]) == set(res["calibration"]) == set(res["plots"]) == {"sit", "sd1"}
    assert res["meta"]["config"]["families"] == ["sit", "sd1"]
    report = (tmp_path / "report.md").read_text()
    assert "then `--merge`" in report and "| sd1 | euler | nag_cf_cal |" in report
    for name in ("samples.png", "noise_shift.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0
    # the calibrated scale: knots over the NAG window, a tuned-free scale of 1 times the profile
    cal = res["calibration"]["sd1"]
    assert cal["logsnr"][0] == cfg.nag_min_logsnr and len(cal["logsnr"]) == len(cal["estimator"]) == len(cal["exact"]) > 3
    row = next(r for r in res["rows"] if r["method"] == "nag_cf_cal")
    assert row["knob"]["nag_scale"] == 1.0 and 1 < row["nfe_per_step"] < 2
    crit = toolkit.criterion(res["rows"])
    assert {(c["family"], c["method"]) for c in crit} == {(f, m) for f in ("sit", "sd1") for m in toolkit.LEARNED_NAG}


def test_results_demo_tables_match_the_committed_run(results_block):
    """docs/results.md's demo tables are regenerated from docs/demo/metrics.json, not typed by hand."""
    from pathlib import Path

    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/demo/metrics.json").read_text())
    assert results_block("demo") == demo_report.headline(committed), (
        "docs/results.md's demo tables differ from docs/demo/metrics.json; "
        "paste studies.demo_report.headline(...) of it between the markers in docs/results.md")
    assert results_block("no-dropout") == demo_report.no_dropout_headline(committed), (
        "docs/results.md's stock-checkpoint table differs from docs/demo/metrics.json; "
        "paste studies.demo_report.no_dropout_headline(...) of it between the no-dropout markers in docs/results.md")
    crit = demo_report.no_dropout_criterion(committed)  # the claim the results page makes of this run
    assert [(c["family"], c["both"], c["n"]) for c in crit] == [("sit", 16, 16), ("sd1", 12, 16)]
    seed1 = json.loads((Path(__file__).resolve().parents[1] / "docs/demo/seed1/metrics.json").read_text())
    assert results_block("no-dropout-seed1") == demo_report.no_dropout_headline(seed1)
    for name, run in (("auto", committed), ("auto-seed1", seed1)):
        assert results_block(name) == demo_report.auto_headline(run), (
            f"docs/results.md's {name} table differs from the committed run; paste studies.demo_report.auto_headline(...)")
        # the results page's headline: the estimator route's closed loop improves quality on the dropout networks
        est = {v["network"]: v for v in demo_report.auto_verdicts(run) if v["method"] == "nag_cf_est_auto"}
        assert all(est[f"{f}, dropout"]["quality_better"] >= 15 for f in ("sit", "sd1"))
