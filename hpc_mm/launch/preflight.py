"""Checks before training starts, so that what would fail later fails now, in one line naming
the node: the entry's folder, the entry's interpreter and the modules its device needs, the run
directory and the checkpoint folder writable, and room for checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc_mm.environments import health
from hpc_mm.environments.devices import MODULES
from hpc_mm.errors import Problem, UserError
from hpc_mm.launch.reach import Listener, reach_master
from hpc_mm.run import checkpoints
from hpc_mm.run.atomic import write_atomic

MIN_FREE = 256 * 2**20  # with no checkpoint yet to size one by


def _node() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def writable(where: str, folder: Path) -> list[Problem]:
    """Can this process create a file in `folder` (making it if needed)?"""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hpc-mm-probe-"):
            pass
    except OSError as exc:
        return [
            Problem(
                where,
                f"{folder} is not writable on {_node()} ({exc.strerror})",
                "fix its permissions, or point it at a writable folder",
            )
        ]
    return []


def room_for_checkpoints(folder: Path, count: int = 2) -> list[Problem]:
    """Free space for `count` checkpoints the size of the last one (or MIN_FREE before the first)."""
    last = checkpoints.latest_iteration(folder)
    size = sum(p.stat().st_size for p in checkpoints.iter_dir(folder, last).rglob("*") if p.is_file()) if last else 0
    need = max(count * size, MIN_FREE)
    free = shutil.disk_usage(folder).free
    if free < need:
        return [
            Problem(
                "checkpoint.dir",
                f"{folder} has {free / 2**20:.0f} MiB free on {_node()}, "
                f"less than the {need / 2**20:.0f} MiB {count} checkpoints need",
                "free space there, or point checkpoint.dir at a larger filesystem",
            )
        ]
    return []


def storage(run_dir: Path, checkpoint_dir: Path) -> None:
    """The run directory and the checkpoint folder, checked by the leader before training."""
    problems = writable("--run-dir", run_dir)
    if not problems:
        problems = writable("checkpoint.dir", checkpoint_dir) or room_for_checkpoints(checkpoint_dir)
    if problems:
        raise UserError(problems)


def device_health(device, env) -> None:
    """The vendor tools' word on this node's devices (environments/health.py): a sick one fails the
    preflight on this node; what could not be asked is said, never blamed."""
    found = health.check(device, env)
    for line in found.unchecked:
        _say([f"hpc-mm preflight: {_node()}: note: device health not checked: {line}"])
    if found.problems:
        raise UserError(
            Problem(health.FIELD, f"{p} on {_node()}", "the node is left out; its devices need a look")
            for p in found.problems
        )


def responsive(folder: Path) -> None:
    """The checkpoint folder's file system answers in time (a hung shared mount never does)."""
    parent = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    said = health.answers_in_time(parent)
    if said:
        raise UserError.one(
            "checkpoint.dir", f"{folder}: {said} on {_node()}", "check the shared file system's mount there"
        )


