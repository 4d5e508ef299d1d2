"""Loaders: noise-level estimators, and dropout-trained diffusion models/checkpoints/LoRAs with their metadata."""
from __future__ import annotations

import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..comfy_nag import metadata as nag_metadata
from ..comfy_nag.estimators import NoiseLevelEstimator
from ..comfy_nag.files import read_metadata
from .common import LOADERS, Estimator, clear_errors, model_input
from .folders import ESTIMATOR_FOLDER
from .model_info import ATTACH_META, NoiseAwarenessError


def file_input(name: str, folder: str, tooltip: str):
    """A combo of the files in ComfyUI's model folder ``folder`` (read back with ``get_full_path_or_raise``)."""
    return io.Combo.Input(name, options=folder_paths.get_filename_list(folder), tooltip=tooltip)


def _with_metadata(model, path):
    meta = {k: v for k, v in read_metadata(path).items() if k.startswith("nag.")}
    if nag_metadata.null_timestep(meta) is None:
        raise NoiseAwarenessError(f"{path}: no comfy-nag metadata (nag.null_timestep). This file was not written by "
                                  "comfy-nag's trainer, or a tool stripped its metadata: use the stock loader and set the "
                                  "guidance node's null timestep source to 'auto' or 'manual'")
    m = model.clone()
    m.set_attachments(ATTACH_META, meta)
    return m


class NoiseAwarenessEstimatorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessEstimatorLoader",
            display_name="Load Noise-Level Estimator",
            category=LOADERS,
            description="Loads a comfy-nag noise-level estimator (.safetensors) from models/noise_estimators.",
            inputs=[file_input("estimator_name", ESTIMATOR_FOLDER,
                               "a .safetensors estimator from models/noise_estimators (python -m training estimator)")],
            outputs=[Estimator.Output(display_name="estimator")],
        )

    @classmethod
    @clear_errors
    def execute(cls, estimator_name):
        path = folder_paths.get_full_path_or_raise(ESTIMATOR_FOLDER, estimator_name)
        with torch.inference_mode(False):  # weights must be usable for autograd inside ComfyUI's inference mode
            est, meta = NoiseLevelEstimator.load(path)
        est.eval().requires_grad_(False)
        return io.NodeOutput((est, meta))


class NoiseAwarenessDiffusionModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessDiffusionModelLoader",
            display_name="Load Diffusion Model (Noise Awareness)",
            category=LOADERS,
            description="Like 'Load Diffusion Model', and attaches the file's comfy-nag metadata (null timestep) so the "
                        "classifier-free guidance node needs no manual value.",
            inputs=[file_input("unet_name", "diffusion_models",
                               "a model fine-tuned by comfy-nag's trainer (it carries the null timestep)")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, unet_name):
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        return io.NodeOutput(_with_metadata(comfy.sd.load_diffusion_model(path), path))


class NoiseAwarenessCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessCheckpointLoader",
            display_name="Load Checkpoint (Noise Awareness)",
            category=LOADERS,
            description="Like 'Load Checkpoint', and attaches the file's comfy-nag metadata (null timestep).",
            inputs=[file_input("ckpt_name", "checkpoints",
                               "a checkpoint fine-tuned by comfy-nag's trainer (it carries the null timestep)")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, ckpt_name):
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
        return io.NodeOutput(_with_metadata(model, path), clip, vae)


class NoiseAwarenessLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NoiseAwarenessLoraLoader",
            display_name="Load LoRA (Noise Awareness, model only)",
            category=LOADERS,
            description="Like 'LoraLoaderModelOnly', and attaches the LoRA's comfy-nag metadata (null timestep) written "
                        "by the trainer, so the classifier-free guidance node needs no manual value.",
            inputs=[
                model_input("the base model the LoRA was trained on"),
                file_input("lora_name", "loras", "a LoRA trained by comfy-nag's trainer (it carries the null timestep)"),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="how strongly the LoRA modifies the model; 1 = as trained"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    @clear_errors
    def execute(cls, model, lora_name, strength_model):
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        lora = comfy.utils.load_torch_file(path, safe_load=True)
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength_model, 0)
        return io.NodeOutput(_with_metadata(patched, path))
