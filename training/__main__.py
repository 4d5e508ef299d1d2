"""``python -m training <command>`` - run from the repository root.

Commands: prepare, finetune, estimator, inspect, bench.  Every command but ``inspect`` takes a
config file (``--config``, TOML or YAML) and overrides (``--set section.key=value``, repeatable,
plus the shortcuts below).  ``--help-config`` lists every key.
"""
from __future__ import annotations

import argparse
import sys

SHORTCUTS = {  # flag -> config key
    "out": "run.out_dir", "seed": "run.seed", "steps": "train.steps", "cache": "data.cache", "base": "model.base",
    "family": "model.family", "resume": "run.resume",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description="comfy-nag trainer: noise-condition dropout "
                                "fine-tuning and noise-level estimators (Noise Awareness Guidance).")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    sub = p.add_subparsers(dest="command")
    helps = {"prepare": "images + labels/captions -> latent cache", "finetune": "fine-tune with noise-condition dropout",
             "estimator": "train a noise-level estimator", "bench": "step time with vs without noise-condition dropout"}
    for name, h in helps.items():
        s = sub.add_parser(name, help=h)
        s.add_argument("--config", "-c", help="TOML/YAML config file (see training/configs/)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value (TOML syntax; bare words are strings); repeatable")
        for flag, key in SHORTCUTS.items():
            s.add_argument(f"--{flag}", help=f"shortcut for --set {key}=...")
    s = sub.add_parser("inspect", help="what a saved file (or run folder) is, and its NAG metadata")
    s.add_argument("path")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from . import api
    from .comfyui import ComfyUnavailable
    from .config import ConfigError, help_text

    if args.help_config:
        print(help_text())
        return 0
    if not args.command:
        _parser().print_help()
        return 2
    try:
        if args.command == "inspect":
            print(api.inspect(args.path))
            return 0
        overrides = list(args.set) + [f"{key}={getattr(args, flag)}" for flag, key in SHORTCUTS.items()
                                      if getattr(args, flag) is not None]
        cfg = api.load_config(args.config, overrides)
        if args.command == "prepare":
            api.prepare(cfg)
        elif args.command == "bench":
            api.bench(cfg)
        else:
            result = getattr(api, args.command)(cfg)
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
