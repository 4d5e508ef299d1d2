"""ComfyUI nodes of comfy-nag (Noise Awareness Guidance; not Normalized Attention Guidance).

Thin V3 nodes over ``comfy_nag`` (the math) and ``hooks`` (the ComfyUI glue).  Importing this
package registers the ``noise_estimators`` model folder.
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


register_folders()

from .guidance_nodes import NoiseAwarenessCFGuider, NoiseAwarenessClassifierFree, NoiseAwarenessClassifierGuided  # noqa: E402
from .loader_nodes import (NoiseAwarenessCheckpointLoader, NoiseAwarenessDiffusionModelLoader,  # noqa: E402
                           NoiseAwarenessEstimatorLoader, NoiseAwarenessLoraLoader)
from .shift_nodes import NoiseAwarenessShiftPlot, NoiseAwarenessShiftRecorder  # noqa: E402

NODES = [
    NoiseAwarenessClassifierFree,
    NoiseAwarenessClassifierGuided,
    NoiseAwarenessCFGuider,
    NoiseAwarenessEstimatorLoader,
    NoiseAwarenessDiffusionModelLoader,
    NoiseAwarenessCheckpointLoader,
    NoiseAwarenessLoraLoader,
    NoiseAwarenessShiftRecorder,
    NoiseAwarenessShiftPlot,
]


class NoiseAwarenessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