def workdir(path: Path) -> None:
    if not path.is_dir():
        raise UserError.one(
            "entry.workdir",
            f"{path} does not exist on {_node()}",
            "point it at your MindSpeed-MM checkout on the compute nodes",
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError.one("entry.workdir", f"{path} is not readable on {_node()}")


_FIND = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"


def needed_modules(device: str, workdir: Path, builtin: bool) -> tuple[str, ...]:
    """What the entry's interpreter must be able to import: torch (and torch_npu on NPUs), and
    mindspeed with mindspeed_mm when the entry is MindSpeed-MM (its checkout holds mindspeed_mm/)."""
    modules = MODULES[device]
    if not builtin and (workdir / "mindspeed_mm").is_dir():
        modules += ("mindspeed", "mindspeed_mm")
    return modules


def interpreter(command: list[str], workdir: Path, modules: tuple[str, ...], field: str = "entry.python") -> None:
    """Run the entry's interpreter (through its wrapper) once, in its workdir, and ask it for `modules`."""
    node = _node()
    shown = " ".join(command)
    try:
        result = subprocess.run(
            [*command, "-c", _FIND, *modules], cwd=workdir, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError.one(
            field,
            f"cannot run {shown} on {node} ({exc.__class__.__name__}: {exc})",
            "set entry.python (and entry.wrapper) to an interpreter that exists on the compute nodes",
        ) from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError.one(
            field,
            f"{shown} does not start on {node}: {last}",
            "set entry.python (and entry.wrapper) to an interpreter that works on the compute nodes",
        )
    missing = result.stdout.split()
    if missing:
        raise UserError.one(
            field,
            f"{shown} on {node} cannot import {', '.join(missing)}, which this job needs",
            "install it into that environment, or point entry.python at one that has it "
            "(torch_npu comes with CANN's Ascend Extension for PyTorch)",
        )


def interpreter_once(memo: Path, command: list[str], workdir: Path, modules: tuple[str, ...]) -> None:
    """`interpreter`, unless it passed on this node for the same interpreter (same file, same
    modification time), modules and workdir: a restart does not pay for importing torch again."""
    binary = shutil.which(command[-1]) or command[-1]
    try:
        stamp = os.stat(binary).st_mtime
    except OSError:
        stamp = None
    key = {
        "command": command,
        "binary": os.path.realpath(binary),
        "mtime": stamp,
        "modules": list(modules),
        "workdir": str(workdir),
    }
    try:
        if stamp is not None and json.loads(memo.read_text()) == key:
            return
    except (OSError, ValueError):
        pass
    interpreter(command, workdir, modules)
    if stamp is not None:
        write_atomic(memo, json.dumps(key))


def run_checks(run_dir: Path) -> int:
    """`hpc-mm preflight RUN_DIR`: one task per node, before training, on every start. Each node
    checks itself, writes its result into the run directory and prints one line per problem;
    `hpc-mm finish --preflight-failed` decides what follows (a node's own problem: requeue without
    it; the same everywhere: the job is wrong)."""
    from hpc_mm.environments.devices import check_device, node_name
    from hpc_mm.job.megatron import declared_device
    from hpc_mm.launch.plan import environment_for
    from hpc_mm.run.events import this_start
    from hpc_mm.run.records import PreflightResult
    from hpc_mm.run.rundir import RunDir

    started = time.monotonic()
    run = RunDir(run_dir)
    spec = run.job
    env, node = dict(os.environ), node_name(os.environ)
    environment = environment_for(spec, env)
    problems: list[Problem] = []
    # The master listens before anything slow: the other nodes must not give up on it while it checks.
    nodes = environment.num_nodes()
    listener = Listener(environment.main_port(), nodes - 1) if nodes > 1 and environment.node_rank() == 0 else None
    if listener is not None and listener.error is not None:
        problems.append(
            Problem(
                "distributed.master_port",
                f"port {environment.main_port()} on {node} (the master) is not free ({listener.error.strerror})",
                "set distributed.master_port to a free port, or leave it `auto`",
            )
        )
    workdir_ = Path(spec.entry.workdir)
    checks = [lambda: workdir(workdir_), lambda: script(workdir_, spec.entry.script)]
    device = None
    try:
        device = check_device(declared_device(spec), env)
    except UserError as exc:
        problems += exc.problems
    if device is not None:
        checks.append(lambda: device_health(device, env))
        checks.append(
            lambda: interpreter_once(
                run.interpreter_memo(node),
                [*spec.entry.wrapper, spec.entry.python or sys.executable],
                workdir_,
                needed_modules(device.kind, workdir_, spec.builtin),
            )
        )
    checks.append(lambda: responsive(run.checkpoint_dir(spec)))
    checks.append(lambda: storage(run.path, run.checkpoint_dir(spec)))
    for check in checks:
        try:
            check()
        except UserError as exc:
            problems += exc.problems
    unreached, unreached_problem = (None, None)
    if nodes > 1 and listener is None:
        unreached, unreached_problem = reach_master(environment, node)
    accepted = listener.wait() if listener is not None else None
    result = PreflightResult(
        node,
        tuple(f"{node}: {p}" for p in problems),  # its own: they point at this node
        round(time.monotonic() - started, 2),
        unreached=unreached,
        unreached_problem=unreached_problem,
        listening=(listener.error is None) if listener is not None else None,
        accepted=accepted,
    )
    run.write_preflight(this_start(env), result)
    lines = list(result.problems)
    if unreached_problem:
        lines.append(
            f"{node}: distributed.master_addr: {unreached_problem} (hint: check the network between the nodes: "
            "HCCL_SOCKET_IFNAME / NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME)"
        )
    _say(
        [f"hpc-mm preflight: error: {line}" for line in lines]
        or [f"hpc-mm preflight: {node}: ok ({result.seconds:.1f} s)"]
    )
    return 1 if lines else 0


def _say(lines: list[str]) -> None:
    """Print in one write: every node's preflight shares the batch log."""
    os.write(sys.stdout.fileno(), "".join(f"{line}\n" for line in lines).encode())


def script(folder: Path, entry: str) -> None:
    if entry.endswith(".py") and not (folder / entry).is_file():
        raise UserError.one(
            "entry.script", f"{folder / entry} does not exist on {_node()}", "check entry.script and entry.workdir"
        )
