"""``python -m studies <command>`` - run from the repository root.

Commands:
  demo          the exact-testbed study (noise shift, NAG and its alternatives): metrics.json, report.md, plots
  bench images  the small real-image study (8x8 digits, DiT + SiT through the trainer): metrics.json, report.md
  fidelity      how much of the exact NAG term the learned branches carry; null-branch recipes
  capacity      what limits the learned null branch: network size or training length
  estimator     which noise-level estimator gives classifier-guided NAG the most of the exact term
  last-step     where a sampler's late shift comes from, step by step (Heun's last step)
  bench cost    per-step wall time and peak memory of NAG-CF / NAG-CG vs CFG, as ratios
"""
from __future__ import annotations

import argparse
import sys

THREADS_HELP = ("torch CPU threads (default 1: the studies' models are tiny, and one thread per run is the fastest "
                "on a small or shared machine)")


REDRAW_HELP = "rewrite report.md and noise_shift.png from --out's metrics.json, without running anything"


def _seeded(sub, name: str, help: str, parts: str | None = None):
    """A multi-seed study's command; ``parts``: the stem of the per-family files ``--families`` writes."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--out", default=f"{name}_out", help="output folder (created)")
    p.add_argument("--quick", action="store_true", help="small version (a smoke test, not findings)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="seeds (the second replicates the first; quick: first only)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    if parts:
        p.add_argument("--families", nargs="+", choices=("sit", "sd1"),
                       help=f"only these families (writes {parts}_<families>.json; run one process per family, then --merge)")
        p.add_argument("--merge", action="store_true", help=f"join the {parts}_<family>.json files in --out into the report")
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the exact testbed end to end on built-in defaults")
    d.add_argument("--out", default="demo_out", help="output folder (created)")
    d.add_argument("--quick", action="store_true", help="small version (CI-size)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    d.add_argument("--redraw", action="store_true", help=REDRAW_HELP)
    d.add_argument("--families", nargs="+", choices=("sit", "sd1"),
                   help="only these families (writes metrics_<families>.json; run one process per family, then --merge)")
    d.add_argument("--merge", action="store_true", help="join the metrics_<family>.json files in --out into the report")
    _seeded(sub, "fidelity", "how much of the exact NAG term the learned null branch and estimator carry; "
                             "null-branch recipes against the exact ceiling", parts="fidelity")
    _seeded(sub, "capacity", "the learned null branch against network size and training length, against the exact term",
            parts="capacity")
    _seeded(sub, "estimator", "noise-level estimator recipes for classifier-guided NAG, against the exact term")
    ls = sub.add_parser("last-step", help="where a sampler's late shift comes from, step by step (exact readout)")
    ls.add_argument("--out", default="last_step_out", help="output folder (created)")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    b = sub.add_parser("bench", help="benchmarks: 'images' (digits study) or 'cost' (per-step time and memory)")
    b.add_argument("what", choices=("images", "cost"))
    b.add_argument("--out", default="bench_out", help="output folder (created)")
    b.add_argument("--quick", action="store_true", help="images: small version (CI-size); cost: fewer repeats")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    b.add_argument("--redraw", action="store_true", help=REDRAW_HELP + " (images only)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .harness import StudyError, prepare_out

    try:
        if args.threads < 1:
            raise StudyError(f"--threads must be >= 1, got {args.threads}")
        if getattr(args, "redraw", False) and args.cmd == "bench" and args.what == "cost":
            raise StudyError("--redraw applies to 'demo' and 'bench images' (cost.md is written from cost.json directly)")
        out = prepare_out(args.out)
        if args.cmd == "demo":
            from . import demo

            if args.redraw:
                demo.redraw(out)
            elif args.merge:
                demo.merge(out)
            else:
                demo.run_demo(out, quick=args.quick, seed=args.seed, threads=args.threads,
                              families=tuple(args.families) if args.families else None)
        elif args.cmd in ("fidelity", "capacity"):
            from . import capacity, fidelity

            study = {"fidelity": fidelity, "capacity": capacity}[args.cmd]
            if args.merge:
                study.merge(out)
            else:
                study.run(out, quick=args.quick, seeds=tuple(args.seeds), threads=args.threads,
                          families=tuple(args.families) if args.families else None)
        elif args.cmd == "estimator":
            from . import cg_estimator

            cg_estimator.run(out, quick=args.quick, seeds=tuple(args.seeds), threads=args.threads)
        elif args.cmd == "last-step":
            from . import last_step

            last_step.run(out, seed=args.seed, threads=args.threads)
        elif args.what == "images":
            from . import bench_images

            if args.redraw:
                bench_images.redraw(out)
            else:
                bench_images.run_bench(out, quick=args.quick, seed=args.seed, threads=args.threads)
        else:
            from .bench_cost import run_cost

            run_cost(out, quick=args.quick, seed=args.seed, threads=args.threads)
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept - run the same command again to continue", file=sys.stderr)
        return 130
    except (StudyError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
