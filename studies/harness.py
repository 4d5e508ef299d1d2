"""What every study shares: the noise-shift figures, the report's tables, finished stages, and the start
and end of a study command (one sampling run, its row and knob tuning: ``studies.runs``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import methods

KDE_FRACTIONS = (0.55, 0.7, 0.85, 1.0)  # where in sampling the KDE panels look


def kde_steps(steps: int) -> list[int]:
    """Step indices of the KDE panels (:data:`KDE_FRACTIONS` of the way through sampling)."""
    return sorted({int(round(f * (steps - 1))) for f in KDE_FRACTIONS})


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

# what the figures call each method and group (plain words; each keeps its methods.COLORS colour)
DISPLAY = {"baseline": "baseline (no guidance)", "nag_cf": "NAG-CF", "nag_cg": "NAG-CG", "cfg": "CFG",
           "nag_cf+cfg": "NAG-CF + CFG", "nag_cf+cfg_B": "NAG-CF + CFG (variant B)", "eps_scaling": "epsilon scaling",
           "time_shift": "time-shift sampler", "nag_cf_full": "NAG-CF at every step", "nag_cf_cal": "NAG-CF, calibrated scale",
           "nag_cf_est": "NAG-CF, null branch from the estimator", "nag_cf_auto": "NAG-CF, closed-loop scale",
           "nag_cf_est_auto": "NAG-CF from the estimator, closed-loop scale", "nag_cg_auto": "NAG-CG, closed-loop scale",
           "nag_cf_est_auto+eps": "the same with epsilon scaling",
           "forward (true states)": "true noisy data (forward process)"}
WINDOW_READING = ("NAG acts only in the yellow window: before it, a line with NAG lies on the same run's line "
                  "without NAG (same noise)")


def display(name: str) -> str:
    """A method's (or KDE group's) name in the figures: :data:`DISPLAY`, else ``name`` as it is."""
    return DISPLAY.get(name, name)


def display_colors() -> dict:
    """methods.COLORS keyed by :data:`DISPLAY` names; true noisy data in plots.FORWARD_COLOR."""
    from comfy_nag.plots import FORWARD_COLOR

    return {**{display(m): c for m, c in methods.COLORS.items()}, display("forward (true states)"): FORWARD_COLOR}


def family_title(name: str) -> str:
    """``name`` and what kind of model it is, e.g. ``sit (velocity-prediction flow model)``."""
    from comfy_nag.families import FAMILIES
    from comfy_nag.schedules import Flow

    fam = FAMILIES.get(name)
    if fam is None:
        return name
    kind = "flow model" if isinstance(fam.schedule, Flow) else "diffusion model"
    return f"{name} ({fam.prediction}-prediction {kind})"


def shift_figures(pdata: dict, name: str, readout: str) -> list:
    """The noise-shift figure of one family (a list of one): per-step readout curves and, below, where the
    states' estimated level lands at four late steps (KDE), with one legend.

    ``pdata``: ``{"sampler", "steps", "curves": {method: summarize()}, "kde": {"levels", "groups"},
    "window_min_logsnr"}``; ``readout`` names what read the levels (under the title).
    """
    from comfy_nag.plots import shift_figure

    runs = [{"label": display(m), "nominal": c["nominal_logsnr"], "estimated_mean": c["estimated_mean"],
             "estimated_std": c["estimated_std"], "reference_mean": c["reference_mean"]} for m, c in pdata["curves"].items()]
    nominal = np.array(runs[0]["nominal"])
    on = np.where(nominal >= pdata["window_min_logsnr"])[0]
    window = (int(on.min()), int(on.max())) if on.size else None
    kde = pdata["kde"]
    groups = {display(k): [np.array(v) for v in vals] for k, vals in kde["groups"].items() if vals}
    title = f"{family_title(name)}, {pdata['sampler']} sampler, {pdata['steps']} steps"
    return [shift_figure(runs, window, title=title, colors=display_colors(), bands="first",
                         kde={"levels": kde["levels"], "groups": groups, "steps": kde_steps(pdata["steps"])},
                         readout=readout, note=WINDOW_READING if window else None)]


def stack_images(images, gap: int = 12):
    """PIL images stacked top to bottom on white, centred, ``gap`` pixels apart."""
    from PIL import Image

    w = max(im.width for im in images)
    out = Image.new("RGB", (w, sum(im.height for im in images) + gap * (len(images) - 1)), "white")
    y = 0
    for im in images:
        out.paste(im, ((w - im.width) // 2, y))
        y += im.height + gap
    return out


# ---------------------------------------------------------------------------------------------
# report tables
# ---------------------------------------------------------------------------------------------

def fmt(v, nd=3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.3g}"
    return str(v)


def md_table(rows, cols, heads=None) -> str:
    """A Markdown table of ``rows`` (dicts) over ``cols`` (missing values blank)."""
    heads = heads or cols
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def find_row(rows, **kw):
    """The first row whose fields equal ``kw``, or None."""
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


# ---------------------------------------------------------------------------------------------
# command-line behaviour
# ---------------------------------------------------------------------------------------------

def begin(out, threads: int | None = None):
    """Start of every study command: torch CPU threads, the output folder (created), the start time
    and a logger that keeps progress bars intact.  Returns ``(out, t0, log)``."""
    import time

    from tqdm.auto import tqdm

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out, time.time(), (lambda msg: tqdm.write(msg))


def save_json(path, res: dict) -> None:
    """Write a study's results atomically (an interrupted write leaves the old file)."""
    import json

    from comfy_nag.files import atomic_write_bytes

    atomic_write_bytes(Path(path), json.dumps(res, indent=1, default=float).encode())


