"""comfy-nag's standalone trainer: ``python -m training <command>`` from the repository root.

Modules (each short, named for what it holds):

* ``__main__``       - the command line;  ``api`` - the same commands as Python functions
* ``config``         - the config schema: sections and keys, defaults, checks and help
* ``config_loading`` - a validated config from a TOML/YAML file and ``--set`` overrides
* ``preflight``      - what each command needs before any work: keys, combinations, paths
* ``cpu_threads``    - ``--threads``: torch's CPU threads for a command
* ``latent_cache``   - the cache file format: writing, reading and describing a latent cache
* ``prepare``        - ``prepare``: a dataset -> a latent cache;  ``generate`` - the checkpoint's own samples as one
* ``sources``        - image folders (+ captions) and digits;  ``encoders`` - pixels and captions -> latents, caption tables
* ``video``          - folders of clips (video files through PyAV, or folders of frame images) for video families
* ``shards``         - ``prepare``'s resumable work in progress, one file per batch
* ``adapters``       - model adapters: reference DiT/SiT and ComfyUI families; native-format export
* ``latent_spaces``  - which latent space a cache holds and which family an estimator is for (image or video latents)
* ``comfyui``        - ComfyUI as a library (import, loading through its detection, encoders)
* ``lora``           - a plain LoRA saved in the kohya key format (or ComfyUI's)
* ``tasks``          - what is trained: noise-condition dropout fine-tuning, noise-level estimators
* ``loop``           - the accelerate loop: run or resume a task to its end, accumulation, mixed precision, checkpoints
* ``seeding``        - the seeded data order and per-micro-batch generators;  ``ema`` - EMA of the trained weights
* ``metrics``        - ``metrics.jsonl`` and the monitor's printed lines
* ``state``          - checkpoint files (safetensors + JSON, atomic)
* ``monitor``        - noise-shift check and sample grids;  ``inspection`` - ``inspect``
* ``bench``          - step-time cost of noise-condition dropout

Importing this package imports neither accelerate nor ComfyUI.
"""
