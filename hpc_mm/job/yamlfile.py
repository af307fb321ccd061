"""Reading YAML (and the mm JSON files) so that a hostile or careless file can neither take the
login node down nor mean something other than what it says.

- Input is capped in size (a file that never ends, /dev/zero or a pipe, is refused after the
  cap) and in nesting depth, and a document whose aliases expand past a cap (a "billion
  laughs" bomb) is refused before anything is built from it.
- A key given twice in one mapping is refused, naming both lines: PyYAML keeps the last one.
- YAML 1.1 reads an unquoted `1:00:00` as the integer 3600 and `010` as 8. Such numbers come
  out as `AmbiguousNumber`, which carries the text as written, so the job's rules can refuse
  them (from the job file) or take the text (from `--set`, where `1:00:00` means the text).
"""

from __future__ import annotations

import contextvars
import os
import re
import select
import stat
import time
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hpc_mm.errors import Problem, UserError

MAX_JOB_BYTES = 256 * 1024  # job files are a few KB
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 50
MAX_VALUES = 100_000
READ_SECONDS = 1.0  # a job file on disk reads in milliseconds; a pipe that stalls is refused
_MERGE = "tag:yaml.org,2002:merge"
_OCTAL = re.compile(r"[-+]?0[0-7]+")


class AmbiguousNumber(str):
    """A scalar YAML 1.1 reads as a number its writer most likely did not mean."""

    def __new__(cls, text: str, value: int | float, kind: str):
        self = super().__new__(cls, text)
        self.value, self.kind = value, kind
        return self

    def explain(self) -> str:
        if self.kind == "sexagesimal":
            return f"{self} is read by YAML as the number {self.value} (base 60)"
        return f"{self} is read by YAML as the octal number {self.value}"


class NotHere(UserError):
    """A file the job names is not on this machine, while checking a job for another one (`--remote`)."""


# Set while checking a job on a laptop for a login node (`hpc-mm --remote ... submit`): a file the
# job names that is not here may be the cluster's own; the login node checks it.
ELSEWHERE: contextvars.ContextVar[bool] = contextvars.ContextVar("hpc_mm_files_elsewhere", default=False)


def read_capped(path: Path, limit: int, field: str) -> str:
    """The text of `path`, refusing devices, and anything larger than `limit` or slower than
    READ_SECONDS (a pipe or FIFO that never ends, or never starts)."""
    it = "" if field == str(path) else f"{path} "  # the field names the file already
    try:
        info = os.stat(path)
    except FileNotFoundError:
        error = NotHere if ELSEWHERE.get() else UserError
        raise error.one(field, f"{it}does not exist", "check the path") from None
    except OSError as exc:
        raise UserError.one(field, f"cannot read {path} ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError.one(field, f"{it}is a directory, not a file")
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        raise UserError.one(field, f"{it}is a device, not a file", "pass the path of a file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer must not block us
    except OSError as exc:
        raise UserError.one(field, f"cannot read {path} ({exc.strerror})") from None
    chunks, size, deadline = [], 0, time.monotonic() + READ_SECONDS
    try:
        while size <= limit:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise UserError.one(
                    field, f"{it}did not end within {READ_SECONDS:.0f} s (a pipe or FIFO?)", "pass a regular file"
                )
            try:
                chunk = os.read(fd, min(65536, limit + 1 - size))
            except BlockingIOError:
                continue
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise UserError.one(field, f"{it}is larger than {limit // 1024} KiB", "is it the right file?")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError.one(field, f"{it}is not UTF-8 text (byte {exc.start})") from None


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(
                    f"values nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})",
                    "a job file has a few levels of sections",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class YamlSyntaxError(UserError):
    """The text is not YAML at all (as opposed to YAML that is refused)."""


class _Refused(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def _construct_int(loader, node):
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    text = node.value.replace("_", "")
    if ":" in text:
        return AmbiguousNumber(node.value, value, "sexagesimal")
    if _OCTAL.fullmatch(text):
        return AmbiguousNumber(node.value, value, "octal")
    return value


def _construct_float(loader, node):
    value = yaml.SafeLoader.construct_yaml_float(loader, node)
    return AmbiguousNumber(node.value, value, "sexagesimal") if ":" in node.value else value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _expanded_size(root: Node) -> int:
    """How many values the document becomes once every alias is expanded (capped); iterative,
    since aliases can chain deeper than Python's stack."""
    memo: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            memo[key] = min(MAX_VALUES + 1, 1 + sum(memo[id(c)] for c in _children(node)))
            continue
        if key in memo:
            continue
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                raise _Refused("an alias refers to a value that contains it", "remove the alias")
            if id(child) not in memo:
                stack.append((child, False))
    return memo[id(root)]


def _duplicate_keys(root: Node) -> list[Problem]:
    problems, seen_nodes = [], set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if key.tag == _MERGE:
                    stack.append((value, path))
                    continue
                name = key.value if isinstance(key, ScalarNode) else None
                where = f"{path}.{name}" if path else str(name)
                if name is not None and name in first:
                    problems.append(
                        Problem(
                            where,
                            f"is given twice (lines {first[name]} and "
                            f"{key.start_mark.line + 1}); YAML would keep only the last",
                            "remove one of them",
                        )
                    )
                elif name is not None:
                    first[name] = key.start_mark.line + 1
                stack.append((value, where))
        elif isinstance(node, SequenceNode):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
    return sorted(problems, key=lambda p: p.field)


def load(text: str, field: str) -> Any:
    """Parse one YAML document with every cap and check; problems name `field` (the file) or
    the key they concern."""
    try:
        loader = _Loader(text)  # PyYAML checks every character here, before parsing
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        raise YamlSyntaxError(
            Problem(
                field,
                f"a control character (#x{exc.character:04x}) at line {line}, column {column}: YAML does not allow it",
                "delete it (editors often do not show it; `cat -A FILE` does)",
            )
        ) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_size(root) > MAX_VALUES:
            raise _Refused(
                f"expands to more than {MAX_VALUES} values through its aliases",
                "an alias bomb? a job file needs a few dozen values",
            )
        duplicates = _duplicate_keys(root)
        if duplicates:
            raise UserError(duplicates)
        return loader.construct_document(root)
    except _Refused as exc:
        raise UserError.one(field, exc.message, exc.hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, first = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and problem == "second occurrence":  # a duplicate anchor: say which, and where first
            problem = (
                f"{context.replace('; first occurrence', '')} (first at line {first.line + 1})" if first else context
            )
        raise YamlSyntaxError(
            Problem(field, f"YAML syntax error at {where}{problem}", "check indentation and quoting on that line")
        ) from None
    finally:
        loader.dispose()


def load_value(text: str, field: str) -> Any:
    """A `--set` value: YAML, except that text that is not YAML, and a number YAML 1.1 would
    misread (`--set slurm.time=1:00:00`), are taken as written."""
    try:
        value = load(text, field)
    except YamlSyntaxError:
        return text
    return str(value) if isinstance(value, AmbiguousNumber) else value


def read_small_yaml(path: Path, hint: str = "") -> Any:
    """A small YAML file of the user's own (hpc-mm's config file): the same caps and checks as a job
    file (size, time, aliases, duplicate keys), every problem one line naming the file."""
    try:
        return load(read_capped(path, MAX_JOB_BYTES, str(path)), str(path))
    except UserError as exc:
        if hint and all(p.hint == "" for p in exc.problems):
            raise UserError([Problem(p.field, p.message, hint) for p in exc.problems]) from None
        raise
