"""Will the run's last save fit in the time Slurm gives it? (validate --dry-run, submit)"""

from __future__ import annotations

from pathlib import Path

from hpc_mm.job.entries import contract
from hpc_mm.job.spec import JobSpec
from hpc_mm.run import layout
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import query


def grace_problems(spec: JobSpec, run_dir: Path | None, preemption=None) -> list:
    """Warnings when the run's last save would not fit in the time Slurm gives it: the partition's
    preemption GraceTime + KillWait (an entry that saves on the signal), and requeue.grace_seconds
    (the signal before the time limit). The save is the run's last measured one (with --run-dir of a
    run that has saved), else estimated from its newest checkpoint's size at 1 GB/s."""
    from hpc_mm.errors import Problem
    from hpc_mm.run import checkpoints

    if not contract(spec).trains:
        return []
    folder = layout.plan_run(spec, run_dir).run_dir
    run = RunDir(folder) if layout.is_run_dir(folder) else None
    saves = [e.save_seconds for e in run.events() if e.save_seconds] if run else []
    if saves:
        save, how = saves[-1], "the run's last save took"
    else:
        ckpt = checkpoints.latest_whole(run.checkpoint_dir(spec)) if run else None
        if ckpt is None:
            return []
        size = sum(
            p.stat().st_size for p in checkpoints.iter_dir(run.checkpoint_dir(spec), ckpt).rglob("*") if p.is_file()
        )
        save, how = size / 1e9, f"a checkpoint of {size / 1e9:.1f} GB takes about"
    out = []
    if save > spec.requeue.grace_seconds:
        out.append(
            Problem(
                "requeue.grace_seconds",
                f"{spec.requeue.grace_seconds} s: {how} {save:.0f} s, so the "
                "save before the time limit would be cut short",
                f"raise it above {save * 1.5:.0f}",
            )
        )
    found = preemption or (query.preemption(spec.slurm.partition) if query.available() else None)
    if found is not None and found.preempts and contract(spec).saves_on_signal(spec):
        if save > found.seconds_to_save:
            out.append(
                Problem(
                    "slurm.partition",
                    f"{found.partition or 'the default partition'} preempts ({found.mode}) with "
                    f"GraceTime {found.grace_seconds} s + KillWait {found.kill_wait_seconds} s = "
                    f"{found.seconds_to_save} s before the kill, but {how} {save:.0f} s: "
                    "a preemption would lose the work since the last save",
                    "save more often (checkpoint.save_interval), a faster checkpoint folder, or a partition with a "
                    "longer GraceTime",
                )
            )
    return out
