"""Figures for noise-shift readouts (matplotlib, Agg; no pyplot global state).

Units: log-SNR on the level axes (higher = cleaner, lower = noisier).  Functions return matplotlib
Figures (legends outside the data); :func:`to_pil` renders one to a PIL image (for ComfyUI IMAGE
outputs and PNG files).
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f"]
FORWARD_COLOR = "#555555"  # readouts of true forward states (labels starting "forward")
WINDOW_COLOR = "#ffd54f"
STEP_LABEL = "sampler step (noise → finished sample)"
LEVEL_LABEL = "estimated noise level\n(log-SNR, higher = cleaner)"
SCHEDULED = "scheduled level (what the sampler assumes)"
WINDOW_NOTE = "guidance window (where NAG acts)"


def band_note(label: str | None = None) -> str:
    """The legend entry of the shaded spread (``label``: the one run it is drawn for)."""
    return (f"{label}: " if label else "") + "spread over samples, ±1 std"


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
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
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


def _band_runs(runs: list[dict], bands: str) -> set[int]:
    """Indices of the runs whose spread is shaded: ``"auto"`` (every run when there are at most two,
    else the first only, so the bands never hide the lines), ``"first"``, ``"all"`` or ``"none"``."""
    if bands not in ("auto", "first", "all", "none"):
        raise ValueError(f"bands must be 'auto', 'first', 'all' or 'none', got {bands!r}")
    if bands == "none" or not runs:
        return set()
    return set(range(len(runs))) if bands == "all" or (bands == "auto" and len(runs) <= 2) else {0}


def _width(k: int) -> float:
    """Line width of the k-th run: the first (the reference, e.g. the baseline) wide, drawn first, so a
    run that coincides with it shows as a thin line on a wide one instead of hiding it."""
    return 3.2 if k == 0 else 1.5


def _shade_window(ax, window) -> None:
    if window is not None:
        ax.axvspan(window[0] - 0.5, window[1] + 0.5, color=WINDOW_COLOR, alpha=0.3, lw=0, label=WINDOW_NOTE, zorder=0)


def _level_panel(ax, runs, palette, window, banded: set[int]) -> None:
    """Estimated level per step against the scheduled one; shaded spread for the ``banded`` runs."""
    _shade_window(ax, window)
    ax.plot(np.arange(len(runs[0]["nominal"])), runs[0]["nominal"], "k--", lw=1.2, label=SCHEDULED, zorder=3)
    for k, r in enumerate(runs):
        mean = np.asarray(r["estimated_mean"], dtype=float)
        steps = np.arange(len(mean))
        if k in banded and r.get("estimated_std") is not None:
            std = np.asarray(r["estimated_std"], dtype=float)
            ax.fill_between(steps, mean - std, mean + std, color=palette[r["label"]], alpha=0.1, lw=0, zorder=1)
        ax.plot(steps, mean, color=palette[r["label"]], lw=_width(k), label=r["label"], zorder=4)
    ax.set_title("noise level of the sampler's states", fontsize=10)
    ax.set_ylabel(LEVEL_LABEL)


def _gap_panel(ax, runs, palette, window) -> None:
    """The per-step shift: estimated level minus that of true noisy data (or the scheduled level)."""
    _shade_window(ax, window)
    ax.axhline(0, color="k", lw=0.9, zorder=2)
    has_ref = any(r.get("reference_mean") is not None for r in runs)
    for k, r in enumerate(runs):
        mean = np.asarray(r["estimated_mean"], dtype=float)
        base = np.asarray(r["reference_mean"] if r.get("reference_mean") is not None else r["nominal"], dtype=float)
        ax.plot(np.arange(len(mean)), mean - base, color=palette[r["label"]], lw=_width(k), zorder=4)
    what = "true noisy data" if has_ref else "the scheduled level"
    ax.set_title(f"noise shift: the states against {what}", fontsize=10)
    ax.set_ylabel("shift (log-SNR)\nbelow 0: noisier than it should be")
    scaled = [r for r in runs if r.get("scale_mean") is not None and any(v is not None for v in r["scale_mean"])]
    if scaled:  # what a self-setting scale chose at each step, on its own axis
        twin = ax.twinx()
        for r in scaled:
            v = np.array([np.nan if u is None else u for u in r["scale_mean"]], dtype=float)
            twin.plot(np.arange(len(v)), v, "--", color=palette[r["label"]], lw=1.2, zorder=3)
        twin.set_ylabel("scale chosen (dashed; auto rule)")
        twin.set_ylim(bottom=0)


def _legend(fig, handles_from, extra=(), first=(), ncols: int = 4) -> None:
    """One legend for the whole figure, under the panels (never on the data): the labels in ``first``
    (the runs), then the rest (scheduled level, true data, window, spread)."""
    found = {}
    for ax in handles_from:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_"):
                found.setdefault(lab, h)
    found.update({h.get_label(): h for h in extra})
    labels = [lab for lab in first if lab in found] + [lab for lab in found if lab not in first]
    fig.legend([found[lab] for lab in labels], labels, loc="outside lower center", ncols=min(len(labels), ncols),
               fontsize=8.5, frameon=False)


def shift_figure(runs: list[dict], window: tuple[int, int] | None = None, title: str = "Noise shift",
                 colors: dict | None = None, bands: str = "auto", kde: dict | None = None,
                 readout: str | None = None, note: str | None = None) -> Figure:
    """Two panels over sampler steps: estimated vs scheduled log-SNR, and their gap (the noise shift);
    with ``kde``, a row below with :func:`kde_figure`'s panels.  One legend, below the panels.

    ``runs``: dicts with ``label``, ``nominal`` [N] and ``estimated_mean`` [N], optional
    ``estimated_std`` [N] (the spread across the batch, shaded per ``bands``: :func:`_band_runs`) and
    ``reference_mean`` [N] (the readout of true forward samples; the gap is taken against it when given) and
    ``scale_mean`` [N] (the scale a self-setting rule chose per step, None where it did not act; dashed, own axis).
    ``window``: (first_step, last_step) where guidance is active, shaded; ``colors``: fixed colours
    per label (:func:`assign_colors`); ``kde``: ``{"levels", "groups"}`` as :func:`kde_figure` takes, optional
    ``"steps"`` (the sampler step of each level);
    ``readout``: what read the levels and ``note`` a line for the reader (both under the title).
    """
    from matplotlib.patches import Patch

    fig = Figure(figsize=(10, 6.6 if kde else 4.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.2, 1)) if kde else (fig, None)
    ax1, ax2 = top.subplots(1, 2, width_ratios=(1, 1.35))
    labels = [r["label"] for r in runs] + ([g for g in kde["groups"] if g not in {r["label"] for r in runs}] if kde else [])
    palette = assign_colors(labels, colors)
    banded = _band_runs(runs, bands)
    _level_panel(ax1, runs, palette, window, banded)
    _gap_panel(ax2, runs, palette, window)
    for ax in (ax1, ax2):
        ax.set_xlabel(STEP_LABEL)
        ax.grid(alpha=0.25)
    axes = [ax1]
    if kde:
        axes += list(_kde_panels(bottom, kde["levels"], kde["groups"], palette, kde.get("steps")))
        bottom.suptitle("late in sampling: the estimated level of each sample (the closer a curve to the grey one, "
                        "the more the states look like true noisy data)", fontsize=9.5)
    shaded = [k for k in sorted(banded) if runs[k].get("estimated_std") is not None]
    note_of = band_note(runs[shaded[0]]["label"] if len(shaded) == 1 else None)
    _legend(fig, axes, [Patch(facecolor="#999999", alpha=0.25, label=note_of)] if shaded else [],
            first=[r["label"] for r in runs])
    if note and top is not fig:
        top.suptitle(note, fontsize=9, color="#333333")
    fig.suptitle(title + (f"\nread by: {readout}" if readout else "") + (f"\n{note}" if note and top is fig else ""),
                 fontsize=11)
    return fig


def _kde_panels(fig, levels, groups, palette, steps=None):
    """One panel per scheduled level on ``fig`` (a Figure or SubFigure): KDE of each group's estimates;
    ``steps``: the sampler step of each level (named in the panel titles)."""
    axes = np.atleast_1d(fig.subplots(1, len(levels)))
    runs = [g for g in groups if palette[g] != FORWARD_COLOR]  # the first sampler run wide (_width), true data medium
    widths = {g: 2.0 if palette[g] == FORWARD_COLOR else _width(runs.index(g)) for g in groups}
    for j, (ax, lam) in enumerate(zip(axes, levels)):
        vals = [np.asarray(v[j]) for v in groups.values()]
        lo = min(float(np.nanmin(v)) for v in vals) - 0.5
        hi = max(float(np.nanmax(v)) for v in vals) + 0.5
        grid = np.linspace(lo, hi, 300)
        ax.axvline(lam, color="k", ls="--", lw=1.2, label=SCHEDULED)
        for name, v in groups.items():
            ax.plot(grid, gaussian_kde(v[j], grid), color=palette[name], lw=widths[name], label=name)
        ax.set_title((f"step {steps[j]}, " if steps is not None else "") + f"scheduled {lam:.2f}", fontsize=9)
        ax.set_xlabel("estimated log-SNR")
        ax.set_yticks([])
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("share of samples")
    return axes


def kde_figure(levels: list[float], groups: dict[str, list[np.ndarray]], title: str = "Estimated noise level",
               colors: dict | None = None) -> Figure:
    """One panel per scheduled (nominal) log-SNR level: KDE of the estimated level of each group's states.

    ``groups[name][j]`` holds the per-sample estimates at ``levels[j]`` (e.g. forward samples,
    the baseline sampler, the sampler with NAG), like the paper's KDE figure.  ``colors``: as in
    :func:`shift_figure`.
    """
    palette = assign_colors(list(groups), colors)
    fig = Figure(figsize=(10.5, 2.8), layout="constrained")
    axes = _kde_panels(fig, levels, groups, palette)
    _legend(fig, axes[:1])
    fig.suptitle(title, fontsize=11)
    return fig
