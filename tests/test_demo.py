"""The main job end to end on a tiny configuration: files, row format, every method, honest metrics."""
import json
import math

import pytest
from PIL import Image

from studies import demo, harness

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config():
    return demo.Config(quick=True, families=("sit",), samplers=("euler", "ddpm"), steps=(6,), train_steps=120,
                       estimator_steps=80, n_samples=120, n_reference=120, bins=12, tune_steps=6, plot_steps=6,
                       grid={"nag_cf": [0.5], "nag_cg": [1.0], "eps_scaling": [0.995], "time_shift": [0.1]},
                       ablations=False)


def test_demo_writes_the_promised_files_and_rows(tmp_path):
    res = demo.run_demo(tmp_path, config=tiny_config())
    for name in ("metrics.json", "report.md", "noise_shift.png", "samples.png"):
        assert (tmp_path / name).stat().st_size > 0
    for name in ("noise_shift.png", "samples.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert len(rows) == len(res["rows"]) == 2 * len(demo.METHODS)
    assert {r["method"] for r in rows} == set(demo.METHODS)
    assert {r["sampler"] for r in rows} == {"euler", "ddpm"}
    for r in rows:
        for key in ("method", "sampler", "steps", "nfe_per_step", "noise_shift", "quality", "quality_metric"):
            assert key in r, key
        assert r["steps"] == 6 and r["quality_metric"] == demo.QUALITY_METRIC
        assert math.isfinite(r["noise_shift"]) and r["noise_shift"] >= 0
        assert math.isfinite(r["quality"])
    nfe = {(r["sampler"], r["method"]): r["nfe_per_step"] for r in rows}
    # CFG doubles the cost; NAG-CF adds the null branch only inside its window; CG adds no network call
    assert nfe[("euler", "baseline")] == 1 and nfe[("euler", "cfg")] == 2 and nfe[("euler", "nag_cg")] == 1
    assert 1 < nfe[("euler", "nag_cf")] < 2
    report = (tmp_path / "report.md").read_text()
    assert "noise_shift" in report and "last 20%" in report
    assert report.splitlines()[2].startswith("> **Quick mode: a smoke test, not findings.**")  # said before any number
    assert "| sit | euler | nag_cf |" in report


def test_rerun_reuses_finished_stages_and_redraw_rewrites_the_outputs(tmp_path, capsys):
    first = demo.run_demo(tmp_path, config=tiny_config())
    work = {p.name for p in (tmp_path / "work").iterdir()}
    assert {"sit_sentinel_dim32.safetensors", "sit_tuning.json", "sit_sentinel_dim2.safetensors"} <= work
    capsys.readouterr()
    second = demo.run_demo(tmp_path, config=tiny_config())
    log = capsys.readouterr()
    assert (log.out + log.err).count("reusing") == 3  # the 32-D family, its tuning, the 2-D picture model
    assert second["rows"] == first["rows"] and second["knobs"] == first["knobs"]
    report = (tmp_path / "report.md").read_text()
    for name in ("report.md", "noise_shift.png"):
        (tmp_path / name).unlink()
    demo.redraw(tmp_path)
    assert (tmp_path / "report.md").read_text() == harness.mark_redrawn(report, "demo")
    assert (tmp_path / "noise_shift.png").stat().st_size > 0
