"""Megatron's own option table, shipped with hpc-mm: every option of the parser MindSpeed-MM runs
on (Megatron-LM core_v0.12.1, MindSpeed 2.2.0_core_r0.12.1, MindSpeed-MM 2.2.0), with its
type, choices and argparse action, as `scripts/megatron-options` read them from those sources.

`validate` uses it to check `gpt.extra` before anything is queued: an unknown key, a value of
the wrong type or outside the option's choices is found on the login node, not at job start.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TABLES = Path(__file__).resolve().parent
# The release whose table checks a job that names none (every later table holds the earlier ones'
# options: 2.3.0 and 26.x only add).
LATEST = "26.1.0"


def table_file(release: str) -> Path:
    """One table a supported MindSpeed-MM release (scripts/megatron-options --release writes it)."""
    return TABLES / f"megatron_options-{release}.json"


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    dest: str
    source: str  # "megatron", "mindspeed" or "mindspeed_mm"
    action: str | None = None
    type: str | None = None  # "int", "float", "str", "bool", or "other" (a converter function)
    choices: tuple | None = None
    nargs: str | int | None = None
    default: Any = None

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def is_switch(self) -> bool:
        return self.action in ("store_true", "store_false")


def normal(flag_or_key: str) -> str:
    """`use_flash_attn`, `--use-flash-attn` and `--override-opt_param-scheduler` compare alike."""
    return "--" + flag_or_key.lstrip("-").replace("_", "-")


@dataclass(frozen=True)
class OptionTable:
    options: tuple[Option, ...]
    versions: dict = field(default_factory=dict)

    @functools.cached_property
    def _by_flag(self) -> dict[str, Option]:
        return {normal(f): o for o in self.options for f in o.flags}

    def find(self, flag_or_key: str) -> Option | None:
        return self._by_flag.get(normal(flag_or_key))

    def close(self, key: str, cutoff: float = 0.85) -> str | None:
        """The known option closest to a misspelt key, if one is close (at `cutoff`: so close that
        the key is an error; a looser one makes a suggestion)."""
        match = difflib.get_close_matches(normal(key), list(self._by_flag), n=1, cutoff=cutoff)
        return match[0] if match else None


@functools.lru_cache(maxsize=None)
def table(release: str = LATEST) -> OptionTable:
    """The options of Megatron + MindSpeed + MindSpeed-MM as `release` of MindSpeed-MM has them."""
    data = json.loads(table_file(release).read_text())
    options = tuple(
        Option(
            flags=tuple(o["flags"]),
            dest=o["dest"],
            source=o["source"],
            action=o.get("action"),
            type=o.get("type"),
            choices=tuple(o["choices"]) if "choices" in o else None,
            nargs=o.get("nargs"),
            default=o.get("default"),
        )
        for o in data["options"]
    )
    return OptionTable(options, data.get("versions", {}))


def value_problem(option: Option, value: Any) -> str | None:
    """Why `value` cannot be given to `option`, or None when it can."""
    if option.is_switch:
        return None if isinstance(value, bool) else f"{value!r} is not true or false ({option.flag} is a switch)"
    if option.type == "bool":
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if isinstance(value, bool):
        return f"{option.flag} takes a value, not {value}" if value else None
    many = option.nargs in ("+", "*") or isinstance(option.nargs, int)
    values = value if isinstance(value, list) and many else [value]
    if isinstance(value, list) and not many:
        return f"{option.flag} takes one value, not a list"
    for item in values:
        problem = _item_problem(option, item)
        if problem:
            return problem
    return None


def _item_problem(option: Option, item: Any) -> str | None:
    if isinstance(item, (dict, list)) or item is None:
        return f"{item!r} is not a value for {option.flag}"
    if option.type == "int" and not (isinstance(item, int) and not isinstance(item, bool)):
        return f"{item!r} is not an integer ({option.flag} takes one)"
    if option.type == "float":
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            return f"{item!r} is not a number ({option.flag} takes one)"
        if not math.isfinite(item):
            return f"{item!r} is not a finite number"
    if option.choices is not None and item not in option.choices and str(item) not in map(str, option.choices):
        return f"{item!r} is not one of {option.flag}'s choices: {', '.join(map(str, option.choices))}"
    return None


_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "other": str,
    "bool": lambda text: text.lower() not in ("", "0", "false", "no"),
}


def parser(options: OptionTable | None = None) -> argparse.ArgumentParser:
    """An argparse parser with every option of the table, built the way Megatron builds its own
    (allow_abbrev=False, so an unknown or abbreviated option is an error). Entry points that
    keep Megatron's command-line contract (the test suite's stand-in for pretrain_vlm.py) use it."""
    out = argparse.ArgumentParser(allow_abbrev=False, exit_on_error=False)
    for o in (options or table()).options:
        kwargs: dict[str, Any] = {"dest": o.dest}
        if o.action:
            kwargs["action"] = o.action
        else:
            kwargs["type"] = _TYPES.get(o.type or "str", str)
            if o.nargs is not None:
                kwargs["nargs"] = o.nargs
            if o.choices is not None:
                kwargs["choices"] = list(o.choices)
        if o.default is not None and o.action not in ("store_true", "store_false"):
            kwargs["default"] = o.default
        out.add_argument(*o.flags, **kwargs)
    return out
