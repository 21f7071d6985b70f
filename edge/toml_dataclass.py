"""Dataclasses from TOML tables and back, with errors that name the offending field.

Supported field types: bool, int, float (ints accepted), str, `X | None`, `list[str]`, a nested
dataclass, and a list of dataclasses (TOML arrays of tables). Unknown keys are refused, so a typo in
the config is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the file, then the field path."""


def from_table(cls: type[T], table: object, path: str) -> T:
    """Build dataclass `cls` from a TOML table; raises ConfigError naming `path.field`."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in table:
        if key not in names:
            raise ConfigError(f"{_join(path, key)}: unknown key")
    kwargs = {key: _convert(hints[key], value, _join(path, key)) for key, value in table.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # __post_init__ checks name the field relative to their table
        raise ConfigError(_join(path, str(exc))) from None
    except TypeError as exc:  # e.g. a required key is missing
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def _convert(tp: Any, value: object, path: str) -> object:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected an array")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_table(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")  # a bug in our dataclasses


def to_toml(sections: dict[str, object]) -> str:
    """Render top-level dataclass sections as TOML (None values are left out)."""
    lines: list[str] = []
    for name, obj in sections.items():
        _render_table(name, obj, lines)
    return "\n".join(lines).rstrip() + "\n"


def _render_table(name: str, obj: object, lines: list[str], array: bool = False) -> None:
    lines.append(f"[[{name}]]" if array else f"[{name}]")
    nested: list[tuple[str, object, bool]] = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            nested.append((f"{name}.{f.name}", value, False))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            nested.extend((f"{name}.{f.name}", v, True) for v in value)
        else:
            lines.append(f"{f.name} = {_value(value)}")
    lines.append("")
    for sub, value, is_array in nested:
        _render_table(sub, value, lines, is_array)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