def part_name(stem: str, families) -> str:
    """``stem.json``, or ``stem_<families>.json`` for one process of a run split by ``--families``."""
    return f"{stem}.json" if not families else f"{stem}_{'_'.join(families)}.json"


def merge_parts(out: Path, stem: str, order=None, note: str = "") -> dict:
    """Join the ``<stem>_<families>.json`` files that parallel ``--families`` processes wrote in ``out``:
    lists are concatenated and dicts united (in ``order``, a sort key over the parts; default: file name);
    ``meta`` is the first part's, with the slowest part's wall time and ``note``."""
    import json

    parts = [json.loads(p.read_text()) for p in sorted(Path(out).glob(f"{stem}_*.json"))]
    if not parts:
        raise StudyError(f"no {stem}_<family>.json files in {out}; run with --families first")
    if order is not None:
        parts.sort(key=order)
    res = {}
    for key in parts[0]:
        if key != "meta":
            vals = [p[key] for p in parts]
            res[key] = sum(vals, []) if isinstance(vals[0], list) else {k: v for d in vals for k, v in d.items()}
    res["meta"] = {**parts[0]["meta"], "seconds": max(p["meta"]["seconds"] for p in parts),
                   "note": note or f"run as {len(parts)} --families processes in parallel; wall time of the slowest"}
    return res


def run_meta(cfg, t0: float) -> dict:
    """A run's ``meta``: its configuration (a dataclass), the wall time since ``t0`` and torch's version."""
    import time
    from dataclasses import asdict

    return {"config": asdict(cfg), "seconds": time.time() - t0, "torch": torch.__version__}


def conclude(out: Path, stem: str, res: dict, families, write_outputs, log=print) -> dict:
    """End of a study run: ``res`` saved as ``<stem>.json``, then ``write_outputs(out, res)`` (report,
    figures).  One process of a run split by ``--families`` saves ``<stem>_<families>.json`` only;
    :func:`merge` writes the outputs once every family's part is there."""
    name = part_name(stem, families)
    save_json(out / name, res)
    if not families:
        write_outputs(out, res)
    log(f"done in {res['meta']['seconds'] / 60:.1f} min: {out}/{name}")
    return res


def merge(out, stem: str, write_outputs, order=None, adjust=None, note: str = "") -> dict:
    """``--merge``: the parts in ``out`` joined (:func:`merge_parts`, then ``adjust(res)`` if given),
    saved as ``<stem>.json``, and ``write_outputs(out, res)``."""
    out = Path(out)
    res = merge_parts(out, stem, order=order, note=note)
    if adjust is not None:
        adjust(res)
    save_json(out / f"{stem}.json", res)
    write_outputs(out, res)
    return res


class StudyError(ValueError):
    """A refusal meant for the user (one line: the problem and the fix)."""


def prepare_out(out) -> Path:
    """The output folder, created if missing; a clear error when ``out`` is a file or cannot be created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file, not a folder; pass a folder path (it is created if missing)")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise StudyError(f"--out {out}: {parent} is a file, not a folder; pass a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StudyError(f"cannot create the output folder {out} ({e.strerror}); pass a writable --out") from None
    return out


def progress(total: int, desc: str, enabled: bool = True):
    """A progress bar for a training phase: ``(bar, callback(step, loss))``; close the bar when done."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="step")

    def callback(step, loss):
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    return bar, callback


STAGE_FORMAT = "studies-stage/1"


