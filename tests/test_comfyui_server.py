"""The pack inside a real ComfyUI server: import, /object_info, every shipped workflow via /prompt.

Workflows are converted from the UI format with tests/workflow_tools.py; text encoders are replaced
by a test-only conditioning node and model names/sizes by the tiny seeded models (comfy_support):
SD1.5-style workflows run on a UNet detected as SD1.5, flow workflows on a tiny SD3.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from comfy_support import PACK_ROOT, comfy_or_skip

comfy_or_skip()

from comfy_support import Server, load_pack, make_model_tree  # noqa: E402
from workflow_specs import VIDEO_FAMILIES  # noqa: E402
from workflow_tools import to_api  # noqa: E402

NODE_IDS = ["NoiseAwarenessKSampler", "NoiseAwarenessGuidanceClassifierFree", "NoiseAwarenessGuidanceAnyCheckpoint",
            "NoiseAwarenessGuidanceClassifierGuided", "NoiseAwarenessGuider", "NoiseAwarenessEstimatorLoader", "NoiseAwarenessDiffusionModelLoader",
            "NoiseAwarenessCheckpointLoader", "NoiseAwarenessLoraLoader", "NoiseAwarenessShiftRecorder", "NoiseAwarenessShiftPlot"]
WORKFLOWS = sorted((PACK_ROOT / "example_workflows").glob("*.json"))
PACK_DIRS = ("comfy-nag", "nag-test-pack")  # the custom_nodes folders the test server loads
# Tiny stand-ins: SD1.5-style workflows (4-channel latents) run on a UNet that ComfyUI detects as SD1.5,
# flow workflows on the tiny SD3 MMDiT.
TINY = {"sd15": {"ckpt_name": "tiny_sd15_nag.safetensors", "estimator_name": "tiny_sd15_estimator.safetensors", "dim": 768, "pooled_dim": 0},
        "sd3": {"ckpt_name": "tiny_sd3_nag.safetensors", "unet_name": "tiny_sd3_nag.safetensors",
                "estimator_name": "tiny_flow_estimator.safetensors", "dim": 64, "pooled_dim": 32}}
SMALL = {"width": 64, "height": 64, "steps": 3}
STOCK = {"sd15": "tiny_sd15.safetensors", "sd3": "tiny_sd3.safetensors"}  # no comfy-nag metadata: for the stock loader
NULL_BRANCH_INPUTS = ["null_branch", "estimator", "levels"]


# Video and Qwen-Image workflows: their models are built in process by the test pack (a loadable WAN or Qwen-Image file
# is far too big to make here), their VAEs replaced by a stand-in decoder; the estimators are tiny real files.
# Their steps stay as shipped (the tiny models take milliseconds), so the default window's last steps run NAG.
VIDEO = {"dim": 64, "pooled_dim": 0, "width": 64, "height": 64, "length": 5}
VIDEO_ESTIMATORS = {"wan21": "tiny_wan21_estimator.safetensors", "wan22-5b": "tiny_wan22_5b_estimator.safetensors",
                    "qwen-image": "tiny_qwen_image_estimator.safetensors"}


def family(ui: dict) -> str:
    unets = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "UNETLoader"]
    if any(u in VIDEO_FAMILIES for u in unets):
        return VIDEO_FAMILIES[unets[0]]
    return "sd3" if any(n["type"] == "EmptySD3LatentImage" for n in ui["nodes"]) else "sd15"


def tiny_video(fam):
    """Substitute the models, text encoders and VAEs of a video or Qwen-Image workflow (see VIDEO) and shrink it."""

    def swap(node_type, inputs):
        if node_type == "CLIPTextEncode":
            return "NoiseAwarenessTestConditioning", {"seed": len(inputs["text"]), "tokens": 8, **{k: VIDEO[k] for k in ("dim", "pooled_dim")}}
        if node_type == "UNETLoader":
            return "NoiseAwarenessTestModel", {"family": VIDEO_FAMILIES[inputs["unet_name"]], "seed": len(inputs["unet_name"])}
        if node_type == "VAELoader":
            return "NoiseAwarenessTestVAE", {}
        if node_type == "VAEDecode":
            return "NoiseAwarenessTestDecode", inputs
        out = {k: VIDEO.get(k, v) if not isinstance(v, list) else v for k, v in inputs.items()}
        if node_type == "NoiseAwarenessEstimatorLoader":
            out["estimator_name"] = VIDEO_ESTIMATORS[fam]
        return node_type, out

    return swap


def tiny(fam):
    """Substitute text encoders by test conditioning, model files by tiny ones, and shrink sizes/steps."""
    if fam in VIDEO_ESTIMATORS:
        return tiny_video(fam)
    sub = {**TINY[fam], **SMALL}

    def swap(node_type, inputs):
        if node_type == "CLIPTextEncode":
            return "NoiseAwarenessTestConditioning", {"seed": len(inputs["text"]), "tokens": 8, "dim": sub["dim"],
                                                      "pooled_dim": sub["pooled_dim"]}
        out = {k: sub.get(k, v) if not isinstance(v, list) else v for k, v in inputs.items()}
        if node_type == "CheckpointLoaderSimple":
            out["ckpt_name"] = STOCK[fam]
        if "batch_size" in out:
            out["batch_size"] = min(out["batch_size"], 2)
        return node_type, out

    return swap


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
    ours = [line for line in log.splitlines() if ("IMPORT FAILED" in line or "Cannot import" in line)
            and any(d in line for d in PACK_DIRS)]
    assert not ours, ours  # core nodes failing (e.g. audio without torchaudio) are not the pack's business
    for nid in NODE_IDS:
        assert nid in object_info, nid
        assert object_info[nid]["python_module"] == "custom_nodes.comfy-nag"
    assert object_info["NoiseAwarenessEstimatorLoader"]["input"]["required"]["estimator_name"][1]["options"] == [
        "tiny_4ch_estimator.safetensors", "tiny_flow_estimator.safetensors", "tiny_qwen_image_estimator.safetensors",
        "tiny_sd15_estimator.safetensors", "tiny_wan21_estimator.safetensors", "tiny_wan22_5b_estimator.safetensors"]
    assert sorted(server.get("/api/workflow_templates")["comfy-nag"]) == sorted(p.stem for p in WORKFLOWS)


def test_names_categories_and_tooltips(object_info):
    """No bare 'NAG' (Normalized Attention Guidance's name) in what users search; loaders under loaders/; every input explained."""
    for nid in NODE_IDS:
        info = object_info[nid]
        assert not re.search(r"\bNAG\b", info["display_name"]) and "Normalized" not in info["display_name"], info["display_name"]
        assert info["category"].startswith("loaders/" if "Loader" in nid else "sampling/"), (nid, info["category"])
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{nid}.{name} has no tooltip"
    assert object_info["NoiseAwarenessKSampler"]["display_name"] == "KSampler (Noise Awareness)"
    for nid in ("NoiseAwarenessGuidanceClassifierFree", "NoiseAwarenessKSampler", "NoiseAwarenessGuider"):
        # appended last and optional: workflows and prompts made before them still validate
        assert object_info[nid]["input_order"]["optional"][-3:] == NULL_BRANCH_INPUTS, nid
        assert not set(NULL_BRANCH_INPUTS) & set(object_info[nid]["input_order"]["required"]), nid


def test_requirements_never_touch_torch():
    """``pip install -r requirements.txt`` into ComfyUI's environment installs nothing that replaces torch."""
    req = PACK_ROOT / "requirements.txt"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet", "--report", "-",
                           "-r", str(req)], capture_output=True, text=True)
    assert proc.returncode == 0, f"install the pack's requirements into this environment first: {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    names = [i["metadata"]["name"].lower() for i in report["install"]]
    assert not [n for n in names if n.startswith(("torch", "nvidia", "triton"))], names


