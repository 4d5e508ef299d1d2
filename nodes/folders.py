"""The pack's model folder, ``models/noise_estimators``, registered with ComfyUI's folder_paths.

:func:`register_folders` is called by the pack's entry point before it imports the nodes (ComfyUI
0.3.48-0.3.64 never calls ``ComfyExtension.on_load``, so registering there would leave the folder
unknown when the estimator loader lists its files).
"""
from __future__ import annotations

import os

import folder_paths

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
