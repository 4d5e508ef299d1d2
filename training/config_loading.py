"""A validated :class:`~training.config.Config` from a TOML (or YAML) file and overrides.

:func:`load` reads a file, applies ``--set section.key=value`` overrides (values in TOML syntax; bare
words are strings) and checks every value against its declared type and bounds, so a typo or a bad
value stops the run before any work with a message that names the key and says how to fix it.
"""
from __future__ import annotations

import dataclasses
import difflib
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .config import SECTIONS, Config, ConfigError, section_cls


def _suggest(word: str, options) -> str:
    near = difflib.get_close_matches(word, list(options), n=1)
    return f" Did you mean '{near[0]}'?" if near else ""


def _coerce(where: str, value: Any, typ, meta: dict):
    """Check/convert one value against its declared type and bounds."""
    how = f"Fix it in the config file or pass --set {where}=..."
    if get_origin(typ) is list:
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}. {how}")
        (inner,) = get_args(typ)
        return [_coerce(f"{where}[{i}]", v, inner, {}) for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}. {how}")
    elif typ is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}. {how}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}. {how}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} must be finite, got {value!r}. {how}")
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}. {how}")
    if meta.get("canonical") is not None:
        value = meta["canonical"](value)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        near = _suggest(str(value), [*map(str, choices), *meta.get("synonyms", ())])
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(map(repr, choices))}.{near} {how}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo:
        raise ConfigError(f"{where} = {value!r} must be >= {lo}. {how}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where} = {value!r} must be <= {hi}. {how}")
    return value


def from_dict(raw: dict, source: str = "config") -> Config:
    """Build a validated :class:`Config` from nested dicts (unknown keys are errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a table of sections ({', '.join(SECTIONS)})")
    cfg = Config()
    for sec, body in raw.items():
        if sec not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{sec}].{_suggest(sec, SECTIONS)} Sections: {', '.join(SECTIONS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{sec}] must be a table of keys, got {body!r}")
        cls = section_cls(sec)
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        obj = getattr(cfg, sec)
        for key, value in body.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {sec}.{key}.{_suggest(key, fields)} Keys of [{sec}]: {', '.join(fields)}")
            setattr(obj, key, _coerce(f"{sec}.{key}", value, hints[key], dict(fields[key].metadata)))
    return cfg


def parse_override(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); value parsed as TOML, else kept as a string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.steps=200")
    lhs, text = item.split("=", 1)
    sec, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return sec, key, value


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing .toml file (see training/configs/)")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or use TOML") from None
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def merge(raw: dict, overrides: dict[str, Any] | list[str] | None) -> dict:
    """Apply overrides (``{"train.steps": 10}`` or ``["train.steps=10"]``) onto a raw config dict."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    items = []
    if isinstance(overrides, dict):
        for lhs, value in overrides.items():
            if "." not in lhs:
                raise ConfigError(f"override {lhs!r}: expected 'section.key'")
            items.append((*lhs.split(".", 1), value))
    else:
        items = [parse_override(s) for s in overrides or []]
    for sec, key, value in items:
        raw.setdefault(sec, {})
        if not isinstance(raw[sec], dict):
            raise ConfigError(f"[{sec}] must be a table")
        raw[sec][key] = value
    return raw


def load(path: str | Path | None = None, overrides: dict | list | None = None) -> Config:
    """Read a config file (optional), apply overrides and validate."""
    raw = read_file(path) if path else {}
    return from_dict(merge(raw, overrides), str(path or "config"))

