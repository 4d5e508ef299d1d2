"""ComfyUI nodes of comfy-nag (Noise Awareness Guidance; not Normalized Attention Guidance).

Thin V3 nodes over ``comfy_nag`` (the math) and the ComfyUI glue beside them:

* ``guidance_nodes`` / ``loader_nodes`` / ``shift_nodes``: the node classes (``common``: node types, categories
  and the error wrapper);
* ``inputs`` (the NAG inputs: options, widgets, defaults, one parse), ``configure`` (the one check of them and
  the scale-0 decision, :class:`~.configure.NagConfig` with the NAG addition);
* ``classifier_free`` (the null-time wrapper, the model patch), ``null_branch`` (the null branch inside ComfyUI:
  learned, or from an estimator), ``classifier_guided`` (the estimator patch), ``guider`` (a CFGGuider);
* ``model_info`` (what is read off a ComfyUI model, estimator checks), ``windows`` (guidance windows),
  ``folders`` (the ``noise_estimators`` model folder, registered by the pack's entry point before it
  imports the nodes).

Modules here never import this file: it only lists the nodes and re-exports what the pack's entry point uses.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .folders import register_folders

__all__ = ["NoiseAwarenessExtension", "node_list", "register_folders"]


def node_list() -> list[type[io.ComfyNode]]:
    from .guidance_nodes import (NoiseAwarenessAnyCheckpoint, NoiseAwarenessCFGuider, NoiseAwarenessClassifierFree,
                                 NoiseAwarenessClassifierGuided, NoiseAwarenessKSampler)
    from .loader_nodes import (NoiseAwarenessCheckpointLoader, NoiseAwarenessDiffusionModelLoader,
                               NoiseAwarenessEstimatorLoader, NoiseAwarenessLoraLoader)
    from .shift_nodes import NoiseAwarenessShiftPlot, NoiseAwarenessShiftRecorder

    return [NoiseAwarenessKSampler, NoiseAwarenessAnyCheckpoint, NoiseAwarenessClassifierFree, NoiseAwarenessClassifierGuided,
            NoiseAwarenessCFGuider,
            NoiseAwarenessEstimatorLoader, NoiseAwarenessDiffusionModelLoader, NoiseAwarenessCheckpointLoader,
            NoiseAwarenessLoraLoader, NoiseAwarenessShiftRecorder, NoiseAwarenessShiftPlot]


class NoiseAwarenessExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()
