"""Test-only ComfyUI pack: CLIP-free conditioning for the tiny models (never shipped to users)."""
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


NODE_CLASS_MAPPINGS = {"NoiseAwarenessTestConditioning": NoiseAwarenessTestConditioning}
