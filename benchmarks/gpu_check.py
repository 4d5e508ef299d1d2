"""One script for a lent GPU: guidance cost in ComfyUI at real sizes, the trainer at SDXL size, and the
capacity curve past the CPU.  docs/gpu/README.md says how to run it on the GPU machine (what travels there,
the one command, what each part measures) and shows the toy run's numbers.

    python benchmarks/gpu_check.py --out DIR [--toy] [--parts guidance,trainer,capacity] [--budget-s N]
    python benchmarks/gpu_check.py --report DIR          # the results as markdown tables

Parts (each in its own process, so a crash or a hang stops only that part; each writes ``DIR/<part>.json``
as soon as it has something and again when it finishes, with the device, torch version, settings and
every figure; a failing part writes its error there and the next part still runs; ``DIR/run.json`` says
how each part ended and how long it took):

1. ``guidance`` (benchmarks/gpu_guidance.py): seconds per sampler step in ComfyUI of plain CFG, NAG-CF
   (batched, unbatched), NAG-CG and NAG-CF with the null branch from a noise-level estimator (K = 1, 3), as
   ratios to CFG measured interleaved, plus peak GPU memory: random-weight SD1.5 (512², fp16), SDXL (1024²,
   fp16), Flux-dev (1024², bf16).  Needs ComfyUI (``COMFYUI_PATH``).
2. ``trainer`` (benchmarks/gpu_trainer.py): ``training.api.finetune`` on a random-weight SDXL file, LoRA rank
   32, bf16, gradient checkpointing, 1024² latents: seconds per step, images/s, peak memory.  Needs ComfyUI.
3. ``capacity`` (benchmarks/gpu_capacity.py): the capacity study's testbed networks at ~10x and ~50x the
   parameters and 10x the steps, both families: the learned ``c - n`` against the exact term, the ceiling,
   and the estimator-posterior null branch (``studies.terms.measure``).

Time: the parts share ``--budget-s`` (default 420 s on a GPU, 900 s in toy mode) in proportion to their
estimates (printed up front); what one part leaves over goes to the next.  Inside, each part fits its work
to its share (fewer timing rounds, a model skipped, a shorter training run: the JSON says so) and is
stopped 40 s past it.  ``--toy`` (the default without CUDA) runs the same code on tiny models on the CPU in
a few minutes; its numbers say nothing about real sizes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import PartReport, error_fields, write_json  # noqa: E402

PARTS = ("guidance", "trainer", "capacity")
MODULES = {"guidance": "gpu_guidance", "trainer": "gpu_trainer", "capacity": "gpu_capacity"}
# seconds per part, process start-up included: on an H200 (estimated from the models' FLOPs and the H200's
# measured bf16 rate, see docs/gpu/README.md) and in toy mode on a 2-core CPU (measured)
ESTIMATE_S = {"gpu": {"guidance": 160, "trainer": 90, "capacity": 150},
              "toy": {"guidance": 25, "trainer": 20, "capacity": 45}}
DEFAULT_BUDGET_S = {"gpu": 420, "toy": 900}
GRACE_S = 40  # a part may overrun its share by this much before it is stopped
MIN_SHARE_S = 15  # a part with less than this left is skipped


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="results folder: DIR/<part>.json and DIR/run.json")
    ap.add_argument("--toy", action="store_true", help="tiny models (the default when there is no CUDA device)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"seconds for the whole run (default {DEFAULT_BUDGET_S['gpu']} on a GPU, "
                         f"{DEFAULT_BUDGET_S['toy']} in toy mode)")
    ap.add_argument("--report", metavar="DIR", help="print DIR's results as markdown tables and exit")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # internal: epoch seconds
    args = ap.parse_args(argv)
    if not args.report and not args.out:
        ap.error("--out DIR is required")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        ap.error(f"--parts: unknown part(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(PARTS)}")
    args.parts = parts
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.report:
        from gpu_report import markdown

        print(markdown(Path(args.report)))
        return 0
    if args.part:
        return child(args)
    return orchestrate(args)


def child(args) -> int:
    """Run one part in this process; its errors go into its results file."""
    import torch

    if args.toy and not torch.cuda.is_available():
        torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy CPU
    module = importlib.import_module(MODULES[args.part])
    report = PartReport(Path(args.out), args.part, args.toy, module.settings(args.toy), args.deadline)
    report.save()
    try:
        module.run(report, args.toy, args.deadline)
    except Exception as e:  # noqa: BLE001 - written down; the orchestrator goes on with the next part
        report.update(**error_fields(e))
        print(f"gpu_check: the {args.part} part failed: {report.data['error']}", file=sys.stderr, flush=True)
        return 1
    return 0


def orchestrate(args) -> int:
    import torch

    toy = args.toy or not torch.cuda.is_available()
    mode = "toy" if toy else "gpu"
    budget = args.budget_s or DEFAULT_BUDGET_S[mode]
    est = {p: ESTIMATE_S[mode][p] for p in args.parts}
    out = Path(args.out)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"gpu_check: {mode} mode on {device}; parts {', '.join(args.parts)}; estimated "
          + ", ".join(f"{p} ~{s} s" for p, s in est.items())
          + f" (total ~{sum(est.values())} s); budget {budget:.0f} s, hard stop at {budget + GRACE_S:.0f} s", flush=True)
    t0 = time.time()
    end = t0 + budget
    run = {"mode": mode, "device": device, "torch": torch.__version__, "budget_s": budget, "estimates_s": est,
           "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "parts": {}}
    for i, part in enumerate(args.parts):
        share = (end - time.time()) * est[part] / sum(est[p] for p in args.parts[i:])
        run["parts"][part] = run_part(part, out, toy, share, end)
        run["total_s"] = round(time.time() - t0, 1)
        write_json(out / "run.json", run)
    print(f"gpu_check: done in {run['total_s']:.0f} s: "
          + ", ".join(f"{p} {r['status']} ({r['wall_s']:.0f} s)" for p, r in run["parts"].items()), flush=True)
    return 0 if all(r["status"] == "ok" for r in run["parts"].values()) else 1


def run_part(part: str, out: Path, toy: bool, share: float, end: float) -> dict:
    """Run ``part`` in a child process with ``share`` seconds (stopped ``GRACE_S`` past it, and never past
    the run's hard stop); make sure ``out/<part>.json`` says how it ended."""
    path = out / f"{part}.json"
    path.unlink(missing_ok=True)  # never report an earlier run's file as this one's
    t0 = time.time()
    status = {"allotted_s": round(share, 1), "json": path.name}
    if share < MIN_SHARE_S:
        write_json(path, {"part": part, "toy": toy, "skipped": f"only {share:.0f} s of the budget left"})
        return {**status, "status": "skipped", "wall_s": 0.0}
    print(f"gpu_check: {part} (up to {share:.0f} s)", flush=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--out", str(out),
           "--deadline", str(t0 + share), *(["--toy"] if toy else [])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if toy else {})}
    # its own process group (so it can be stopped with the workers it starts), in this session (so whatever
    # ends this command ends it too)
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(cmd, env=env, **group)
    rc = None
    try:
        rc = proc.wait(max(min(share + GRACE_S, end + GRACE_S - time.time()), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if rc is None:  # over time, or this process is being interrupted: stop the part and its workers
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = round(time.time() - t0, 1)
    data = json.loads(path.read_text()) if path.exists() else {"part": part, "toy": toy}
    if rc is None:
        data["error"] = f"stopped after {wall:.0f} s: past its share of the budget ({share:.0f} s + {GRACE_S} s)"
    elif rc != 0 and "error" not in data:
        data["error"] = f"the part's process exited with code {rc} before it wrote an error"
    if "error" in data and data.get("complete") is not True:
        write_json(path, data)
    done = rc == 0 and "error" not in data and data.get("complete") is True
    state = ("partial" if data.get("problems") else "ok") if done else ("timeout" if rc is None else "error")
    return {**status, "status": state, "wall_s": wall, **({"error": data["error"]} if "error" in data else {}),
            **({"problems": data["problems"]} if data.get("problems") else {})}


if __name__ == "__main__":
    sys.exit(main())