@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs(server, object_info, wf):
    ui = json.loads(wf.read_text())
    assert any(n["type"] == "Note" for n in ui["nodes"])
    h = server.run(to_api(ui, object_info, tiny(family(ui))))
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
            # the workflow's window is the default, signal 0.5 -> 1: the steps at log-SNR >= 0
            late = [i for i, lam in enumerate(report["runs"][1]["nominal_logsnr"]) if lam >= 0]
            assert 0 < len(late) < 3 and report["runs"][1]["window_steps"] == [late[0], late[-1]]


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
    h = server.run(prompt)  # a prompt without scale_rule (made before it existed) still runs: it is optional
    assert h["status"]["status_str"] == "success", h["status"]  # 'metadata' source: fails unless the LoRA's was attached
    prompt["3"]["inputs"]["scale_rule"] = "per level (from file)"  # this LoRA was exported without a profile
    msg = _error_of(server, prompt)
    assert "nag.scale_profile" in msg and "'constant'" in msg


def _ksampler_prompt(sampler: dict, with_patch: bool, scale: float) -> dict:
    p = {"1": {"class_type": "NoiseAwarenessCheckpointLoader", "inputs": {"ckpt_name": "tiny_sd15_nag.safetensors"}},
         "2": {"class_type": "NoiseAwarenessTestConditioning", "inputs": {"seed": 1, "tokens": 8, "dim": 768, "pooled_dim": 0}},
         "3": {"class_type": "NoiseAwarenessTestConditioning", "inputs": {"seed": 2, "tokens": 8, "dim": 768, "pooled_dim": 0}},
         "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"ks_{with_patch}_{scale}"}}}
    nag = {"scale": scale, "variant": "A", "window_unit": "percent", "start": 0.0, "end": 1.0,
           "null_timestep_source": "auto", "null_timestep": -1000.0}
    common = {**sampler, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}
    if with_patch:
        p["5"] = {"class_type": "NoiseAwarenessGuidanceClassifierFree", "inputs": {"model": ["1", 0], **nag, "batched": True}}
        p["7"] = {"class_type": "KSampler", "inputs": {"model": ["5", 0] if scale else ["1", 0], **common}}
    else:
        p["7"] = {"class_type": "NoiseAwarenessKSampler", "inputs": {"model": ["1", 0], **common, **nag}}
    return p


def test_ksampler_node_matches_patch_plus_ksampler_over_the_server(server):
    from safetensors.torch import load_file

    sampler = {"seed": 7, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    latents = {}
    for with_patch in (False, True):
        for scale in (1.0, 0.0):
            h = server.run(_ksampler_prompt(sampler, with_patch, scale))
            assert h["status"]["status_str"] == "success", h["status"]
            f = h["outputs"]["9"]["latents"][0]
            latents[with_patch, scale] = load_file(str(server.root / "out" / f["subfolder"] / f["filename"]))["latent_tensor"]
    assert latents[False, 1.0].equal(latents[True, 1.0])  # one node == classifier-free node + KSampler
    assert latents[False, 0.0].equal(latents[True, 0.0])  # scale 0 == the plain KSampler
    assert not latents[False, 1.0].equal(latents[False, 0.0])


def _stock_prompt(nag: dict, prefix: str) -> dict:
    """A stock SD1.5-style checkpoint (no comfy-nag metadata), the classifier-free node with ``nag`` and a KSampler."""
    cond = {"tokens": 8, "dim": 768, "pooled_dim": 0}
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
            "2": {"class_type": "NoiseAwarenessEstimatorLoader", "inputs": {"estimator_name": "tiny_sd15_estimator.safetensors"}},
            "3": {"class_type": "NoiseAwarenessTestConditioning", "inputs": {"seed": 1, **cond}},
            "4": {"class_type": "NoiseAwarenessTestConditioning", "inputs": {"seed": 2, **cond}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "NoiseAwarenessGuidanceClassifierFree",
                  "inputs": {"model": ["1", 0], "scale": 1.0, "variant": "A", "window_unit": "percent", "start": 0.0, "end": 1.0,
                             "null_timestep_source": "metadata", "null_timestep": 0.0, "batched": True, **nag}},
            "7": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": 7, "steps": 3, "cfg": 4.0, "sampler_name": "euler",
                                                        "scheduler": "normal", "positive": ["3", 0], "negative": ["4", 0],
                                                        "latent_image": ["5", 0], "denoise": 1.0}},
            "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": prefix}}}


