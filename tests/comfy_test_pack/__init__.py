"""Test-only ComfyUI pack: CLIP-free conditioning for the tiny models, and in-process stand-ins for the video and
Qwen-Image models and their VAEs, whose smallest loadable files are far too big to make at test time (never shipped
to users)."""
import os
import sys

import torch


class NoiseAwarenessTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 77}),
                             "dim": ("INT", {"default": 64, "min": 1, "max": 4096}),
                             "pooled_dim": ("INT", {"default": 32, "min": 0, "max": 4096})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, tokens, dim, pooled_dim):
        g = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, pooled_dim, generator=g)} if pooled_dim else {}
        return ([[torch.randn(1, tokens, dim, generator=g), extra]],)


TINY_MODELS = ("wan21", "wan22-5b", "qwen-image")


class NoiseAwarenessTestModel:
    """A tiny seeded model of ComfyUI's own detection (tests/comfy_support.py), built in process: a file loadable by
    UNETLoader needs WAN's 128-wide heads and Qwen-Image's 3072-wide blocks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (list(TINY_MODELS),), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, family, seed):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
        try:
            import comfy_support as cs
        finally:
            sys.path.pop(0)
        make = {"wan21": cs.tiny_wan21_model, "wan22-5b": cs.tiny_wan22_5b_model, "qwen-image": cs.tiny_qwen_image_model}
        return (cs.patcher(make[family](seed)),)


class NoiseAwarenessTestVAE:
    """Stands in for VAELoader (the WAN VAEs have 127M and 705M parameters); only the test decoder reads it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self):
        return ("test vae",)


class NoiseAwarenessTestDecode:
    """Stands in for VAEDecode: latents [B, C, (T,) H, W] -> images [B*T, 8H, 8W, 3] from their first three channels."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "testing"

    def decode(self, samples, vae):
        x = samples["samples"][:, :3].float()
        if x.dim() == 5:
            x = x.transpose(1, 2).reshape(-1, 3, *x.shape[-2:])
        x = torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest")
        return (torch.sigmoid(x).permute(0, 2, 3, 1).contiguous(),)


NODE_CLASS_MAPPINGS = {"NoiseAwarenessTestConditioning": NoiseAwarenessTestConditioning,
                       "NoiseAwarenessTestModel": NoiseAwarenessTestModel, "NoiseAwarenessTestVAE": NoiseAwarenessTestVAE,
                       "NoiseAwarenessTestDecode": NoiseAwarenessTestDecode}
