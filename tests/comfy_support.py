"""Helpers for the ComfyUI integration tests: find ComfyUI, load the pack, make tiny real-format models.

ComfyUI is found through ``COMFYUI_PATH``, else ``~/comfy/ComfyUI``.  Without it (or without its
dependencies, e.g. in the CI venv) :func:`comfy_or_skip` skips the calling module with a visible
reason and a warning.  Tiny models: seeded weights, made at test time, never committed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_MODULE = "comfy_nag_pack_under_test"


def comfy_root() -> Path:
    return Path(os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI")).expanduser()


def skip_loudly(msg: str):
    """Skip the calling module with a warning and a line on stderr (seen even without -rs)."""
    import pytest  # here, so that scripts without pytest (benchmarks/gpu_common.py) can use this module

    warnings.warn(msg)
    print("\n" + msg, file=sys.stderr)
    pytest.skip(msg, allow_module_level=True)


QUIET = dict(log=lambda *a: None)  # the trainer's api calls without progress lines
KEY_WARNINGS = ("missing", "unexpected", "not loaded", "left over")  # ComfyUI's words for a LoRA/state-dict key mismatch


def trainer_comfy_or_skip(what: str):
    """ComfyUI through the trainer's own loader (``training.comfyui.import_comfy``), or skip the calling module
    LOUDLY (warning + reason) naming ``what`` is skipped."""
    import pytest

    from training import comfyui

    try:
        return comfyui.import_comfy()
    except comfyui.ComfyUnavailable as e:
        warnings.warn(f"{what} SKIPPED: {e}")
        pytest.skip(f"{what} need ComfyUI: {e}", allow_module_level=True)


def comfy_or_skip() -> Path:
    """Put ComfyUI first on sys.path in CPU mode, or skip the module LOUDLY."""
    root = comfy_root()
    why = None
    if not (root / "comfy" / "samplers.py").exists():
        why = f"ComfyUI not found at {root} (set COMFYUI_PATH)"
    else:
        try:
            for mod in ("torchvision", "torchsde", "einops", "scipy", "aiohttp", "yaml", "transformers"):
                importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - any import failure means "not a ComfyUI environment"
            why = f"ComfyUI's dependencies are missing in {sys.executable} ({e}); run with ComfyUI's own Python"
    if why:
        skip_loudly(f"SKIPPING ComfyUI integration tests: {why}")
    if str(root) not in sys.path[:1]:
        sys.path.insert(0, str(root))
    if "nodes" in sys.modules and not str(getattr(sys.modules["nodes"], "__file__", "")).startswith(str(root)):
        del sys.modules["nodes"]
    from comfy.cli_args import args

    args.cpu = True
    # ComfyUI's top-level nodes.py (common_ksampler, KSamplerAdvanced), bound now: pytest puts a checkout whose folder
    # name is no Python identifier (a clone called comfy-nag) first on sys.path, where the pack's own nodes/ package
    # would shadow it for a later ``from nodes import ...``
    sys.modules["nodes"] = importlib.import_module("nodes")
    import torch

    # Tiny models: one thread is fastest, and avoids OpenMP spin contention on busy shared CPUs.
    torch.set_num_threads(int(os.environ.get("NAG_TEST_THREADS", "1")))
    return root


def load_pack():
    """Import the pack the way ComfyUI does (a package with an arbitrary name; relative imports only)."""
    if PACK_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_MODULE, PACK_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(PACK_ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(PACK_MODULE + ".nodes")


def seed_weights(module, seed: int):
    """ComfyUI layers are created uninitialised (MMDiT's pos_embed is torch.empty): N(0, 0.02) weights, zero biases."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 if not name.endswith("bias") else torch.zeros(p.shape))
        for name, b in module.named_buffers():
            if b.dtype.is_floating_point and "pos_embed" in name:
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)


SD3_CONFIG = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
              "adm_in_channels": 32, "num_patches": 1024, "pos_embed_max_size": 32, "pos_embed_scaling_factor": None,
              "x_block_self_attn_layers": [],
              "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}}}


