"""TensorBoard event files of a run, written and read without TensorBoard installed.

Every start of a run writes its events into one folder, `<run>/tensorboard/` (one run in
TensorBoard, whatever was requeued or restarted): Megatron entries through their own
`--tensorboard-dir`; for the others (the FSDP2 trainers, which write none, and the built-in trainer)
node 0's launcher writes the metrics rows hpc-mm reads from them (loss, learning rate, grad norm,
samples/s), one event file per start. A start that resumes from a checkpoint repeats the steps after
it: TensorBoard's reader drops the older copies of those steps when it meets a step that went back.

The format is TensorFlow's record file of `Event` protocol buffers: each record is its length
(uint64), the length's masked CRC-32C, the bytes, their masked CRC-32C; an event is wall_time (field
1, double), step (2, int64), file_version (3, string), summary (5) of values (tag 1, simple_value 2)
or session_log (7; status 1 = START: a restart at this step).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc_mm.errors import Problem, UserError, warn
from hpc_mm.run.records import Metric

SCALARS = (  # tag -> the metrics row's field
    ("loss", "loss"),
    ("learning-rate", "lr"),
    ("grad-norm", "grad_norm"),
    ("samples-per-second", "samples_per_second"),
)
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(
    wall_time: float, step: int = 0, file_version: str | None = None, scalars: dict | None = None, start: bool = False
) -> bytes:
    body = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        body += _field(3, file_version.encode())
    if start:  # SessionLog START (field 7; status 1): the reader drops what earlier files hold from `step` on
        body += _field(7, b"\x08\x01")
    if scalars:
        values = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)) for tag, value in scalars.items()
        )
        body += _field(5, values)
    return body


def record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data))


class EventWriter:
    """One start's event file in `folder`: it begins with a restart at `first_step` (the step after the
    checkpoint the start resumes from: TensorBoard drops the earlier starts' events from there on), then
    the metrics rows as scalars, appended as they come."""

    def __init__(self, folder: Path, label: str, first_step: int = 1):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.{label}"
        self.path = folder / name
        now = time.time()
        with open(self.path, "ab") as f:
            f.write(record(event(now, file_version="brain.Event:2")) + record(event(now, first_step, start=True)))

    def write(self, rows: list[Metric]) -> None:
        data = b"".join(
            record(event(row.time or time.time(), row.iteration, scalars=scalars(row))) for row in rows if scalars(row)
        )
        if data:
            with open(self.path, "ab") as f:
                f.write(data)


def writer(run, start, checkpoint: int | None) -> EventWriter | None:
    """Node 0, before the entry starts: this start's event file, which marks where it resumes (the step
    after `checkpoint`). For an entry that writes no events of its own, the writer of its metrics rows;
    for one that writes its own (Megatron), only the mark, in the folder it writes into."""
    from hpc_mm.job.entries import contract

    spec = run.job
    who = contract(spec).tensorboard(spec)
    if who == "none":
        return None
    board = EventWriter(folder_of(run), f"hpc-mm.{start.job_id}.r{start.restart}", (checkpoint or 0) + 1)
    return board if who == "hpc-mm" else None


def scalars(row: Metric) -> dict[str, float]:
    return {tag: float(v) for tag, name in SCALARS if (v := getattr(row, name)) is not None}


# ------------------------------------------------------------------------------------ reading
def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes):
    """(field number, wire type, value) of one protocol buffer message; unknown types end it."""
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            size, at = _read_varint(data, at)
            value, at = data[at : at + size], at + size
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            return
        yield number, wire, value


def read_scalars(path: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every simple scalar in one event file; a torn last record is left out."""
    out = []
    try:
        data = Path(path).read_bytes()
    except OSError:
        return out
    at = 0
    while at + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        body = data[at + 12 : at + 12 + length]
        if len(body) < length or at + 16 + length > len(data):
            break
        at += 16 + length
        step, summary = 0, None
        try:
            for number, _, value in _fields(body):
                if number == 2:
                    step = value
                elif number == 5:
                    summary = value
            for number, _, value in _fields(summary or b""):
                if number != 1:
                    continue
                found = dict((n, v) for n, _, v in _fields(value))
                if 1 in found and 2 in found and len(found[2]) == 4:
                    out.append((step, found[1].decode(errors="replace"), struct.unpack("<f", found[2])[0]))
        except (IndexError, struct.error):
            break
    return out


def event_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).rglob("events.out.tfevents.*")) if Path(folder).is_dir() else []


def describe(folder: Path) -> str | None:
    """What a run's TensorBoard folder holds, in one line (report)."""
    files = event_files(folder)
    if not files:
        return None
    seen = [s for f in files for s in read_scalars(f)]
    tags = sorted({tag for _, tag, _ in seen})
    steps = [step for step, _, _ in seen]
    span = f", steps {min(steps)}-{max(steps)}" if steps else ""
    shown = ", ".join(tags[:6]) + (" ..." if len(tags) > 6 else "")
    return f"{folder}: {len(files)} event file(s){span}" + (f" ({shown})" if shown else "")


def folder_of(run) -> Path:
    """A run's TensorBoard folder: the one its job names (Megatron's --tensorboard-dir), else its own."""
    from hpc_mm.job.megatron import job_value
    from hpc_mm.run.layout import tensorboard_dir

    try:
        named = job_value(run.job, "--tensorboard-dir")
    except UserError:
        named = None
    return Path(named) if named else tensorboard_dir(run.path)


def logdir_spec(runs, links: Path | None = None) -> str:
    """TensorBoard's --logdir_spec: each run's folder under the run's name. `,` and `:` are its
    separators: a folder whose path holds one is given through a link in `links`."""
    names: dict[str, int] = {}
    parts = []
    for run in runs:
        name = re.sub(r"[,:]", "_", run.name)
        names[name] = names.get(name, 0) + 1
        name = name if names[name] == 1 else f"{name}-{names[name]}"
        folder = folder_of(run)
        if re.search(r"[,:]", str(folder)) and links is not None:
            (links / name).symlink_to(folder, target_is_directory=True)
            folder = links / name
        parts.append(f"{name}:{folder}")
    return ",".join(parts)


def serve(runs, port: int, host: str) -> int:
    """`hpc-mm tensorboard`: TensorBoard, in the foreground, on the runs' folders."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError.one("tensorboard", "is not installed here", "pip install 'hpc-mm[report]'")
    empty = [r.name for r in runs if not event_files(folder_of(r))]
    if len(empty) == len(runs):
        raise UserError.one(
            "RUN",
            f"no TensorBoard events in {', '.join(str(folder_of(r)) for r in runs)}",
            "they appear once a run has trained a few iterations (Megatron and FSDP2 entries, the built-in trainer)",
        )
    for name in empty:
        warn(Problem("RUN", f"{name} has no TensorBoard events yet"))
    with tempfile.TemporaryDirectory(prefix="hpc-mm-tensorboard-") as links:
        command = [sys.executable, "-m", "tensorboard.main", "--logdir_spec", logdir_spec(runs, Path(links))]
        command += ["--port", str(port), "--host", host]
        print(f"hpc-mm: TensorBoard on http://{host}:{port} for {len(runs)} run(s) (Ctrl-C ends it)", flush=True)
        child = subprocess.Popen(command)
        previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())  # it ends with us
        try:
            return child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached TensorBoard too
            return child.wait() and 130
        finally:
            signal.signal(signal.SIGTERM, previous)
