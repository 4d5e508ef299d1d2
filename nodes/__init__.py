"""ComfyUI nodes of comfy-nag (Noise Awareness Guidance; not Normalized Attention Guidance).

Thin V3 nodes over ``comfy_nag`` (the math) and ``hooks``/``guider`` (the ComfyUI glue).  The
``noise_estimators`` model folder is registered by :func:`register_folders`, which the pack's
entry point calls before it imports the nodes (ComfyUI 0.3.48-0.3.64 never calls
``ComfyExtension.on_load``, so registering there would leave the folder unknown).
"""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

ESTIMATOR_FOLDER = "noise_estimators"


def register_folders() -> None:
    """``models/noise_estimators`` (extra-model-paths YAML entries keep working)."""
    default = os.path.join(folder_paths.models_dir, ESTIMATOR_FOLDER)
    if ESTIMATOR_FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(ESTIMATOR_FOLDER, default)
        paths, _ = folder_paths.folder_names_and_paths[ESTIMATOR_FOLDER]
        folder_paths.folder_names_and_paths[ESTIMATOR_FOLDER] = (paths, {".safetensors"})
    else:
        folder_paths.folder_names_and_paths[ESTIMATOR_FOLDER] = ([default], {".safetensors"})


def node_list() -> list[type[io.ComfyNode]]:
    from .guidance_nodes import (NoiseAwarenessCFGuider, NoiseAwarenessClassifierFree, NoiseAwarenessClassifierGuided,
                                 NoiseAwarenessKSampler)
    from .loader_nodes import (NoiseAwarenessCheckpointLoader, NoiseAwarenessDiffusionModelLoader,
                               NoiseAwarenessEstimatorLoader, NoiseAwarenessLoraLoader)
    from .shift_nodes import NoiseAwarenessShiftPlot, NoiseAwarenessShiftRecorder

    return [NoiseAwarenessKSampler, NoiseAwarenessClassifierFree, NoiseAwarenessClassifierGuided, NoiseAwarenessCFGuider,
            NoiseAwarenessEstimatorLoader, NoiseAwarenessDiffusionModelLoader, NoiseAwarenessCheckpointLoader,
            NoiseAwarenessLoraLoader, NoiseAwarenessShiftRecorder, NoiseAwarenessShiftPlot]


class NoiseAwarenessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()
