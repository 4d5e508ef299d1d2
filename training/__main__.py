"""``python -m training <command>`` - run from the repository root.

Commands: prepare, finetune, estimator, inspect, bench.  Every command but ``inspect`` takes a
config file (``--config``, TOML or YAML) and overrides (``--set section.key=value``, repeatable,
plus the command's own shortcuts below), and ``--threads`` (torch CPU threads; ``cpu_threads.py``).
``--help-config`` lists every key.  Exit codes: 0 done, 1 refused with a message, 2 bad command
line, 130 interrupted.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import cpu_threads

CONFIGS = Path(__file__).resolve().parent / "configs"

RUN = {"out": "run.out_dir", "seed": "run.seed", "cache": "data.cache", "base": "model.base",
       "family": "model.family", "resume": "run.resume"}
SHORTCUTS = {  # command -> {flag: config key}; each command lists only the flags it reads
    "prepare": {"cache": "data.cache", "path": "data.path", "resolution": "data.resolution"},
    "finetune": {**RUN, "steps": "train.steps"},
    "estimator": {**RUN, "steps": "estimator.steps"},
    "bench": {"cache": "data.cache", "base": "model.base", "family": "model.family", "seed": "run.seed"},
}
COMMANDS = {
    "prepare": ("images or clips + labels/captions -> latent cache",
                "Read an image folder (or a folder of clips for video families, scikit-learn's digits, precomputed "
                "latents, or the model's own samples), encode it batch by batch and write the latent cache data.cache; "
                "an interrupted run continues where it stopped."),
    "finetune": ("fine-tune with noise-condition dropout",
                 "Fine-tune a model (full or LoRA) with noise-condition dropout and export it with nag.* metadata; "
                 "rerunning the same command resumes from the newest checkpoint."),
    "estimator": ("train a noise-level estimator",
                  "Train a noise-level estimator (categorical over log-SNR bins) on the cache for its family's "
                  "schedule; resumable like finetune."),
    "bench": ("step time with vs without noise-condition dropout",
              "Time the trainer's step with and without noise-condition dropout, in random-order pairs, and print "
              "the ratio with a 95 % interval."),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description="comfy-nag trainer: noise-condition dropout "
                                "fine-tuning and noise-level estimators (Noise Awareness Guidance).",
                                epilog="Exit codes: 0 done, 1 refused (the message says why and how to fix it), "
                                       "2 bad command line, 130 interrupted (resume with the same command).")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    sub = p.add_subparsers(dest="command")
    for name, (short, long) in COMMANDS.items():
        s = sub.add_parser(name, help=short, description=long)
        s.add_argument("--config", "-c", help="TOML/YAML config file (see training/configs/)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value (TOML syntax; bare words are strings); repeatable")
        for flag, key in SHORTCUTS[name].items():
            s.add_argument(f"--{flag}", help=f"shortcut for --set {key}=...")
        s.add_argument("--threads", type=cpu_threads.parse, default=cpu_threads.AUTO, metavar="N|auto",
                       help=cpu_threads.HELP)
        s.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    s = sub.add_parser("inspect", help="what a saved file (or run folder) is, and its NAG metadata",
                       description="Describe a weight file, latent cache, checkpoint or run folder, with its nag.* "
                                   "(and kohya ss_*/modelspec.*) metadata.")
    s.add_argument("path")
    return p


def _shipped_configs() -> str:
    names = sorted(p.stem for p in CONFIGS.glob("*.toml"))
    return ", ".join(names) if names else "none found"


def _require_without_config(cfg, command: str) -> None:
    """No ``-c``: if the keys given on the command line are not enough, say that no config was given (the
    missing key alone would send a new user to the wrong place, e.g. to `prepare`)."""
    from .config import ConfigError
    from .preflight import require
    try:
        require(cfg, command)
    except ConfigError as e:
        empty = re.match(r"(\S+) is empty", str(e))
        problem = f"{empty.group(1)} is not set" if empty else str(e).rstrip(".")
        raise ConfigError(f"no config file given (-c), and {problem}: pass a config, e.g. `python -m training {command} "
                          f"-c training/configs/tiny_sit.toml` (shipped in training/configs/: {_shipped_configs()}), "
                          f"or set every key it needs with --set (--help-config lists them)") from None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from . import api
    from .comfyui import ComfyUnavailable
    from .config import ConfigError, help_text

    if getattr(args, "help_config", False):
        print(help_text())
        return 0
    if not args.command:
        _parser().print_help()
        return 2
    try:
        if args.command == "inspect":
            print(api.inspect(args.path))
            return 0
        overrides = list(args.set) + [f"{key}={getattr(args, flag)}" for flag, key in SHORTCUTS[args.command].items()
                                      if getattr(args, flag) is not None]
        cfg = api.load_config(args.config, overrides)
        if args.config is None and args.command != "bench":  # bench runs on its defaults
            _require_without_config(cfg, args.command)
        if args.command == "prepare":
            api.prepare(cfg, threads=args.threads)
        elif args.command == "bench":
            api.bench(cfg, threads=args.threads)
        else:
            result = getattr(api, args.command)(cfg, threads=args.threads)
            if result.path is not None:  # the main process (the only one that writes the file)
                print(f"\nsaved {result.path}\n")
                print(api.inspect(result.path))
        return 0
    except KeyboardInterrupt:
        print("interrupted; resume with the same command", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, OSError, FloatingPointError, ComfyUnavailable) as e:
        # refusals (bad config, bad files, mismatched cache, divergence) carry a message meant for the user
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