def tiny_from_config(config: dict, seed: int):
    """A BaseModel detected by ComfyUI from ``config``, float32, weights seeded with :func:`seed_weights`."""
    import torch
    import comfy.model_detection

    mc = comfy.model_detection.model_config_from_unet_config(dict(config))
    mc.set_inference_dtype(torch.float32, None)
    m = mc.get_model({}, "")
    seed_weights(m.diffusion_model, seed)
    return m


def tiny_sd3_model(seed: int = 0):
    """BaseModel of a 1.1M-parameter SD3 (MMDiT, flow); loadable by UNETLoader/CheckpointLoaderSimple."""
    return tiny_from_config(SD3_CONFIG, seed)


FLUX_CONFIG = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 32,
               "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
               "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True, "guidance_embed": True}


def tiny_flux_model(seed: int = 0):
    """BaseModel of a 0.2M-parameter Flux-dev-style model (ModelSamplingFlux); in-process only."""
    return tiny_from_config(FLUX_CONFIG, seed)


WAN21_CONFIG = {"image_model": "wan2.1", "model_type": "t2v", "dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 1,
                "in_dim": 16, "out_dim": 16, "text_dim": 64, "freq_dim": 32, "patch_size": (1, 2, 2),
                "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
WAN22_5B_CONFIG = {**WAN21_CONFIG, "in_dim": 48, "out_dim": 48}
QWEN_IMAGE_CONFIG = {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 1,
                     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 64, "patch_size": 2,
                     "axes_dims_rope": (4, 6, 6)}
VIDEO_LATENTS = {"wan21": (1, 16, 2, 8, 8), "wan22-5b": (1, 48, 2, 8, 8), "qwen-image": (1, 16, 1, 8, 8)}


def tiny_wan21_model(seed: int = 0):
    """BaseModel of a 29k-parameter WAN 2.1 T2V (detected WAN21_T2V: discrete flow, shift 8, 5-D Wan21 latents);
    the WAN 2.2 A14B experts have this architecture too.  Conditioning: ``conditioning("wan", seed)``."""
    return tiny_from_config(WAN21_CONFIG, seed)


def tiny_wan22_5b_model(seed: int = 0):
    """BaseModel of a 37k-parameter WAN 2.2 TI2V-5B (detected WAN22_T2V: 48-channel Wan22 latents)."""
    return tiny_from_config(WAN22_5B_CONFIG, seed)


def tiny_qwen_image_model(seed: int = 0):
    """BaseModel of a 56k-parameter Qwen-Image (detected QwenImage: ModelSamplingFlux, Wan21 latents with one frame)."""
    return tiny_from_config(QWEN_IMAGE_CONFIG, seed)


HUNYUAN_VIDEO_CONFIG = {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
                        "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
                        "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 256, "patch_size": [1, 2, 2],
                        "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False}
LUMINA2_CONFIG = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": 32, "n_layers": 1,
                  "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 1, "qk_norm": True, "axes_dims": [8, 12, 12],
                  "axes_lens": [300, 512, 512], "multiple_of": 16}


CHROMA_CONFIG = {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 64, "hidden_size": 64,
                 "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12],
                 "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64, "hidden_dim": 64, "n_layers": 1}
HIDREAM_CONFIG = {"image_model": "hidream", "attention_head_dim": 32, "axes_dims_rope": [16, 8, 8], "caption_channels": [64, 64],
                  "max_resolution": [128, 128], "in_channels": 16, "llama_layers": [0, 1], "num_attention_heads": 2,
                  "num_routed_experts": 2, "num_activated_experts": 1, "num_layers": 1, "num_single_layers": 1,
                  "out_channels": 16, "patch_size": 2, "text_emb_dim": 32}


def tiny_hunyuan_video_model(seed: int = 0):
    """BaseModel of a tiny HunyuanVideo (detected HunyuanVideo: discrete flow, shift 7, 5-D HunyuanVideo latents);
    conditioning ``conditioning("hunyuan_video", seed)``.  Keys this ComfyUI's model does not take are dropped (0.3.52
    has no byt5/meanflow)."""
    from dataclasses import fields

    from comfy.ldm.hunyuan_video.model import HunyuanVideoParams

    known = {f.name for f in fields(HunyuanVideoParams)} | {"image_model"}
    return tiny_from_config({k: v for k, v in HUNYUAN_VIDEO_CONFIG.items() if k in known}, seed)


def tiny_lumina2_model(seed: int = 0):
    """BaseModel of a tiny Lumina 2 (detected Lumina2: discrete flow, shift 6, network time = sigma, Flux latents);
    conditioning ``conditioning("lumina2", seed)``."""
    return tiny_from_config(LUMINA2_CONFIG, seed)


def tiny_unet_model(prediction: str = "eps", seed: int = 0):
    """BaseModel of a ~1M-parameter SD1.5-style UNet (discrete schedule), EPS or V prediction; in-process only."""
    import torch
    from comfy import latent_formats, model_base, supported_models_base

    class Tiny(supported_models_base.BASE):
        unet_config = {}
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}
        latent_format = latent_formats.SD15

        def model_type(self, state_dict, prefix=""):
            return model_base.ModelType.V_PREDICTION if prediction == "v" else model_base.ModelType.EPS

    cfg = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "transformer_depth": [1, 1],
           "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1, "context_dim": 64,
           "use_linear_in_transformer": True, "use_spatial_transformer": True, "legacy": False,
           "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "image_size": 32}
    mc = Tiny(cfg)
    mc.set_inference_dtype(torch.float32, None)
    m = mc.get_model({}, "")
    seed_weights(m.diffusion_model, seed)
    return m


SD15_CONFIG = {"model_channels": 320, "context_dim": 768, "num_res_blocks": [1], "channel_mult": [1],
               "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": -2,
               "use_linear_in_transformer": False, "legacy": False, "adm_in_channels": None, "in_channels": 4,
               "out_channels": 4, "use_spatial_transformer": True, "num_heads": 8, "num_head_channels": -1,
               "use_temporal_attention": False, "use_temporal_resblock": False, "image_size": 32, "num_classes": None}


def tiny_sd15_model(seed: int = 0):
    """BaseModel of a one-level UNet that ComfyUI's file loaders detect as SD1.5 (EPS, discrete schedule)."""
    return tiny_from_config(SD15_CONFIG, seed)


def patcher(base_model):
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(base_model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def conditioning(kind: str, seed: int, tokens: int = 8):
    import torch

    g = torch.Generator().manual_seed(seed)
    if kind == "flux":
        return [[torch.randn(1, tokens, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g), "guidance": 3.5}]]
    if kind == "sd3":
        return [[torch.randn(1, tokens, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    if kind == "hunyuan_video":
        return [[torch.randn(1, tokens, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g), "guidance": 6.0}]]
    if kind == "chroma":
        return [[torch.randn(1, tokens, 64, generator=g), {"pooled_output": torch.zeros(1, 32)}]]
    if kind == "hidream":
        return [[torch.randn(1, tokens, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g),
                                                           "conditioning_llama3": torch.randn(1, 2, tokens, 64, generator=g)}]]
    if kind == "lumina2":
        return [[torch.randn(1, tokens, 32, generator=g), {"attention_mask": torch.ones(1, tokens, dtype=torch.long)}]]
    return [[torch.randn(1, tokens, 64, generator=g), {}]]


class ForwardSpy:
    """Records ``(timesteps, cond_or_uncond)`` of every forward of a model's diffusion network (a forward pre-hook)."""

    def __init__(self, model):
        self.calls = []
        self.h = model.model.diffusion_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, mod, args, kwargs):
        to = kwargs.get("transformer_options", {})
        self.calls.append((args[1].detach().clone().float(), list(to.get("cond_or_uncond", []))))

    def null_rows(self, null: float) -> list[float]:
        """Rows per forward whose network time is ``null``."""
        return [float((t == null).float().sum()) for t, _ in self.calls]

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.h.remove()


def save_tiny_sd3(path, seed: int = 0):
    """Write the tiny SD3 as a diffusion-model .safetensors file."""
    import comfy.utils

    m = tiny_sd3_model(seed)
    sd = {k: v.contiguous() for k, v in m.state_dict_for_saving().items()}
    comfy.utils.save_torch_file(sd, str(path))
    return path


def save_tiny_taesd(path, seed: int = 0, channels: int = 16):
    import torch
    import comfy.utils
    from comfy.taesd.taesd import TAESD

    torch.manual_seed(seed)
    vae = TAESD(latent_channels=channels)
    comfy.utils.save_torch_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


# --- a real ComfyUI server with the pack and tiny models -------------------------------------------
def make_model_tree(root: Path) -> Path:
    """Tiny seeded models in ``root/models``; returns the extra-model-paths YAML."""
    import comfy.utils
    import torch

    from comfy_nag_pack_under_test.comfy_nag.estimators import LevelBins, NoiseLevelEstimator
    from comfy_nag_pack_under_test.comfy_nag.metadata import nag_metadata
    from comfy_nag_pack_under_test.comfy_nag.schedules import DiscreteVP, Flow

    m = root / "models"
    for d in ("diffusion_models", "checkpoints", "vae", "noise_estimators", "loras", "clip"):
        (m / d).mkdir(parents=True, exist_ok=True)
    save_tiny_sd3(m / "diffusion_models" / "tiny_sd3.safetensors")
    save_tiny_taesd(m / "vae" / "tiny_taesd.safetensors")
    sd = {k: v.contiguous() for k, v in tiny_sd3_model(0).state_dict_for_saving().items()}
    sd.update({f"first_stage_model.{k}": v.contiguous() for k, v in comfy.utils.load_torch_file(str(m / "vae" / "tiny_taesd.safetensors")).items()})
    comfy.utils.save_torch_file(sd, str(m / "checkpoints" / "tiny_sd3.safetensors"))  # a stock checkpoint: no metadata
    meta = nag_metadata("checkpoint", "sd3", "velocity", Flow(shift=3.0), null_timestep=-1000.0, noise_condition_dropout_rate=0.1)
    comfy.utils.save_torch_file(sd, str(m / "checkpoints" / "tiny_sd3_nag.safetensors"), metadata=meta)
    comfy.utils.save_torch_file({k: v for k, v in sd.items() if k.startswith("model.")},
                                str(m / "diffusion_models" / "tiny_sd3_nag.safetensors"), metadata=meta)
    save_tiny_taesd(m / "vae" / "tiny_taesd_4ch.safetensors", channels=4)
    sd15 = {f"model.diffusion_model.{k}": v.contiguous() for k, v in tiny_sd15_model(1).diffusion_model.state_dict().items()}
    sd15.update({f"first_stage_model.{k}": v.contiguous()
                 for k, v in comfy.utils.load_torch_file(str(m / "vae" / "tiny_taesd_4ch.safetensors")).items()})
    comfy.utils.save_torch_file(sd15, str(m / "checkpoints" / "tiny_sd15_nag.safetensors"),
                                metadata=nag_metadata("checkpoint", "sd1", "eps", DiscreteVP(), null_timestep=-1000.0,
                                                      noise_condition_dropout_rate=0.1))
    comfy.utils.save_torch_file(sd15, str(m / "checkpoints" / "tiny_sd15.safetensors"))
    g = torch.Generator().manual_seed(3)
    key = "diffusion_model.joint_blocks.0.x_block.attn.qkv"
    lora = {f"{key}.lora_up.weight": torch.randn(384, 4, generator=g) * 0.01,
            f"{key}.lora_down.weight": torch.randn(4, 128, generator=g) * 0.01, f"{key}.alpha": torch.tensor(4.0)}
    lora_meta = nag_metadata("lora", "sd3", "velocity", Flow(shift=3.0), null_timestep=-1000.0, noise_condition_dropout_rate=0.1)
    comfy.utils.save_torch_file(lora, str(m / "loras" / "tiny_sd3_nag_lora.safetensors"), metadata=lora_meta)
    comfy.utils.save_torch_file(lora, str(m / "loras" / "tiny_sd3_plain_lora.safetensors"))
    torch.manual_seed(0)
    NoiseLevelEstimator((16, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2).save(
        m / "noise_estimators" / "tiny_flow_estimator.safetensors", Flow(shift=3.0))
    NoiseLevelEstimator((4, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2).save(
        m / "noise_estimators" / "tiny_4ch_estimator.safetensors", Flow(shift=3.0))
    NoiseLevelEstimator((4, 8, 8), LevelBins(-10, 10, 16), width=16, depth=2).save(
        m / "noise_estimators" / "tiny_sd15_estimator.safetensors", DiscreteVP())
    from comfy_nag_pack_under_test.comfy_nag.families import family

    for name, shape in (("wan21", (16, 2, 8, 8)), ("wan22-5b", (48, 2, 8, 8)), ("qwen-image", (16, 8, 8))):
        NoiseLevelEstimator(shape, LevelBins(-10, 10, 16), width=16, depth=2).save(
            m / "noise_estimators" / f"tiny_{name.replace('-', '_')}_estimator.safetensors", family(name).schedule,
            {"nag.family": name})
    cn = root / "custom_nodes"
    cn.mkdir(exist_ok=True)
    (cn / "comfy-nag").symlink_to(PACK_ROOT)  # hyphenated folder name, like a git clone
    (cn / "nag-test-pack").symlink_to(PACK_ROOT / "tests" / "comfy_test_pack")
    yaml = root / "paths.yaml"
    yaml.write_text("tiny:\n  base_path: {}\n  diffusion_models: models/diffusion_models\n  checkpoints: models/checkpoints\n"
                    "  vae: models/vae\n  noise_estimators: models/noise_estimators\n  loras: models/loras\n"
                    "  custom_nodes: custom_nodes\n".format(root))
    return yaml


class Server:
    """``python main.py`` of the ComfyUI under test, in CPU mode, on a free port."""

    def __init__(self, root: Path, frontend: bool = False):
        """``frontend``: serve ComfyUI's web frontend (its pip package) instead of an empty page."""
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (root / "fe").mkdir(exist_ok=True)
        self.log = open(root / "server.log", "w")
        fe = [] if frontend else ["--front-end-root", str(root / "fe")]
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
             *fe, "--disable-api-nodes", "--extra-model-paths-config", str(root / "paths.yaml"),
             "--output-directory", str(root / "out"), "--temp-directory", str(root / "tmp"),
             "--database-url", f"sqlite:///{root}/db.sqlite", "--disable-all-custom-nodes",
             "--whitelist-custom-nodes", "comfy-nag", "nag-test-pack"],
            cwd=comfy_root(), stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("NAG_TEST_THREADS", "1")})
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root

    def wait(self, timeout=180):
        import time
        import urllib.request

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("ComfyUI exited:\n" + (self.root / "server.log").read_text()[-3000:])
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("ComfyUI did not start:\n" + (self.root / "server.log").read_text()[-3000:])

    def get(self, path):
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, body):
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run(self, prompt, timeout=300):
        """Queue a prompt, wait for it, return its history entry."""
        import time

        code, resp = self.post("/prompt", {"prompt": prompt})
        if code != 200:
            raise AssertionError(f"prompt rejected: {resp}")
        pid, t0 = resp["prompt_id"], time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{pid}")
            if pid in h and h[pid].get("status", {}).get("completed") is not None and (
                    h[pid]["status"].get("status_str") in ("success", "error")):
                return h[pid]
            time.sleep(0.3)
        raise TimeoutError(f"prompt {pid} did not finish")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        self.log.close()


