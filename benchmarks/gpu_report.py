"""Markdown tables of a ``benchmarks/gpu_check.py`` results folder (``gpu_check.py --report DIR``)."""
from __future__ import annotations

import json
from pathlib import Path


def table(rows: list[list], header: list[str]) -> str:
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def load(folder: Path, part: str) -> dict | None:
    path = folder / f"{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


def banner(d: dict) -> str:
    toy = "**TOY RUN: tiny models on a CPU; these numbers say nothing about real sizes.** " if d.get("toy") else ""
    wall = f", {d['wall_s']} s" if d.get("wall_s") is not None else ""
    return f"{toy}Device: {d.get('device')}, torch {d.get('torch')}{wall}."


def problem(d: dict) -> str:
    return " ".join(f"**{k}**: {d[k]}" for k in ("skipped", "error") if d.get(k))


def guidance(d: dict) -> str:
    out = [f"### guidance\n\n{banner(d)} {problem(d)}"]
    for name, m in (d.get("models") or {}).items():
        if "configurations" not in m:
            out.append(f"\n{name}: {problem(m)}")
            continue
        weights = f" (weights {m['weights_gib']:.2f} GiB)" if m.get("weights_gib") is not None else ""
        out.append(f"\n{name}: {m['parameters'] / 1e6:.1f} M parameters, latent {m['latent']}, {m['dtype']}, "
                   f"{m['text_tokens']} text tokens, {m['steps']} steps x {m['rounds']} rounds{weights}\n")
        confs = m["configurations"]
        errs = any("error" in v for v in confs.values())
        rows = [[k, v.get("s_per_step"), v.get("ratio"), v.get("peak_gib")] + ([v.get("error", "")] if errs else [])
                for k, v in confs.items()]
        head = ["configuration", "s/step", "ratio to CFG (median of rounds)", "peak GiB"] + (["error"] if errs else [])
        out.append(table(rows, head))
        if m.get("not_measured"):
            out.append("\nnot measured: " + "; ".join(f"{k} ({v})" for k, v in m["not_measured"].items()))
    return "\n".join(out)


def trainer(d: dict) -> str:
    r = d.get("result") or {}
    rows = [[r.get("model"), r.get("latent"), r.get("lora_rank"), r.get("steps_timed"), r.get("step_s"),
             r.get("images_per_s"), r.get("peak_gpu_memory_gib"), r.get("peak_gpu_reserved_gib"), r.get("fits_24_gb")]]
    return (f"### trainer\n\n{banner(d)} {problem(d)}\n\n"
            + table(rows, ["model", "latent", "LoRA rank", "steps timed", "s/step", "images/s", "peak GiB (allocated)",
                           "peak GiB (reserved)", "fits 24 GB"])
            + (f"\n\nstopped early: {r['stopped']}" if r.get("stopped") else ""))


def capacity(d: dict) -> str:
    terms = ("nag_cf", "marginal_null", "nag_cf_est", "nag_cf_est3", "nag_cf_est_exact")
    rows = []
    for n in d.get("networks") or []:
        t = n.get("terms") or {}
        rows.append([n["family"], n["network"], n.get("params"), n.get("train_steps"), n.get("s_per_step")]
                    + [t.get(k, {}).get("cos_late") for k in terms]
                    + [t.get("nag_cf", {}).get("cos_late_noisier"), problem(n) or ""])
    ref = [[r["family"], r["variant"], r["params"], r["train_steps"], r["cos_late"], r["cos_late_noisier"],
            r["ceiling_late"]] for r in d.get("cpu_reference") or []]
    return (f"### capacity\n\n{banner(d)} {problem(d)}\n\nLate cosines (nominal log-SNR >= 0, on-schedule states) "
            "with the exact `c* - n*`:\n\n"
            + table(rows, ["family", "network", "params", "train steps", "s/step", "learned `c - n`", "ceiling",
                           "estimator K=1", "estimator K=3", "exact posterior", "learned, 0.5 noisier", "note"])
            + "\n\nThe CPU runs (docs/capacity, seed 0), for comparison:\n\n"
            + table(ref, ["family", "network", "params", "train steps", "learned `c - n`", "0.5 noisier", "ceiling"]))


def markdown(folder: Path) -> str:
    out = []
    run = load(folder, "run")
    if run:
        out.append(f"Run: {run['mode']} mode on {run['device']}, torch {run['torch']}, {run.get('total_s')} s of a "
                   f"{run['budget_s']:.0f} s budget; " + ", ".join(
                       f"{p} {r['status']} in {r['wall_s']:.0f} s (share {r['allotted_s']:.0f} s)"
                       for p, r in run["parts"].items()) + ".")
    for part, render in (("guidance", guidance), ("trainer", trainer), ("capacity", capacity)):
        d = load(folder, part)
        if d is not None:
            out.append(render(d))
    return "\n\n".join(out) + "\n"
