"""The cost benchmark on a tiny model: every setting timed, ratios to CFG, device recorded."""
import json

import pytest

from comfy_nag import bench_cost

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