# --- tiny video-family files for the trainer (ComfyUI's own file detection and loaders) -----------------------
# ComfyUI reads a WAN file's width from its weights but fixes num_heads = dim // 128, freq_dim 256 and text_dim 4096:
# the smallest WAN it detects from a file has dim 128 and one head (0.9M parameters; 4096-wide text conditioning).
WAN21_FILE_CONFIG = {**WAN21_CONFIG, "dim": 128, "num_heads": 1, "freq_dim": 256, "text_dim": 4096}
WAN_FILE_CONFIGS = {"wan21": WAN21_FILE_CONFIG, "wan22-5b": {**WAN21_FILE_CONFIG, "in_dim": 48, "out_dim": 48}}
WAN_TEXT_DIM = 4096
QWEN_IMAGE_TEXT_DIM = QWEN_IMAGE_CONFIG["joint_attention_dim"]


def save_tiny_wan(path, family: str = "wan21", seed: int = 0):
    """A WAN 2.1 T2V (``wan21``) or WAN 2.2 TI2V-5B (``wan22-5b``) diffusion-model file that ComfyUI's file detection
    loads as WAN21_T2V / WAN22_T2V (bare network keys, as in models/diffusion_models)."""
    import comfy.utils

    m = tiny_from_config(WAN_FILE_CONFIGS[family], seed)
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in m.diffusion_model.state_dict().items()}, str(path))
    return path


