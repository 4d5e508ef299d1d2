"""benchmarks/gpu_check.py, the script for a lent GPU, proven on the CPU: its orchestration (a failing part
writes its error and the next part still runs), the toy capacity part end to end, the message naming a
missing package, the stand-in for ComfyUI's video package, the committed toy outputs and their report; with
ComfyUI present, the real-size model configs build (on the meta device) and are detected as what they claim."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_common  # noqa: E402
import gpu_report  # noqa: E402

TOY = ROOT / "docs" / "gpu" / "toy"


def test_toy_run_survives_a_failing_part_and_writes_every_json(tmp_path):
    """guidance cannot find ComfyUI here (HOME and COMFYUI_PATH point at empty folders): its JSON says why,
    and the capacity part (toy networks, CPU) still runs and completes.  About 40 s on 2 busy cores."""
    env = {**os.environ, "HOME": str(tmp_path), "COMFYUI_PATH": str(tmp_path / "no_comfyui"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--toy", "--parts", "guidance,capacity",
                        "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr  # one part failed
    assert "estimated guidance" in r.stdout and "budget" in r.stdout
    out = tmp_path / "out"
    guidance = json.loads((out / "guidance.json").read_text())
    assert guidance["toy"] is True and guidance["complete"] is False
    assert "MissingPackage" in guidance["error"] or "ComfyUI was not found" in guidance["error"]
    cap = json.loads((out / "capacity.json").read_text())
    assert cap["complete"] is True and cap["toy"] is True and "device" in cap and "torch" in cap
    assert len(cap["networks"]) == 4
    for n in cap["networks"]:
        assert n["train_steps"] == n["target_steps"] and not n.get("error"), n
        assert {"nag_cf", "marginal_null"} <= set(n["terms"])
        assert -1 <= n["terms"]["nag_cf"]["cos_late"] <= 1
    run = json.loads((out / "run.json").read_text())
    assert run["parts"]["guidance"]["status"] == "error" and run["parts"]["capacity"]["status"] == "ok"


def test_a_missing_package_is_named_with_the_way_to_bring_it(monkeypatch):
    monkeypatch.setitem(gpu_common.NEEDS, "some", {"json": ("json", "installed"),
                                                   "nag_no_such_package": ("nag-no-such-package", "a test")})
    with pytest.raises(gpu_common.MissingPackage) as e:
        gpu_common.check_packages("some")
    assert "lacks: nag-no-such-package (nag_no_such_package: a test)." in str(e.value) and ".whl/" in str(e.value)
    try:
        import nag_no_such_package  # noqa: F401
    except ModuleNotFoundError as exc:
        assert gpu_common.missing_from(RuntimeError("wrapped")) is None
        err = RuntimeError("import failed")
        err.__cause__ = exc
        assert gpu_common.missing_from(err) == "nag_no_such_package"


def test_a_stand_in_for_a_package_no_part_calls(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    try:
        assert gpu_common.stub_missing(("nag_stubbed_pkg", "json")) == ["nag_stubbed_pkg"]  # json is installed
        from nag_stubbed_pkg.container import InputContainer  # noqa: F401 - what comfy_api does with av

        import nag_stubbed_pkg
        assert isinstance(nag_stubbed_pkg.open, type)
        assert getattr(nag_stubbed_pkg, "__file__", None) is None  # module scanners see a plain module
    finally:
        for name in [m for m in sys.modules if m.startswith("nag_stubbed_pkg")]:
            del sys.modules[name]


def test_committed_toy_outputs_are_complete_and_marked_toy():
    run = json.loads((TOY / "run.json").read_text())
    assert run["mode"] == "toy" and all(p["status"] == "ok" for p in run["parts"].values())
    for part in ("guidance", "trainer", "capacity"):
        d = json.loads((TOY / f"{part}.json").read_text())
        assert d["toy"] is True and d["complete"] is True and "error" not in d, part
        assert d["device"] and d["torch"] and d["settings"], part
    g = json.loads((TOY / "guidance.json").read_text())
    for m in g["models"].values():
        assert {"plain CFG", "NAG-CF batched", "NAG-CF unbatched", "NAG-CG (estimator)", "NAG-CF estimator K=1",
                "NAG-CF estimator K=3"} <= set(m["configurations"])
    text = gpu_report.markdown(TOY)
    assert text.count("TOY RUN") == 3 and "| configuration |" in text and "estimator K=3" in text


def test_real_size_configs_build_and_are_detected():
    """SD1.5, SDXL and Flux-dev at their real sizes, made on the meta device (no memory): ComfyUI builds them
    and detects each from its own state dict (the trainer loads the SDXL one from a file)."""
    import comfy_support as cs

    cs.comfy_or_skip()
    import torch
    import comfy.model_detection
    import gpu_guidance as gg

    sizes = {}
    for name, (kind, real, _, _, dtype, _) in gg.ARCHS.items():
        m = _meta_model(kind, real, getattr(torch, dtype))
        sizes[name] = sum(p.numel() for p in m.diffusion_model.parameters())
        detected = comfy.model_detection.model_config_from_unet(m.diffusion_model.state_dict(), "")
        assert type(detected).__name__ == kind, name
    assert 0.85e9 < sizes["sd15"] < 0.87e9 and 2.5e9 < sizes["sdxl"] < 2.6e9 and 11.8e9 < sizes["flux"] < 12e9


def _meta_model(kind, config, dtype):
    import torch
    import comfy.supported_models as sm

    mc = getattr(sm, kind)(dict(config))
    mc.set_inference_dtype(dtype, None)
    return mc.get_model({}, "", device=torch.device("meta"))
