"""ComfyUI entry point of comfy-nag (Noise Awareness Guidance).

Deliberately free of imports at load time: ComfyUI imports this file as a package named after
the install folder (any name, possibly with a hyphen), and pytest imports it as a bare module.
Everything inside the pack is reached through relative imports.
"""


async def comfy_entrypoint():
    from .nodes import NoiseAwarenessExtension, register_folders

    register_folders()
    return NoiseAwarenessExtension()
