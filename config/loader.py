"""Loading settings from a TOML file overlaid by prefixed environment variables.

``DEPOT_ORIGIN_MAX_MANIFEST_BYTES=8MiB`` overrides ``max_manifest_bytes``; ``__`` nests
(reserved for sectioned settings). Unknown keys are errors. This is the only module that
reads ``os.environ``; it is handed the mapping so tests can pass their own.

A field typed ``tuple[SomeSettings, ...]`` is a list of tables in the file (``[[mirrors]]``),
each converted like a settings class of its own (unknown keys are errors there too); an
override passes the tuple itself.

A field with ``metadata={"environ": "NAME"}`` is filled from the environment variable NAME
alone (a standard variable of another tool, such as ``AWS_SECRET_ACCESS_KEY``): setting it
in the file, by a prefixed variable or a flag is an error, so a secret meant for the
environment cannot end up in a settings file.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from config.units import parse_duration, parse_size
from core.errors import ConfigError

T = TypeVar("T")


__all__ = ["ConfigError", "load"]


def _convert(name: str, kind: Any, value: Any) -> Any:
    if typing.get_origin(kind) is tuple:
        return _tables(name, typing.get_args(kind)[0], value)
    try:
        if kind is Path:
            return Path(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if kind is int:
            return parse_size(value) if name.endswith("_bytes") else int(value)
        if kind is float:
            return parse_duration(value) if name.endswith("_seconds") else float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(f"not a string: {value!r}")
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    raise ConfigError(f"{name}: unsupported setting type {kind!r}")


def _tables(name: str, cls: Any, value: Any) -> tuple[Any, ...]:
    """A list of TOML tables as a tuple of ``cls`` (instances of it pass as they are)."""
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{name}: unsupported setting type {cls!r}")
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{name}: expected a list of tables")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    items = []
    for index, item in enumerate(value):
        if isinstance(item, cls):
            items.append(item)
            continue
        if not isinstance(item, dict):
            raise ConfigError(f"{name}[{index}]: expected a table")
        unknown = sorted(set(item) - fields)
        if unknown:
            raise ConfigError(f"{name}[{index}]: unknown settings: {', '.join(unknown)}")
        converted = {
            key: _convert(f"{name}[{index}].{key}", _optional(hints[key]), field_value)
            for key, field_value in item.items()
        }
        items.append(cls(**converted))
    return tuple(items)


def _optional(kind: Any) -> Any:
    """``X | None`` → ``X``."""
    if isinstance(kind, types.UnionType):
        return next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def load(
    cls: type[T],
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    prefix: str,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults < file < environment < explicit overrides (CLI flags)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    foreign = {
        f.name: f.metadata["environ"] for f in dataclasses.fields(cls) if "environ" in f.metadata
    }
    values: dict[str, Any] = {}
    if file is not None:
        try:
            document = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {file}: {exc}") from exc
        values.update(document)
    for key, value in (environ or {}).items():
        if key.startswith(prefix):
            values[key[len(prefix) :].lower()] = value
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    misplaced = sorted(set(values) & set(foreign))
    if misplaced:
        raise ConfigError(
            "settings read only from their standard environment variables: "
            + ", ".join(f"{name} (${foreign[name]})" for name in misplaced)
        )
    for name, variable in foreign.items():
        if variable in (environ or {}):
            values[name] = (environ or {})[variable]
    converted = {}
    for key, value in values.items():
        converted[key] = _convert(key, _optional(hints[key]), value)
    return cls(**converted)
