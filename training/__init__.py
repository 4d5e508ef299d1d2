"""comfy-nag's standalone trainer: ``python -m training <command>`` from the repository root.

Modules (each short, named for what it holds):

* ``__main__``    - the command line;  ``api`` - the same commands as Python functions
* ``config``      - the config schema (TOML/YAML + ``--set`` overrides), validated up front
* ``data``        - ``prepare``: images + labels/captions -> a latent cache; reading caches
* ``adapters``    - model adapters: reference DiT/SiT and ComfyUI families; native-format export; what an estimator trains for
* ``comfyui``     - ComfyUI as a library (import, loading through its detection, encoders)
* ``lora``        - a plain LoRA saved in the kohya key format (or ComfyUI's)
* ``tasks``       - what is trained: noise-condition dropout fine-tuning, noise-level estimators
* ``loop``        - the accelerate loop: accumulation, mixed precision, EMA, checkpoints, resume
* ``state``       - checkpoint files (safetensors + JSON, atomic)
* ``monitor``     - noise-shift check and sample grids;  ``inspection`` - ``inspect``
* ``bench``       - step-time cost of noise-condition dropout

Importing this package imports neither accelerate nor ComfyUI.
"""
