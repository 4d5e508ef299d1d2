"""Figures for noise-shift readouts (matplotlib, Agg; no pyplot global state).

Units: log-SNR on the level axes (lower = noisier).  Functions return matplotlib Figures;
:func:`to_pil` renders one to a PIL image (for ComfyUI IMAGE outputs and PNG files).
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f"]
FORWARD_COLOR = "#555555"  # readouts of true forward states (labels starting "forward")
BAND_NOTE = "band: ±1 std of the readout across samples"


def assign_colors(labels, fixed: dict | None = None) -> dict[str, str]:
    """One distinct colour per label: ``fixed`` ones (e.g. a study's colour per method, the same in
    every figure), forward states grey, the rest from :data:`COLORS` in order, skipping taken colours."""
    fixed = fixed or {}
    out = {lab: fixed[lab] for lab in labels if lab in fixed}
    out.update({lab: FORWARD_COLOR for lab in labels if lab.startswith("forward") and lab not in out})
    free = iter([c for c in COLORS if c not in out.values()] * (len(labels) + 1))
    for lab in labels:
        if lab not in out:
            out[lab] = next(free)
    return out


def to_pil(fig: Figure, dpi: int = 100):
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def gaussian_kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density estimate with Silverman's bandwidth."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return np.zeros_like(grid)
    bw = max(1.06 * v.std() * v.size ** -0.2, 1e-3)
    z = (grid[:, None] - v[None]) / bw
    return np.exp(-0.5 * z * z).sum(1) / (v.size * bw * np.sqrt(2 * np.pi))


def shift_figure(runs: list[dict], window: tuple[int, int] | None = None, title: str = "Noise shift",
                 colors: dict | None = None) -> Figure:
    """Two panels over sampler steps: nominal vs estimated log-SNR, and their gap.

    ``runs``: dicts with ``label``, ``nominal`` [N] and ``estimated_mean`` [N], optional
    ``estimated_std`` [N] (drawn as a band across the batch) and ``reference_mean`` [N] (the
    readout of true forward samples; the gap is taken against it when given).
    ``window``: (first_step, last_step) where guidance is active, shaded; ``colors``: fixed colours
    per label (:func:`assign_colors`).
    """
    from matplotlib.patches import Patch

    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    palette = assign_colors([r["label"] for r in runs], colors)
    for k, r in enumerate(runs):
        c = palette[r["label"]]
        steps = np.arange(len(r["nominal"]))
        mean = np.asarray(r["estimated_mean"], dtype=float)
        std = np.asarray(r.get("estimated_std", np.zeros_like(mean)), dtype=float)
        if k == 0:
            ax1.plot(steps, r["nominal"], "k--", lw=1.2, label="nominal")
        ax1.plot(steps, mean, color=c, lw=1.6, label=r["label"])
        ax1.fill_between(steps, mean - std, mean + std, color=c, alpha=0.15)
        base = np.asarray(r.get("reference_mean", r["nominal"]), dtype=float)
        gap = mean - base
        ax2.plot(steps, gap, color=c, lw=1.6, label=r["label"])
        ax2.fill_between(steps, gap - std, gap + std, color=c, alpha=0.12)
    ax2.axhline(0, color="k", lw=0.8)
    for ax in (ax1, ax2):
        if window is not None:
            ax.axvspan(window[0] - 0.5, window[1] + 0.5, color="#ffd54f", alpha=0.25, lw=0, label="guidance window")
        ax.set_xlabel("sampler step (noise -> data)")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("log-SNR (lower = noisier)")
    ax1.set_title("nominal vs estimated noise level")
    ax2.set_ylabel("estimated - reference log-SNR")
    ax2.set_title("noise shift (< 0: states look noisier)")
    band = Patch(facecolor="#888888", alpha=0.3, label=BAND_NOTE)
    for ax, loc in ((ax1, "upper left"), (ax2, "lower left")):
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + [band], fontsize=8, loc=loc)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def kde_figure(levels: list[float], groups: dict[str, list[np.ndarray]], title: str = "Estimated noise level",
               colors: dict | None = None) -> Figure:
    """One panel per nominal log-SNR level: KDE of the estimated level of each group's states.

    ``groups[name][j]`` holds the per-sample estimates at ``levels[j]`` (e.g. forward samples,
    the baseline sampler, the sampler with NAG), like the paper's KDE figure.  ``colors``: as in
    :func:`shift_figure`.
    """
    palette = assign_colors(list(groups), colors)
    fig = Figure(figsize=(3.2 * len(levels), 3.0))
    axes = np.atleast_1d(fig.subplots(1, len(levels)))
    for j, (ax, lam) in enumerate(zip(axes, levels)):
        vals = [np.asarray(v[j]) for v in groups.values()]
        lo = min(float(np.nanmin(v)) for v in vals) - 0.5
        hi = max(float(np.nanmax(v)) for v in vals) + 0.5
        grid = np.linspace(lo, hi, 300)
        for name, v in groups.items():
            ax.plot(grid, gaussian_kde(v[j], grid), color=palette[name], lw=1.5, label=name)
        ax.axvline(lam, color="k", ls="--", lw=1)
        ax.set_title(f"nominal log-SNR {lam:.2f}", fontsize=9)
        ax.set_xlabel("estimated log-SNR")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
