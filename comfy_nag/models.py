"""Small reference networks with noise-condition dropout and class dropout.

Both networks share one call convention::

    net(x, t, y=None, drop_t=None) -> prediction (same shape as x)

* ``x``: network-space state (``Schedule.native``), ``t``: network time [B] (schedule units),
  ``y``: class ids [B] with ``num_classes`` meaning "no class" (DiT's null-class row),
* ``drop_t``: bool [B], rows whose noise condition is replaced by the null condition.

The null condition (docs/method.md, :class:`NullCondition`) is ``mode="sentinel"`` by default: the timestep
input is replaced by the null ``timestep`` (e.g. -1000 network units), outside every real value, so the
weights stay a standard file with no new parameters.  ``mode="learned"`` instead swaps the
timestep embedding for a learned vector (the alternative the testbed compares).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedules import SamplingKind

VP_NULL = SamplingKind.DISCRETE.default_null_timestep()  # the default: a 0..999 discrete-time network
NULL_MODES = ("sentinel", "learned")


@dataclass(frozen=True)
class NullCondition:
    """How a network takes the null (noise-unconditional) condition: ``mode="sentinel"`` replaces the timestep input
    by ``timestep`` (network units); ``"learned"`` swaps the timestep embedding for a learned vector."""

    mode: str = "sentinel"
    timestep: float = VP_NULL

    def __post_init__(self):
        if self.mode not in NULL_MODES:
            raise ValueError(f"null_mode must be 'sentinel' or 'learned', got {self.mode!r}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT/ADM sinusoidal embedding of (possibly negative or fractional) network times."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Conditioning(nn.Module):
    """Noise-level embedding (+ class embedding) with null handling for both."""

    def __init__(self, hidden: int, num_classes: int = 0, null: NullCondition = NullCondition(), freq_dim: int = 256):
        super().__init__()
        null_mode = null.mode
        self.freq_dim, self.null_mode, self.null_timestep, self.num_classes = freq_dim, null_mode, float(null.timestep), num_classes
        self.t_mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.null_emb = nn.Parameter(torch.zeros(hidden)) if null_mode == "learned" else None
        self.y_embed = nn.Embedding(num_classes + 1, hidden) if num_classes else None

    def forward(self, t, y=None, drop_t=None):
        t = t.float()
        if drop_t is not None and self.null_mode == "sentinel":
            t = torch.where(drop_t, torch.full_like(t, self.null_timestep), t)
        emb = self.t_mlp(timestep_embedding(t, self.freq_dim))
        if drop_t is not None and self.null_mode == "learned":
            emb = torch.where(drop_t[:, None], self.null_emb.to(emb).expand_as(emb), emb)
        if self.y_embed is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.y_embed(y)
        return emb


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class _MLPBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden * 2), nn.SiLU(), nn.Linear(hidden * 2, hidden))
        self.ada = nn.Linear(hidden, 3 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h, c):
        shift, scale, gate = self.ada(F.silu(c)).chunk(3, -1)
        return h + (1 + gate) * self.mlp(_modulate(self.norm(h), shift, scale))


class MLPDenoiser(nn.Module):
    """Residual MLP with adaLN conditioning for low-dimensional data [B, D]."""

    def __init__(self, dim: int, num_classes: int = 0, hidden: int = 128, depth: int = 3,
                 null: NullCondition = NullCondition(), freq_dim: int = 64):
        super().__init__()
        self.kwargs = dict(dim=dim, num_classes=num_classes, hidden=hidden, depth=depth,
                           null_mode=null.mode, null_timestep=null.timestep, freq_dim=freq_dim)
        self.num_classes, self.in_shape = num_classes, (dim,)
        self.cond = Conditioning(hidden, num_classes, null, freq_dim)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, t, y=None, drop_t=None):
        c = self.cond(t, y, drop_t)
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, c)
        return self.out(self.out_norm(h))


# ---------------------------------------------------------------------------------------
# DiT (Peebles & Xie 2023): patchify -> adaLN-Zero transformer blocks -> unpatchify.
# Used with a DiscreteVP schedule + eps (DiT) or a Flow schedule + velocity (SiT).
# ---------------------------------------------------------------------------------------

def _sincos_2d(dim: int, grid: int) -> torch.Tensor:
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim / 4))

    def emb(p):
        a = p.reshape(-1, 1) * omega[None]
        return torch.cat([a.sin(), a.cos()], 1)

    return torch.cat([emb(yy), emb(xx)], 1)  # [grid*grid, dim]


class _DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        m = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, m), nn.GELU(approximate="tanh"), nn.Linear(m, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).unsqueeze(1).chunk(6, -1)
        B, N, D = x.shape
        q, k, v = self.qkv(_modulate(self.norm1(x), sh1, sc1)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        x = x + g1 * self.proj(a)
        return x + g2 * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class DiT(nn.Module):
    """Class-conditional DiT/SiT-style transformer for [B, C, H, W] inputs (H = W = input_size)."""

    MLP_RATIO = 4.0  # DiT's

    def __init__(self, input_size: int = 16, patch_size: int = 2, in_channels: int = 1, hidden: int = 128,
                 depth: int = 4, heads: int = 4, num_classes: int = 10, null: NullCondition = NullCondition()):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} must be a multiple of patch_size {patch_size}")
        self.kwargs = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden=hidden,
                           depth=depth, heads=heads, num_classes=num_classes, mlp_ratio=self.MLP_RATIO,
                           null_mode=null.mode, null_timestep=null.timestep)
        self.num_classes, self.in_shape = num_classes, (in_channels, input_size, input_size)
        self.p, self.c = patch_size, in_channels
        self.grid = input_size // patch_size
        self.x_embed = nn.Conv2d(in_channels, hidden, patch_size, patch_size)
        self.register_buffer("pos", _sincos_2d(hidden, self.grid)[None], persistent=False)
        self.cond = Conditioning(hidden, num_classes, null)
        self.blocks = nn.ModuleList(_DiTBlock(hidden, heads, self.MLP_RATIO) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, patch_size * patch_size * in_channels)
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cond.t_mlp[0].weight, std=0.02)
        nn.init.normal_(self.cond.t_mlp[2].weight, std=0.02)
        if self.cond.y_embed is not None:
            nn.init.normal_(self.cond.y_embed.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero
            nn.init.zeros_(blk.ada[1].weight)
            nn.init.zeros_(blk.ada[1].bias)
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t, y=None, drop_t=None):
        B = x.shape[0]
        h = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos
        c = self.cond(t, y, drop_t)
        for blk in self.blocks:
            h = blk(h, c)
        sh, sc = self.ada(c).unsqueeze(1).chunk(2, -1)
        h = self.out(_modulate(self.norm(h), sh, sc))
        g, p = self.grid, self.p
        return h.reshape(B, g, g, p, p, self.c).permute(0, 5, 1, 3, 2, 4).reshape(B, self.c, g * p, g * p)


ARCHS = {"mlp": MLPDenoiser, "dit": DiT}


def build(arch: str, **kwargs) -> nn.Module:
    """A reference network from its ``kwargs`` as files store them (``net.kwargs``: flat, the null condition as
    ``null_mode``/``null_timestep``; DiT's ``mlp_ratio``, which must be DiT's own)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown reference architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    kwargs = dict(kwargs)
    null = NullCondition(kwargs.pop("null_mode", "sentinel"), float(kwargs.pop("null_timestep", VP_NULL)))
    if arch == "dit" and float(kwargs.pop("mlp_ratio", DiT.MLP_RATIO)) != DiT.MLP_RATIO:
        raise ValueError(f"this DiT file has an MLP ratio other than {DiT.MLP_RATIO}; comfy-nag's reference DiT has no other")
    return ARCHS[arch](**kwargs, null=null)


def arch_of(net: nn.Module) -> str:
    for name, cls in ARCHS.items():
        if isinstance(net, cls):
            return name
    raise ValueError(f"{type(net).__name__} is not a comfy-nag reference model")