def tiny_qwen_image_detection(monkeypatch):
    """ComfyUI detects a Qwen-Image file's input width and depth but fixes its widths at the real model's (a 3072-wide
    transformer): during the test, its detection fills in the tiny model's widths (everything else, matching the
    QwenImage config and loading the weights, is ComfyUI's own)."""
    import comfy.model_detection

    detect = comfy.model_detection.detect_unet_config

    def tiny(state_dict, key_prefix, metadata=None):
        out = detect(state_dict, key_prefix, metadata=metadata)
        if out is not None and out.get("image_model") == "qwen_image":
            out.update({k: v for k, v in QWEN_IMAGE_CONFIG.items() if k not in out})
        return out

    monkeypatch.setattr(comfy.model_detection, "detect_unet_config", tiny)


def save_tiny_qwen_image(path, seed: int = 0):
    """The tiny Qwen-Image as a diffusion-model file (load it under :func:`tiny_qwen_image_detection`)."""
    import comfy.utils

    m = tiny_qwen_image_model(seed)
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in m.diffusion_model.state_dict().items()}, str(path))
    return path


TINY_WAN_VAE_DIM = 8  # the real Wan 2.1 VAE: 96


def tiny_wan_vae(monkeypatch, dim: int = TINY_WAN_VAE_DIM):
    """ComfyUI's Wan 2.1 VAE class at width ``dim`` while the test runs: ComfyUI detects a Wan 2.1 VAE file by its keys
    and builds it at the real width (96), so the tiny file loads through ``comfy.sd.VAE`` with the width narrowed."""
    import comfy.ldm.wan.vae

    real = comfy.ldm.wan.vae.WanVAE

    class TinyWanVAE(real):
        def __init__(self, dim=96, **kw):
            super().__init__(dim=TINY_WAN_VAE_DIM, **kw)

    monkeypatch.setattr(comfy.ldm.wan.vae, "WanVAE", TinyWanVAE)
    return TinyWanVAE


