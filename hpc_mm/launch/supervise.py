"""Inside the allocation: run the planned entry, forward stop signals, record the run's life.

`launch` is what `hpc-mm launch` runs on every node (or task): it resolves the plan, starts
torchrun or the entry, turns every stop signal into Megatron's exit signal for the ranks,
and, on the leader, writes `started` and the step's outcome to events.jsonl.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from hpc_mm.job.entries import contract
from hpc_mm.job.signals import EXIT_SIGNAL, FORWARDED, IGNORED_BY_ENTRY
from hpc_mm.launch import peers, prefetch, preflight, watchdog
from hpc_mm.launch.command import child_env, command, interpreter, write_start_files
from hpc_mm.launch.hold import note_requeue_by_slurm
from hpc_mm.launch.plan import Plan, resolve_plan
from hpc_mm.launch.procs import become_subreaper, children, kill_descendants, kill_tree
from hpc_mm.launch.progress import Progress
from hpc_mm.launch.requeue import training_finished
from hpc_mm.launch.sentinel import Sentinel
from hpc_mm.run import checkpoints, events, layout, lock, snapshot, stragglers, tensorboard
from hpc_mm.run.events import Kind
from hpc_mm.run.layout import PROGRESS_FILE, TASK_LOG

# Set by the batch script and by `hpc-mm local`: they record how each start ends (finish, local),
# so the launcher records only how the step ended. A launch started by hand records the end itself.
SUPERVISED = ("HPC_MM_BATCH_STARTED_AT", "HPC_MM_LOCAL")


def launch(
    target: str,
    overrides: list[str] = (),
    run_dir: Path | None = None,
    nodes: int | None = None,
    nproc_per_node: int | str | None = None,
) -> int:
    # A stop that comes while the launcher starts (planning, the preflight's import check, the record)
    # is held, never lost, nor fatal: the entry hears it as soon as it runs. (A launcher that inherits
    # SIGTERM ignored would otherwise drop it, and run on.)
    stops: list[int] = []
    for signum in FORWARDED:
        signal.signal(signum, lambda received, _frame: stops.append(received))
    plan = resolve_plan(target, overrides, run_dir, nodes=nodes, nproc_per_node=nproc_per_node)
    _log_to_task_file(plan)
    workdir = Path(plan.spec.entry.workdir)
    preflight.workdir(workdir)
    if plan.node_leader:  # one check a node: its ranks share the interpreter, and a failure ends the step
        preflight.interpreter(
            interpreter(plan), workdir, preflight.needed_modules(plan.device, workdir, plan.spec.builtin)
        )
    held = lock.acquire(plan.run_dir, plan.job_id) if plan.leader else None
    try:
        board = _start_record(plan) if plan.leader else None
        return _run(plan, stops, board)
    finally:
        if held:
            held.release()


def _log_to_task_file(plan: Plan) -> None:
    """Under `hpc-mm local` each launch writes its own log, as srun --output gives each Slurm task
    one: HPC_MM_TASK_LOG names it, %t standing for the task (this process's MPI rank)."""
    pattern = os.environ.get(TASK_LOG)
    if not pattern:
        return
    path = Path(pattern.replace("%t", str(plan.environment.global_rank())))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run(plan: Plan, stops: list[int], board: tensorboard.EventWriter | None = None) -> int:
    run = plan.run
    limits = watchdog.budgets(plan.spec.fault, run)
    entry = contract(plan.spec)
    write_start_files(plan)  # by every process, before its own command: the entry reads them at once
    cmd = command(plan, watchdog.collective_timeout(plan.spec.fault, run))
    print(
        f"hpc-mm launch: {plan.environment.name} {plan.mode} node {plan.node_rank}/{plan.nnodes} "
        f"world {plan.world_size} master {plan.master_addr}:{plan.master_port} backend {plan.backend}",
        file=sys.stderr,
        flush=True,
    )
    if plan.environment.name == "local" and plan.nnodes > 1 and plan.leader:
        print(
            f"hpc-mm launch: waiting for the other {plan.nnodes - 1} node(s): run the same command on each "
            "with NODE_RANK=1.. and MASTER_ADDR set, or use `hpc-mm local` / `hpc-mm submit`",
            file=sys.stderr,
            flush=True,
        )
    # torchrun and the entry keep their temporary files (torchelastic_*) in a folder of ours,
    # removed when the step ends, however it ends.
    scratch = tempfile.mkdtemp(prefix="hpc-mm-launch-")
    progress = Progress(
        run,
        plan.start,
        plan.checkpoint_dir,
        plan.spec.checkpoint.pretrained,
        record=not plan.spec.builtin,
        stop_requested=lambda: bool(stops),
        save_interval=None if entry.announces_saves else entry.save_interval(plan.spec),
        pattern=re.compile(plan.spec.fault.progress_pattern) if plan.spec.fault.progress_pattern else None,
    )
    touched = run.progress_file(plan.start, plan.node_rank, plan.local_rank if plan.mode == "worker" else None)
    touched.parent.mkdir(parents=True, exist_ok=True)
    touched.touch()
    dogs: list[watchdog.Watchdog] = []
    entry_pid: list[int] = []

    def end_here(_reason: str) -> None:  # a launcher of the step failed or vanished: this part ends too
        if entry_pid:
            kill_tree(entry_pid[0])

    task = plan.local_rank if plan.mode == "worker" else None
    ring = peers.Peers(
        run.peers_file(plan.start),
        peers.member_id(plan.node_rank, task, plan.environment.env.get("SLURMD_NODENAME") or plan.master_addr),
        leader=plan.leader,
        host=plan.master_addr,
        on_end=end_here,
    )
    progress.on_failure = lambda: end_here("a rank failed")  # torchrun said so: no need to wait for it

    def watch(child) -> None:
        entry_pid.append(child.pid)
        ring.start()
        dog = watchdog.Watchdog(
            run,
            plan.start,
            plan.node_rank,
            progress,
            child,
            decides=plan.leader,
            budgets=limits,
            builtin=plan.spec.builtin,
            enabled=plan.spec.fault.hang_detection,
            task=plan.local_rank if plan.mode == "worker" else None,
            watch=entry.watch(plan.spec),
            tell=[
                k
                for k in (Kind.STARTED, Kind.CHECKPOINT, Kind.STRAGGLER, Kind.LEAVING)
                if k.value in plan.spec.notify.on
            ],
            detector=_straggler_detector(plan) if plan.leader else None,
            sentinel=Sentinel(plan.spec, plan.checkpoint_dir, plan.device, time.time()),
            board=board,
        )
        dog.start()
        dogs.append(dog)

    env = {**child_env(plan, max(limits.step, limits.checkpoint)), "TMPDIR": scratch, PROGRESS_FILE: str(touched)}
    if stops:  # stopped before the entry started: there is nothing to save, and nothing to run
        print(f"hpc-mm launch: stopped (SIG{signal.Signals(stops[0]).name}) before the entry started", file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)
        if plan.leader:
            _record_exit(plan, 0, stops[0], None, progress)
        return 0
    prefetch.start(plan)  # the checkpoint into the page cache while the interpreters come up
    try:
        rc, received = run_forwarding_signals(
            cmd,
            Path(plan.spec.entry.workdir),
            env,
            to_workers=plan.mode == "agent",
            on_line=progress.feed,
            received=stops,
            on_start=watch,
            on_output=progress.output,
        )
    finally:
        for dog in dogs:
            dog.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    ring.entry_exited(rc, stopping=received is not None)
    ring.close()
    if plan.leader:
        _record_exit(plan, rc, received, dogs[0].hung if dogs else None, progress, ring.ended)
    return rc


def _straggler_detector(plan: Plan) -> stragglers.Detector | None:
    fault = plan.spec.fault
    if not fault.straggler_detection or plan.world_size < 2:
        return None
    return stragglers.Detector(fault.straggler_threshold, fault.straggler_window, fault.straggler_steps)


def _record_exit(
    plan: Plan, rc: int, received: int | None, hung: dict | None, progress: Progress, ended: str | None = None
) -> None:
    """How the step ended, as the leader saw it (the stop signal, a hang, the entry's error line,
    how far it got and what of that a checkpoint kept); `finish` (or `hpc-mm local`) turns it into
    the start's terminal event."""
    run, said = plan.run, {"returncode": rc}
    if progress.error:
        said["error"] = progress.error
    if ended:
        said["ended_by"] = ended  # the step was ended by its launchers: one of them failed or vanished
    committed = checkpoints.latest(plan.spec, plan.checkpoint_dir)
    if progress.iteration is not None:
        said.update(reached=progress.iteration, checkpoint=committed)
        if rc != 0 or received:
            said["lost_iterations"] = events.lost_iterations(progress.iteration, committed)
    if received:
        run.record(Kind.SIGNAL, plan.start, name=signal.Signals(received).name, **said)
    elif hung:
        said.update(cause="hang", reason=f"no progress for {hung['stalled_seconds']:.0f} s in {hung['phase']}")
    run.record(Kind.EXITED, plan.start, **said)
    if not any(name in os.environ for name in SUPERVISED):
        finished = rc == 0 and not received or training_finished(plan.spec, run.reread()) is not None
        run.record(
            Kind.COMPLETED if finished else Kind.STOPPED if received else Kind.FAILED,
            plan.start,
            returncode=rc,
            reason=progress.error or hung and said.get("reason") or "",
        )


def _start_record(plan: Plan) -> tensorboard.EventWriter | None:
    """The leader's start: the run directory (made here for a job file launched by hand), its
    storage checked, the job id (plain sbatch too), `started`, and the start's TensorBoard events
    (where it resumes; for an entry that writes none, the writer of its metrics rows)."""
    if not layout.is_run_dir(plan.run_dir):
        layout.create(layout.plan_run(plan.spec, plan.run_dir))
    preflight.storage(plan.run_dir, plan.checkpoint_dir)
    if contract(plan.spec).tracker_in_place and (said := checkpoints.repair_tracker(plan.checkpoint_dir)):
        print(f"hpc-mm: {said}", file=sys.stderr, flush=True)
    run = plan.run
    if plan.start.job_id and plan.environment.name == "slurm":
        run.record_job_id(plan.start.job_id)
    note_requeue_by_slurm(plan.spec, run, plan.start)
    checkpoint = checkpoints.latest(plan.spec, plan.checkpoint_dir)
    run.record(
        Kind.STARTED,
        plan.start,
        nnodes=plan.nnodes,
        world_size=plan.world_size,
        master=f"{plan.master_addr}:{plan.master_port}",
        backend=plan.backend,
        device=plan.device,
        hosts=plan.hosts,
        **events.batch_times(os.environ, "batch_started_at"),
        checkpoint=checkpoint,
        **({"save_interval": plan.interval} if plan.interval else {}),
        **snapshot.start_fields(plan.run_dir, Path(plan.spec.entry.workdir)),
    )
    try:
        return tensorboard.writer(run, plan.start, checkpoint)
    except OSError as exc:  # a folder it cannot write: training goes on without hpc-mm's events
        print(f"hpc-mm: TensorBoard events not written: {exc}", file=sys.stderr, flush=True)
        return None


def _ignore_user_signals() -> None:
    for signum in IGNORED_BY_ENTRY:
        signal.signal(signum, signal.SIG_IGN)


def run_forwarding_signals(
    cmd: list[str],
    cwd: Path,
    env: dict,
    to_workers: bool = False,
    on_line: Callable[[str], None] | None = None,
    received: list[int] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    on_output: Callable[[], None] | None = None,
) -> tuple[int, int | None]:
    """Run `cmd`; forward the signals that stop a job as Megatron's exit signal. Return (rc, signal).

    Slurm delivers a step's signal to every process in it, not just to us. torchrun does not
    handle USR1/USR2 (their default action kills it and the ranks mid-iteration), so the child
    tree starts with them ignored and learns of the stop only as SIGTERM, from here.
    With `to_workers` (cmd is torchrun) SIGTERM goes to torchrun's workers: they save and exit 0,
    and torchrun ends cleanly instead of tearing the job down as failed.
    The child's output passes through here unchanged, line by line (stdout to ours, stderr to
    ours), `on_line` sees each line of both and `on_output` every read.
    """
    become_subreaper()
    child = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=_ignore_user_signals,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    received = [] if received is None else received
    lock = threading.Lock()  # one line at a time reaches the watcher
    pumps = [
        threading.Thread(target=_pump, args=(source, sink, on_line, lock, on_output), name=f"entry-{name}", daemon=True)
        for name, source, sink in (("stdout", child.stdout, sys.stdout), ("stderr", child.stderr, sys.stderr))
    ]
    for pump in pumps:
        pump.start()
    if on_start is not None:
        on_start(child)

    def forward(signum, _frame):
        received.append(signum)
        targets = (children(child.pid) if to_workers else []) or [child.pid]
        for pid in targets:
            try:
                os.kill(pid, EXIT_SIGNAL)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    if received:  # a stop came before the entry ran: it hears it now
        forward(received.pop(0), None)
    try:
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if rc != 0 and not received:
        # A failed entry leaves nothing worth waiting for: what is left under it (a killed rank's data
        # loader workers, which look for their parent only every few seconds) goes now, and with it
        # the pipes they hold.
        kill_descendants()
    for pump in pumps:  # the rest of the output (grandchildren may hold a pipe a moment longer)
        pump.join(timeout=10)
    return rc, (received[0] if received else None)


_BREAK = re.compile(rb"\r\n|[\r\n]")
_HELD = 1 << 16  # a line without an end is passed on once it is this long


def _pump(
    stream, sink, on_line: Callable[[str], None] | None, lock: threading.Lock, on_output: Callable[[], None] | None
) -> None:
    """Copy one of the entry's streams to ours (the task's log) as it comes, whole lines at a time (a
    carriage return ends one too: progress bars redraw after it); show each line to `on_line`, and
    every read, a whole line or not, to `on_output`."""
    out, fd, held = sink.buffer, stream.fileno(), b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            break
        data = held + chunk
        pieces = _BREAK.split(data)
        held = pieces.pop()
        if len(held) >= _HELD:
            pieces.append(held)
            held = b""
        if len(data) > len(held):
            out.write(data[: len(data) - len(held)])
        on_line, on_output = _show(on_line, on_output, pieces, lock)
        out.flush()
    if held:
        out.write(held)
        out.flush()
        _show(on_line, None, [held], lock)
    stream.close()


def _show(on_line, on_output, pieces: list[bytes], lock: threading.Lock):
    """The lines to the watcher; a watcher that fails is dropped, never the training's output."""
    try:
        with lock:
            if on_output is not None:
                on_output()
            for piece in pieces:
                if piece and on_line is not None:
                    on_line(piece.decode("utf-8", errors="replace"))
    except Exception as exc:
        sys.stderr.write(f"hpc-mm launch: progress watcher: {exc.__class__.__name__}: {exc}\n")
        return None, None
    return on_line, on_output
