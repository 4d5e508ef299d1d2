"""``python -m comfy_nag <command>``.

Commands:
  demo          the exact-testbed study (noise shift, NAG and its alternatives): metrics.json, report.md, plots
  bench images  the small real-image study (8x8 digits, DiT + SiT through the trainer): metrics.json, report.md
  bench cost    per-step wall time and peak memory of NAG-CF / NAG-CG vs CFG, as ratios
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m comfy_nag", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the exact testbed end to end on built-in defaults")
    d.add_argument("--out", default="demo_out", help="output folder (created)")
    d.add_argument("--quick", action="store_true", help="small version, under 2 minutes on 2 CPU cores")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    b = sub.add_parser("bench", help="benchmarks: 'images' (digits study) or 'cost' (per-step time and memory)")
    b.add_argument("what", choices=("images", "cost"))
    b.add_argument("--out", default="bench_out", help="output folder (created)")
    b.add_argument("--quick", action="store_true", help="images: small version (CI-size); cost: fewer repeats")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.cmd == "demo":
        from .demo import run_demo

        run_demo(args.out, quick=args.quick, seed=args.seed, threads=args.threads)
    elif args.what == "images":
        from .bench_images import run_bench

        run_bench(args.out, quick=args.quick, seed=args.seed, threads=args.threads)
    else:
        from .bench_cost import run_cost

        run_cost(args.out, quick=args.quick, seed=args.seed, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
