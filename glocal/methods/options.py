"""Typed options: every setting is a field of a frozen dataclass with a type, a default and one line of help.

An option group is a frozen dataclass whose fields carry ``metadata={"help": ..., "choices": ...}`` (made
with :func:`option`). :func:`with_values` returns a new instance with some fields replaced, each value checked
and converted to the field's type (a JSON list becomes a tuple, an int a float where a float is expected);
:func:`describe` lists the fields for ``glocal methods show``; :func:`parse_set` reads ``--set KEY=VALUE``.
Errors are :class:`glocal.errors.BadOptionError` with one line naming the key and the valid keys.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

from glocal.errors import BadOptionError

T = TypeVar("T")


def option(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:  # noqa: A002
    """A dataclass field with its one line of help (and the values it may take)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``glocal methods show`` prints it."""

    group: str
    name: str
    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe(group: str, options: Any) -> list[OptionInfo]:
    """The fields of an option group (class or instance), with the instance's values as defaults."""
    hints = _hints(options if isinstance(options, type) else type(options))
    out = []
    for f in fields(options):
        if not f.init or f.name.startswith("_"):
            continue
        default = getattr(options, f.name) if not isinstance(options, type) else (
            f.default if f.default is not dataclasses.MISSING else None)
        out.append(OptionInfo(group, f.name, _type_name(hints[f.name]), default, f.metadata.get("help", ""),
                              f.metadata.get("choices")))
    return out


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` as an instance of the annotation ``tp`` (int -> float, list -> tuple, ...), else TypeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError(errors[0] if errors else f"expected {_type_name(tp)}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(f"expected one of {list(typing.get_args(tp))}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list like [1.0, 0.5], got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, where) for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"expected a string, got {value!r}")
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, where)
        raise TypeError(f"expected a {tp.__name__} mapping, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"expected {_type_name(tp)}, got {value!r}")


def with_values(options: T, values: Mapping[str, Any], where: str = "option") -> T:
    """A copy of the option group ``options`` with ``values`` replaced, each checked and converted.

    :param where: how the keys are named in errors (``"--set"``, ``"manifest.json: extractor"``).
    :raises BadOptionError: an unknown key (the message lists the valid ones) or a bad value.
    """
    cls = type(options)
    hints = _hints(cls)
    known = {f.name: f for f in fields(options) if f.init and not f.name.startswith("_")}
    converted = {}
    for key, value in values.items():
        if key not in known:
            raise BadOptionError(f"{where}: unknown key {key!r} for {cls.__name__}; valid keys: "
                                 f"{', '.join(sorted(known))}")
        try:
            converted[key] = _convert(value, hints[key], where)
        except TypeError as exc:
            raise BadOptionError(f"{where}: {key}: {exc}") from None
        choices = known[key].metadata.get("choices")
        if choices is not None and converted[key] is not None and converted[key] not in choices:
            raise BadOptionError(f"{where}: {key} must be one of {', '.join(map(str, choices))}; "
                                 f"got {converted[key]!r}")
    try:
        return dataclasses.replace(options, **converted)
    except (ValueError, TypeError) as exc:  # the group's own __post_init__ checks (ranges, combinations)
        raise BadOptionError(f"{where}: {exc}") from None


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "option") -> T:
    """An option group of class ``cls`` built from its defaults and ``values`` (see :func:`with_values`)."""
    return with_values(cls(), values, where)


def to_dict(options: Any) -> dict[str, Any]:
    """The option group as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(options)))


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` strings to a dict; VALUE is read as JSON when it parses, else kept as a string.

    :raises BadOptionError: an item without ``=`` or with an empty key.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadOptionError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values