def save_tiny_wan_vae(path, seed: int = 0):
    """A Wan 2.1 VAE file (16-channel video latents, 8x spatial and 4x temporal compression) of width
    :data:`TINY_WAN_VAE_DIM`; load it under :func:`tiny_wan_vae`."""
    import torch
    import comfy.ldm.wan.vae
    import comfy.utils

    vae = comfy.ldm.wan.vae.WanVAE(dim=TINY_WAN_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # ComfyUI's layers start uninitialised: fan-in-scaled weights, unit norm gains, zero biases
        for name, p in vae.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5 if p.dim() > 1 and "gamma" not in name
                    else torch.ones(p.shape) if "gamma" in name else torch.zeros(p.shape))
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


def save_tiny_clips(root, count: int = 4, frames: int = 5, size: int = 32, seed: int = 0):
    """``count`` clips of a bright square moving across a dark background: even ones as .mp4 files (PyAV, mpeg4),
    odd ones as folders of PNG frames, each with a caption file; returns the clip paths."""
    import av
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        y, x, (dy, dx) = *rng.integers(0, size // 2, 2), rng.integers(1, 4, 2)
        video = []
        for t in range(frames):
            f = np.full((size, size, 3), 20 + 10 * i, np.uint8)
            f[(y + dy * t) % (size - 8):][:8, (x + dx * t) % (size - 8):][:, :8] = (230, 180 - 20 * i, 60)
            video.append(f)
        if i % 2 == 0:
            path = root / f"clip{i}.mp4"
            with av.open(str(path), "w") as out:
                stream = out.add_stream("mpeg4", rate=8)
                stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
                for f in video:
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                out.mux(stream.encode())
            (root / f"clip{i}.txt").write_text(f"clip {i % 3}")
        else:
            path = root / f"clip{i}"
            path.mkdir()
            for t, f in enumerate(video):
                Image.fromarray(f).save(path / f"{t:04d}.png")
            (root / f"clip{i}.txt").write_text(f"clip {i % 3}")
        clips.append(path)
    return clips


class Reads:
    """Counts an estimator's forwards (a context manager)."""

    def __init__(self, estimator):
        self.n = 0
        self.h = estimator.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.h.remove()
