"""python -m studies <command>: the research studies behind comfy-nag's README (python -m studies --help lists them)."""
from __future__ import annotations

import argparse
import sys

THREADS_HELP = ("torch CPU threads (default 1: the studies' models are tiny, and one thread per run is the fastest "
                "on a small or shared machine)")
REDRAW_HELP = "rewrite report.md and the figures from --out's {json}, without training or sampling; prints the files"
SEEDS_HELP = "seeds (the second replicates the first; quick: first only)"
FAMILIES = ("sit", "sd1")

INTRO = """The research studies behind comfy-nag's README; run them from the repository root.

Every command writes its results file (JSON), report.md and figures into --out.  Finished stages
(trained networks, tunings) are kept in <out>/work, so running the same command again continues
where it stopped.  --redraw (demo, bench images, fidelity, capacity) rewrites a finished run's
report and figures from its JSON, without training or sampling."""

# the top-level help: (command, what it does, an example)
OVERVIEW = (
    ("demo", "the exact-testbed study: noise shift, NAG and its alternatives",
     "python -m studies demo --quick --out demo_out"),
    ("bench images", "the small real-image study (8x8 digits, DiT + SiT through the trainer)",
     "python -m studies bench images --quick --out bench_out"),
    ("bench cost", "per-step wall time and peak memory of NAG-CF / NAG-CG vs CFG, as ratios",
     "python -m studies bench cost --quick --out cost_out"),
    ("fidelity", "how much of the exact NAG term the learned branches carry; null-branch recipes",
     "python -m studies fidelity --quick --out fidelity_out"),
    ("capacity", "what limits the learned null branch: network size or training length",
     "python -m studies capacity --quick --out capacity_out"),
    ("estimator", "which noise-level estimator gives classifier-guided NAG the most of the exact term",
     "python -m studies estimator --quick --out estimator_out"),
    ("last-step", "where a sampler's late shift comes from, step by step (Heun's last step)",
     "python -m studies last-step --out last_step_out"),
    ("auto-bound", "how the closed-loop NAG scale's bound was fixed, on the development seed",
     "python -m studies auto-bound --out docs/auto_bound"),
)

# per command: (description, examples)
COMMANDS = {
    "demo": (
        "Trains small, deliberately imperfect denoisers on class-conditional Gaussian mixtures, samples them with\n"
        "every method and sampler at several step counts, and measures the noise shift with the exact noise-level\n"
        "posterior and sample quality against the exact data distribution.\n"
        "Writes metrics.json, report.md, noise_shift.png, fidelity.png and samples.png into --out.",
        ["python -m studies demo --quick --out demo_out            # a smoke test (a few minutes)",
         "python -m studies demo --out demo_out                    # the full study (what docs/demo holds)",
         "python -m studies demo --families sit --out demo_out     # one process per family; sd1 alongside,",
         "python -m studies demo --merge --out demo_out            # then join them",
         "python -m studies demo --redraw --out docs/demo          # redraw the committed run"]),
    "fidelity": (
        "Pretrains each family's network without noise-condition dropout (like a community checkpoint), fine-tunes\n"
        "a copy with each null-branch recipe, and measures how closely the learned NAG terms point where the exact\n"
        "term points, then samples each recipe with NAG-CF next to the exact term.\n"
        "Writes fidelity.json, report.md and fidelity.png into --out.",
        ["python -m studies fidelity --quick --out fidelity_out",
         "python -m studies fidelity --redraw --out docs/fidelity  # redraw the committed run"]),
    "capacity": (
        "Trains the demo's denoiser from scratch at other sizes and training lengths and reads each network's\n"
        "learned NAG-CF term against the exact one. Writes capacity.json and report.md into --out.",
        ["python -m studies capacity --quick --out capacity_out",
         "python -m studies capacity --redraw --out docs/capacity  # rewrite the committed report"]),
    "estimator": (
        "Trains noise-level estimators with different recipes and measures how much of the exact term\n"
        "classifier-guided NAG (NAG-CG) gets from each. Writes estimator.json and report.md into --out.",
        ["python -m studies estimator --quick --out estimator_out"]),
    "last-step": (
        "Records the signed noise shift of each of the last steps of Euler and Heun (10 and 25 steps) with the\n"
        "exact readout, for the demo's sd1 network and the exact denoiser: a shift the exact denoiser shows too\n"
        "is the sampler's, not the network's. Writes report.md into --out.",
        ["python -m studies last-step --out last_step_out"]),
    "auto-bound": (
        "Samples the estimator null branch with the closed-loop scale (nag_cf_est_auto) on the demo's networks trained\n"
        "without dropout, with each candidate bound of the scale, in every sampler x steps setting, next to the baseline;\n"
        "on the development seed (2), apart from the seeds every result is reported on. Writes auto_bound.json and\n"
        "report.md into --out.",
        ["python -m studies auto-bound --out docs/auto_bound"]),
    "bench": (
        "images: the paper's recipe end to end on scikit-learn's 8x8 digits (reference DiT and SiT trained through\n"
        "the trainer, a proxy Frechet distance, a learned noise-level estimator); writes metrics.json, report.md and\n"
        "noise_shift.png.\n"
        "cost: per-step wall time and peak memory of NAG-CF and NAG-CG against CFG; writes cost.json and cost.md.",
        ["python -m studies bench images --quick --out bench_out",
         "python -m studies bench images --redraw --out docs/bench # redraw the committed run",
         "python -m studies bench cost --out docs/bench/cost"]),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; each flag's default appended unless its help already names it
    (and not for on/off switches or flags without one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or not action.option_strings \
                or "default" in text:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


def _command(sub, name: str):
    description, examples = COMMANDS[name]
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, description=description, epilog=epilog, formatter_class=HelpFormatter)


def overview() -> str:
    """The top-level help: what the studies are, then each command with an example."""
    lines = [INTRO, "", "commands (python -m studies <command> --help: what it does, every flag, more examples):"]
    for name, help, example in OVERVIEW:
        lines += [f"  {name:<13} {help}", f"  {'':<13}   e.g. {example}"]
    return "\n".join(lines)


def _common(p, name: str, quick: str | None = "small version (a smoke test, not findings)", seed: bool = True):
    p.add_argument("--out", default=f"{name}_out", help="output folder, created if missing")
    if quick:
        p.add_argument("--quick", action="store_true", help=quick)
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed of the data, the networks and every draw")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)


def _families(p, parts: str) -> None:
    p.add_argument("--families", nargs="+", choices=FAMILIES,
                   help=f"only these families (writes {parts}_<families>.json; run one process per family, then --merge)")
    p.add_argument("--merge", action="store_true", help=f"join the {parts}_<family>.json files in --out into the report")
    p.add_argument("--note", default="", help="with --merge: how the parts were run, for the report's first line "
                   "(default: run as N --families processes in parallel; wall time of the slowest)")


def _seeded(sub, name: str, parts: str | None = None, redraw: str | None = None):
    """A multi-seed study's command; ``parts``: the stem of the per-family files ``--families`` writes;
    ``redraw``: the results file ``--redraw`` reads."""
    p = _command(sub, name)
    _common(p, name, seed=False)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help=SEEDS_HELP)
    if parts:
        _families(p, parts)
    if redraw:
        p.add_argument("--redraw", action="store_true", help=REDRAW_HELP.format(json=redraw))
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studies", usage="%(prog)s [-h] <command> [options]", description=overview(),
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="<command>", help=argparse.SUPPRESS, prog=p.prog)
    d = _command(sub, "demo")
    _common(d, "demo", quick="small version (CI-size; a smoke test, not findings)")
    d.add_argument("--redraw", action="store_true", help=REDRAW_HELP.format(json="metrics.json"))
    _families(d, "metrics")
    _seeded(sub, "fidelity", parts="fidelity", redraw="fidelity.json")
    _seeded(sub, "capacity", parts="capacity", redraw="capacity.json")
    _seeded(sub, "estimator")
    _common(_command(sub, "last-step"), "last_step", quick=None)
    a = _command(sub, "auto-bound")
    _common(a, "auto_bound", quick=None, seed=False)
    a.add_argument("--seed", type=int, default=2, help="the development seed (the demo reports seeds 0 and 1)")
    b = _command(sub, "bench")
    b.add_argument("what", choices=("images", "cost"), help="images: the digits study; cost: per-step time and memory")
    _common(b, "bench", quick="images: small version (CI-size); cost: fewer repeats")
    b.add_argument("--redraw", action="store_true", help=REDRAW_HELP.format(json="metrics.json") + " (images only)")
    return p


