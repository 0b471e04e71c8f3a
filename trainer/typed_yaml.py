"""Typed dataclasses from YAML: every key checked, every type checked, misspellings named.

Generic (knows no section of mindrun's config): `build(cls, tree)` fills dataclass `cls` from
nested dicts, and `parse_override`/`set_dotted` apply `section.key=value` overrides to a tree.
"""
import dataclasses
import difflib
import typing
from typing import Any, Dict, List

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, tp, value):
    """Check `value` against annotation `tp`; return it converted where lossless."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:  # the first type that takes the value
            try:
                return _coerce(key, arg, value)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key} must be one of {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its fields, got {type(value).__name__}")
        return build(tp, value, prefix=key + ".")
    if origin in (list, List):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _unknown_key(key: str, valid) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    # names of the same section that contain the typo (layers -> encoder_layers, decoder_layers) first, then
    # difflib's closest spellings
    close = [v for v in sorted(valid) if name and (name in v or v in name)]
    close += [c for c in difflib.get_close_matches(name, list(valid), n=2) if c not in close]
    prefix = key[: -len(name)]
    if close:
        hint = "; did you mean " + " or ".join(f"'{prefix}{c}'" for c in close[:3]) + "?"
    else:
        hint = f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def check_key(cls, dotted: str) -> None:
    """ConfigError when dotted key 'section.key' names no field of dataclass `cls` (and its section dataclasses)."""
    node, done = cls, []
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"'{'.'.join(done)}' is a value, not a section")
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            raise _unknown_key(".".join([*done, part]), fields)
        node = typing.get_type_hints(node)[part]
        done.append(part)


def build(cls, data: Dict[str, Any], prefix: str = ""):
    """Instantiate dataclass `cls` from a dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(prefix + str(key), fields)
        kwargs[key] = _coerce(prefix + key, hints[key], value)
    return cls(**kwargs)


def set_dotted(tree: Dict[str, Any], dotted: str, value) -> None:
    """Set `tree[a][b] = value` for dotted key 'a.b', creating sections as needed."""
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str):
    """'optim.lr=5e-4' -> ('optim.lr', 0.0005); values parse as YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip(), value