def test_classifier_free_from_an_estimator_on_a_stock_checkpoint(server):
    """null_branch 'from estimator' runs on a checkpoint without comfy-nag metadata (the null timestep source
    'metadata' is ignored); without an estimator it says what to connect; a prompt without the new inputs
    (made before they existed) still validates and runs its learned null branch."""
    nag = {"null_branch": "from estimator", "estimator": ["2", 0], "levels": 2}
    log = server.root / "server.log"
    warned = log.read_text().count("carries no comfy-nag metadata")
    h = server.run(_stock_prompt(nag, "stock_estimator"))
    assert h["status"]["status_str"] == "success", h["status"]
    assert h["outputs"]["9"]["latents"]
    assert log.read_text().count("carries no comfy-nag metadata") == warned  # the null timestep is not used
    msg = _error_of(server, _stock_prompt({"null_branch": "from estimator"}, "stock_missing"))
    assert "needs a noise-level estimator: connect a 'Load Noise-Level Estimator'" in msg and "Traceback" not in msg
    old = _stock_prompt({}, "stock_old")
    old["6"]["inputs"]["null_timestep_source"] = "auto"
    h = server.run(old)
    assert h["status"]["status_str"] == "success", h["status"]
    assert log.read_text().count("carries no comfy-nag metadata") > warned  # its learned null branch: the default one
