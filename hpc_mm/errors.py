"""User errors: one line each, naming the field, the problem and a hint.

A `UserError` is something the user can fix (a job file, a flag, the environment).
Every entry point (the CLI, the built-in trainer) prints each problem as
``error: <field>: <problem> (hint: ...)`` through `print_problems` and exits 2.
Anything else that raises is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from typing import Iterable, TextIO

USER_ERROR_EXIT = 2


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


def print_problems(error: UserError, stream: TextIO | None = None) -> int:
    """Print each problem as one `error:` line; return the exit code for user errors."""
    stream = stream or sys.stderr
    for problem in error.problems:
        stream.write(f"error: {_one_line(str(problem))}\n")
    stream.flush()
    return USER_ERROR_EXIT


def warn(problem: Problem, stream: TextIO | None = None) -> None:
    """Something the user should know that does not stop the job."""
    stream = stream or sys.stderr
    stream.write(f"warning: {_one_line(str(problem))}\n")
    stream.flush()


def _one_line(text: str) -> str:
    # Values quoted into messages may hold line breaks; an error stays one line.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """A hint listing the valid choices, leading with the closest one."""
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    valid = ", ".join(choices)
    return f"did you mean {close[0]!r}? valid: {valid}" if close else f"valid: {valid}"
