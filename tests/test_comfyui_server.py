"""The pack inside a real ComfyUI server: import, /object_info, every shipped workflow via /prompt.

Workflows are converted from the UI format with tests/workflow_tools.py; text encoders are replaced
by a test-only conditioning node and model names/sizes by the tiny seeded models (comfy_support).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_support import PACK_ROOT, comfy_or_skip

comfy_or_skip()

from comfy_support import Server, load_pack, make_model_tree  # noqa: E402
from workflow_tools import to_api  # noqa: E402

NODE_IDS = ["NoiseAwarenessGuidanceClassifierFree", "NoiseAwarenessGuidanceClassifierGuided", "NoiseAwarenessGuider",
            "NoiseAwarenessEstimatorLoader", "NoiseAwarenessDiffusionModelLoader", "NoiseAwarenessCheckpointLoader",
            "NoiseAwarenessLoraLoader",
            "NoiseAwarenessShiftRecorder", "NoiseAwarenessShiftPlot"]
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
TINY = {"ckpt_name": "tiny_sd3_nag.safetensors", "unet_name": "tiny_sd3_nag.safetensors",
        "estimator_name": "tiny_flow_estimator.safetensors", "width": 64, "height": 64, "steps": 3}


def tiny(node_type, inputs):
    """Swap text encoders for test conditioning and shrink models/sizes/steps."""
    if node_type == "CLIPTextEncode":
        return "NoiseAwarenessTestConditioning", {"seed": len(inputs["text"]), "tokens": 8, "dim": 64, "pooled_dim": 32}
    out = {k: TINY.get(k, v) if not isinstance(v, list) else v for k, v in inputs.items()}
    if "batch_size" in out:
        out["batch_size"] = min(out["batch_size"], 2)
    return node_type, out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    load_pack()
    root = tmp_path_factory.mktemp("comfy")
    make_model_tree(root)
    srv = Server(root).wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_pack_imports_and_nodes_listed(server, object_info):
    log = (server.root / "server.log").read_text()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, log[-3000:]
    for nid in NODE_IDS:
        assert nid in object_info, nid
        assert object_info[nid]["python_module"] == "custom_nodes.comfy-nag"
        assert "Normalized" not in object_info[nid]["display_name"]
    assert object_info["NoiseAwarenessEstimatorLoader"]["input"]["required"]["estimator_name"][1]["options"] == [
        "tiny_4ch_estimator.safetensors", "tiny_flow_estimator.safetensors"]
    assert sorted(server.get("/api/workflow_templates")["comfy-nag"]) == sorted(p.stem for p in WORKFLOWS)


@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs(server, object_info, wf):
    ui = json.loads(wf.read_text())
    assert any(n["type"] == "Note" for n in ui["nodes"])
    h = server.run(to_api(ui, object_info, tiny))
    assert h["status"]["status_str"] == "success", json.dumps(h["status"])[-3000:]
    images = [im for out in h["outputs"].values() for im in out.get("images", [])]
    assert images and all((server.root / ("out" if im["type"] == "output" else "tmp/temp") / im["subfolder"] / im["filename"]).exists()
                          for im in images)
    for out in h["outputs"].values():
        if "text" in out:  # the noise-shift plot
            report = json.loads(out["text"][0])
            assert [r["label"] for r in report["runs"]] == ["without NAG", "with NAG"]
            for r in report["runs"]:
                assert r["step"] == [0, 1, 2] and len(r["nominal_logsnr"]) == len(r["estimated_mean"]) == 3
                assert all(v is not None for v in r["estimated_mean"])
            assert report["runs"][1]["window_steps"] == [0, 2]


def _error_of(server, prompt):
    h = server.run(prompt)
    assert h["status"]["status_str"] == "error"
    msg = [m for m in h["status"]["messages"] if m[0] == "execution_error"][0][1]
    return msg["exception_message"]


def test_bad_input_gives_clear_messages(server):
    base = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
            "2": {"class_type": "NoiseAwarenessEstimatorLoader", "inputs": {"estimator_name": "tiny_4ch_estimator.safetensors"}},
            "3": {"class_type": "NoiseAwarenessGuidanceClassifierGuided",
                  "inputs": {"model": ["1", 0], "estimator": ["2", 0], "scale": 0.5, "window_unit": "percent", "start": 0.0, "end": 1.0}},
            "4": {"class_type": "NoiseAwarenessShiftRecorder", "inputs": {"model": ["3", 0], "data_variance": 1.0}},
            "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}}
    msg = _error_of(server, base)
    assert "expects 4 latent channels but this model's latents have 16" in msg and "Traceback" not in msg
    missing = {"1": {"class_type": "NoiseAwarenessDiffusionModelLoader", "inputs": {"unet_name": "tiny_sd3.safetensors"}},
               "5": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    assert "no comfy-nag metadata" in _error_of(server, missing)
    plain_lora = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
                  "2": {"class_type": "NoiseAwarenessLoraLoader",
                        "inputs": {"model": ["1", 0], "lora_name": "tiny_sd3_plain_lora.safetensors", "strength_model": 1.0}},
                  "5": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    assert "no comfy-nag metadata" in _error_of(server, plain_lora)


def test_nag_lora_loader_hands_its_metadata_to_the_guidance_node(server):
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
              "2": {"class_type": "NoiseAwarenessLoraLoader",
                    "inputs": {"model": ["1", 0], "lora_name": "tiny_sd3_nag_lora.safetensors", "strength_model": 1.0}},
              "3": {"class_type": "NoiseAwarenessGuidanceClassifierFree",
                    "inputs": {"model": ["2", 0], "scale": 1.0, "variant": "A", "window_unit": "percent", "start": 0.0,
                               "end": 1.0, "null_timestep_source": "metadata", "null_timestep": 0.0, "batched": True}},
              "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}
    h = server.run(prompt)
    assert h["status"]["status_str"] == "success", h["status"]  # 'metadata' source: fails unless the LoRA's was attached