def _run(args, out):
    """Run the parsed command into ``out``; returns the files a ``--redraw`` wrote (else None)."""
    families = tuple(args.families) if getattr(args, "families", None) else None
    if args.cmd == "demo":
        from . import demo

        if args.redraw:
            return demo.redraw(out)
        if args.merge:
            demo.merge(out, note=args.note)
        else:
            demo.run_demo(out, quick=args.quick, seed=args.seed, threads=args.threads, families=families)
    elif args.cmd in ("fidelity", "capacity"):
        from . import capacity, fidelity

        study = {"fidelity": fidelity, "capacity": capacity}[args.cmd]
        if args.redraw:
            return study.redraw(out)
        if args.merge:
            study.merge(out, note=args.note)
        else:
            study.run(out, quick=args.quick, seeds=tuple(args.seeds), threads=args.threads, families=families)
    elif args.cmd == "estimator":
        from . import cg_estimator

        cg_estimator.run(out, quick=args.quick, seeds=tuple(args.seeds), threads=args.threads)
    elif args.cmd == "auto-bound":
        from . import auto_bound

        auto_bound.run(out, seed=args.seed, threads=args.threads)
    elif args.cmd == "last-step":
        from . import last_step

        last_step.run(out, seed=args.seed, threads=args.threads)
    elif args.what == "images":
        from . import bench_images

        if args.redraw:
            return bench_images.redraw(out)
        bench_images.run_bench(out, quick=args.quick, seed=args.seed, threads=args.threads)
    else:
        from .bench_cost import run_cost

        run_cost(out, quick=args.quick, seed=args.seed, threads=args.threads)
    return None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .harness import StudyError, prepare_out

    try:
        if args.threads < 1:
            raise StudyError(f"--threads must be >= 1, got {args.threads}")
        if getattr(args, "redraw", False) and args.cmd == "bench" and args.what == "cost":
            raise StudyError("--redraw applies to 'demo', 'fidelity', 'capacity' and 'bench images' "
                             "(cost.md is written from cost.json directly)")
        written = _run(args, prepare_out(args.out))
        if written:
            print(f"redrawn from the finished run in {args.out} (no training, no sampling); wrote:")
            for path in written:
                print(f"  {path}")
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept - run the same command again to continue", file=sys.stderr)
        return 130
    except (StudyError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