class Stages:
    """Finished stages of a study (trained networks, tuning results) kept in ``folder`` and reused when
    the same command runs again.  A stage is reused only when it was made with the same ``spec`` (the
    configuration it depends on); otherwise it is made again and overwritten."""

    def __init__(self, folder, log=print):
        self.folder, self.log = Path(folder), log

    def _fingerprint(self, spec: dict) -> str:
        import json

        return json.dumps({"format": STAGE_FORMAT, **spec}, sort_keys=True, default=str)

    def modules(self, name: str, spec: dict, mods: dict, make) -> dict:
        """Load the weights of ``mods`` ({prefix: module}) from stage ``name``, or run ``make()`` (trains them
        in place and returns a JSON-able summary) and save them.  Returns the summary."""
        import json

        from comfy_nag.files import WeightFileError, load_weights, save_weights

        path, fp = self.folder / f"{name}.safetensors", self._fingerprint(spec)
        if path.is_file():
            try:
                tensors, meta = load_weights(path)
            except WeightFileError:
                tensors, meta = {}, {}
            if meta.get("study.fingerprint") == fp:
                for prefix, m in mods.items():
                    m.load_state_dict({k[len(prefix) + 1:]: t for k, t in tensors.items() if k.startswith(prefix + ".")})
                    m.eval()
                self.log(f"reusing {path} (finished earlier with the same settings)")
                return json.loads(meta["study.summary"])
        summary = make()
        tensors = {f"{prefix}.{k}": t for prefix, m in mods.items() for k, t in m.state_dict().items()}
        save_weights(path, tensors, {"study.fingerprint": fp, "study.summary": json.dumps(summary)})
        return summary

    def value(self, name: str, spec: dict, make, valid=None, quiet: bool = False):
        """A JSON-able result (e.g. tuned knobs) from stage ``name``, or ``make()``'s, saved.  ``valid(value)``:
        whether a saved value still holds (e.g. the file it names is unchanged); if not, it is made again.
        ``quiet``: reuse without a log line (stages made by the hundred, like the demo's rows)."""
        import json

        from comfy_nag.files import atomic_write_bytes

        path, fp = self.folder / f"{name}.json", self._fingerprint(spec)
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("fingerprint") == fp and (valid is None or valid(saved["value"])):
                if not quiet:
                    self.log(f"reusing {path} (finished earlier with the same settings)")
                return saved["value"]
        value = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({"fingerprint": fp, "value": value}).encode())
        return value


def load_metrics(out, name: str = "metrics.json") -> dict:
    """The results file ``name`` (metrics.json, fidelity.json, ...) of a finished run in ``out`` (a clear
    error when there is none)."""
    import json

    path = Path(out) / name
    if not path.is_file():
        raise StudyError(f"{path} not found: --redraw needs a finished run in --out (run the command without --redraw first)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise StudyError(f"{path} is not valid JSON ({e}); rerun the study to rewrite it") from None


def mark_redrawn(report: str, command: str, previous: str | None = None, figures=("noise_shift.png",),
                 source: str = "metrics.json") -> str:
    """``report`` marked as redrawn, with ``figures``, from ``source`` by ``command``.  ``previous``: the report
    the run wrote; its "Generated by" line (how the run was made: command, time, threads) is kept."""
    lines = report.split("\n")
    old = [ln for ln in (previous or "").split("\n") if ln.startswith("Generated by")]
    at = next((i for i, ln in enumerate(lines) if ln.startswith("Generated by")), None)
    if at is not None and old:
        lines[at] = old[0]
    head, sep, rest = "\n".join(lines).partition("\n\n## ")
    what = "This report " + (f"and {', '.join(f'`{f}`' for f in figures)} were" if figures else "was")
    note = (f"\n\n{what} redrawn from `{source}` by "
            f"`python -m studies {command} --redraw` (no sampling; the numbers are the run's).")
    return head.rstrip("\n") + note + sep + rest


def save_report(out, text: str, redrawn_by: str | None = None, **note) -> Path:
    """Write ``out/report.md`` and return its path; ``redrawn_by``: the command whose ``--redraw`` rewrote
    it (marked as such, :func:`mark_redrawn`, which takes ``note``'s ``figures`` and ``source``)."""
    from comfy_nag.files import atomic_write_bytes

    if redrawn_by:
        text = mark_redrawn(text, redrawn_by, previous_report(out), **note)
    atomic_write_bytes(Path(out) / "report.md", text.encode())
    return Path(out) / "report.md"


def previous_report(out) -> str | None:
    """The report.md a run wrote in ``out`` (None if there is none)."""
    path = Path(out) / "report.md"
    return path.read_text() if path.is_file() else None


SMOKE_TEST = ("> **Quick mode: a smoke test, not findings.** This run checks that the pipeline works end to end on "
              "a shrunken grid; its numbers are noisy and must not be read as results. The full mode's report is the "
              "one the README cites.\n")
