"""User errors: one line each, naming the field, the problem and a hint.

A `UserError` is something the user can fix (a job file, a flag, the environment).
The CLI prints each problem as ``error: <field>: <problem> (hint: ...)`` and exits 2.
Anything else that raises is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        line = f"{self.field}: {self.message}" if self.field else self.message
        return f"{line} (hint: {self.hint})" if self.hint else line


class UserError(Exception):
    """One or more problems the user must fix; never a bug."""

    def __init__(self, problems: Problem | Iterable[Problem]):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    @classmethod
    def one(cls, field: str, message: str, hint: str = "") -> "UserError":
        return cls(Problem(field, message, hint))


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """A hint listing the valid choices, leading with the closest one."""
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    valid = ", ".join(choices)
    return f"did you mean {close[0]!r}? valid: {valid}" if close else f"valid: {valid}"
