"""The cost benchmark on a tiny model: every setting timed, ratios to CFG, device recorded."""
import json

import pytest
import torch

from studies import bench_cost

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cost_bench_reports_ratios_and_device(tmp_path):
    res = bench_cost.run_cost(tmp_path, quick=True, families=("sit",), batch=8, log=lambda *a: None)
    saved = json.loads((tmp_path / "cost.json").read_text())
    assert saved["device"] == res["device"] and saved["device"]
    r = saved["results"][0]
    assert set(r["seconds_per_step"]) == set(bench_cost.SETTINGS)
    assert r["ratio_to_cfg"]["cfg"] == 1.0 and all(v > 0 for v in r["seconds_per_step"].values())
    nfe = r["nfe_per_step"]
    assert nfe["baseline"] == 1 and nfe["cfg"] == 2 and nfe["nag_cf_batched"] == 2 == nfe["nag_cf_unbatched"]
    assert nfe["nag_cf+cfg"] == 3 and nfe["nag_cg"] == 1
    assert "ratio to CFG" in (tmp_path / "cost.md").read_text()
    peak = r["peak_bytes"]
    assert set(peak) == set(bench_cost.SETTINGS) and peak["cfg"] > 0 and r["peak_ratio_to_cfg"]["cfg"] == 1.0
    # three rows per forward (cond, uncond, null) hold more activations than one
    assert peak["nag_cf+cfg"] > peak["baseline"]


def test_step_peak_counts_live_tensors_not_freed_ones():
    x = torch.zeros(2 ** 18)  # 1 MiB

    def two_live():
        a, b = x + 1, x + 2
        return (a + b).sum()

    def one_at_a_time():
        s = (x + 1).sum()
        return s + (x + 2).sum()

    live = bench_cost.step_peak_bytes(two_live, torch.device("cpu"))
    serial = bench_cost.step_peak_bytes(one_at_a_time, torch.device("cpu"))
    assert live >= 3 * 2 ** 20 and serial < 2 * 2 ** 20
