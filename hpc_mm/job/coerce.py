"""Coercion: build typed dataclasses from a parsed mapping, collecting every problem.

The job's schema is plain dataclasses (`spec.py`); this module turns a nested mapping into
them, coercing where YAML is ambiguous (``lr: 1e-4`` is a string to PyYAML) and reporting
unknown keys, wrong types and bad choices by their dotted field path.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, Union, get_args, get_origin

from hpc_mm.errors import Problem, did_you_mean
from hpc_mm.job.yamlfile import AmbiguousNumber

_MISSING = dataclasses.MISSING
INT64 = 2**63


class Required:
    """Marker default: the field must be given in the job file."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = Required()


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def build(cls: type, data: Any, path: str, problems: list[Problem]) -> Any:
    """Build dataclass `cls` from `data`; append problems instead of raising."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(
            Problem(
                path or "(top level)",
                f"expected a mapping of keys, got {_kind(data)}",
                "write `key: value` lines under this section",
            )
        )
        return None
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    for key in data:
        if key not in names:
            problems.append(Problem(_join(path, str(key)), "unknown key", did_you_mean(key, names)))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        where = _join(path, f.name)
        if f.name in data:
            strict = _strict(f, data[f.name], where)
            if strict is not None:
                problems.append(strict)
            kwargs[f.name] = coerce(hints[f.name], data[f.name], where, problems)
        elif isinstance(f.default, Required):
            problems.append(Problem(where, "is required", f.metadata.get("hint", "")))
            kwargs[f.name] = None
        elif f.default is _MISSING and f.default_factory is _MISSING:  # nested section
            kwargs[f.name] = build(hints[f.name], {}, where, problems)
    try:
        return cls(**kwargs)
    except TypeError:  # a nested section failed; problems already say why
        return None


def _strict(f: dataclasses.Field, value: Any, where: str) -> Problem | None:
    """Fields that take no shorthand (spec.py's `strict`): a list written as a list, text as text; a
    value that would be taken another way (a lone word for a list of events, a number for a command)
    is a mistake there."""
    kind = f.metadata.get("strict")
    if kind == "list" and value is not None and not isinstance(value, list):
        return Problem(where, f"expected a list, got {_kind(value)}", f"write [{value}] or one `- item` a line")
    if kind == "text" and value is not None and not isinstance(value, str):
        return Problem(where, f"expected text, got {_kind(value)}", "quote it")
    return None


def coerce(tp: Any, value: Any, where: str, problems: list[Problem]) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, problems)
    if tp is Any:
        return value
    if isinstance(value, AmbiguousNumber):  # `time: 1:00:00` is 3600 to YAML 1.1, `010` is 8
        problems.append(ambiguous(where, value))
        return None
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own problem (e.g. "not a finite number")
            return coerce(options[0], value, where, problems)
        scratch: list[Problem] = []
        for option in options:
            scratch.clear()
            out = coerce(option, value, where, scratch)
            if not scratch:
                return out
        problems.append(Problem(where, f"{value!r} is not {' or '.join(_describe(o) for o in options)}"))
        return None
    if origin is Literal:
        if value in args:
            return value
        problems.append(
            Problem(where, f"{value!r} is not one of the allowed values", did_you_mean(value, [str(a) for a in args]))
        )
        return None
    if origin is list:
        if isinstance(value, (str, int, float)) and args[0] is str:
            value = [value]  # a single line where a list is expected
        if not isinstance(value, list):
            problems.append(Problem(where, f"expected a list, got {_kind(value)}", "write `- item` lines"))
            return []
        return [coerce(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(Problem(where, f"expected a mapping, got {_kind(value)}", "write `KEY: value` lines"))
            return {}
        return {str(k): coerce(args[1], v, _join(where, str(k)), problems) for k, v in value.items()}
    return _scalar(tp, value, where, problems)


def _scalar(tp: type, value: Any, where: str, problems: list[Problem]) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(Problem(where, f"{value!r} is not true or false"))
        return None
    if tp is int:
        number = _integer(value)
        if number is None:
            problems.append(Problem(where, f"{value!r} is not an integer", "write whole digits, such as 8"))
        elif abs(number) >= INT64:
            problems.append(Problem(where, f"{number} is outside the 64-bit integer range"))
            return None
        return number
    if tp is float:
        number = _number(value)
        if number is None:
            problems.append(
                Problem(
                    where,
                    f"{value!r} is not a number",
                    "write a plain number such as 2.0e-5 or 0.1 (no quotes, units or words)",
                )
            )
        elif not math.isfinite(number):
            problems.append(
                Problem(
                    where,
                    f"{value!r} is not a finite number",
                    "write a finite value such as 1.0e-5 (nan, inf and overflowing exponents are refused)",
                )
            )
            return None
        return number
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            problems.append(Problem(where, f"expected text, got {_kind(value)}"))
            return None
        return str(value)
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in the schema


def _integer(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            return math.inf
    if isinstance(value, str):  # PyYAML reads `1e-4` as a string (YAML 1.1)
        try:
            return float(value)
        except ValueError:
            return None
    return None


def ambiguous(where: str, value: AmbiguousNumber) -> Problem:
    return Problem(
        where,
        value.explain(),
        f'quote it ("{value}") if you mean the text; write plain decimal digits if you mean a number',
    )


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    return {int: "an integer", float: "a number", str: "text", bool: "true/false"}.get(tp, str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {list: "a list", dict: "a mapping", str: f"text {value!r}", bool: f"{value!r}"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
