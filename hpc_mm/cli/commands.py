"""One function per command. Heavy modules (torch, megatron, submitit) are imported inside the
commands that need them, so `validate`, `args`, `render` and `submit` stay quick on a login node."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hpc_mm.cli.parser import shortcut_overrides
from hpc_mm.cli.scripts import cmd_import, node_args
from hpc_mm.errors import UserError
from hpc_mm.run.format import nodes


def _load(args: argparse.Namespace, job: str | None = None):
    """The job file, with --set and the shortcuts applied, validated; warnings printed."""
    from hpc_mm.errors import warn
    from hpc_mm.job.jobfile import load_job
    from hpc_mm.job.rules import advice

    spec = load_job(job or args.job, list(args.overrides) + shortcut_overrides(args), args.nodes, args.nproc_per_node)
    for problem in advice(spec):
        warn(problem)
    return spec


def _login_argv(spec, run_dir: Path | None) -> list[str]:
    """The entry's argv as the launcher will give it, as far as a login node can know (the
    device's backend and, with nproc_per_node: auto, the world size are the node's to say)."""
    from hpc_mm.job.entries import contract
    from hpc_mm.run.layout import with_copies

    spec, _ = _with_interval(spec, run_dir)
    paths = _login_paths(spec, run_dir)
    spec, _ = with_copies(spec, paths.run_dir)  # the entry reads the run's copies of its files
    return contract(spec).argv(*_login_context(spec, paths))


def _login_paths(spec, run_dir: Path | None):
    from hpc_mm.job.entries.base import Paths
    from hpc_mm.run.checkpoints import latest_whole
    from hpc_mm.run.layout import checkpoint_dir, tensorboard_dir

    run_dir = Path(run_dir).resolve() if run_dir else Path(PLACEHOLDER)
    ckpt = checkpoint_dir(spec, run_dir, resolve=run_dir.is_absolute())
    latest = latest_whole(ckpt) if run_dir.is_absolute() else None
    return Paths(run_dir, ckpt, latest, tensorboard_dir=tensorboard_dir(run_dir))


def _with_interval(spec, run_dir: Path | None, preemption=None):
    """checkpoint.save_interval: auto as it would be chosen now (with --run-dir: from that run's
    measurements); (the spec with it, the choice or None)."""
    from hpc_mm.launch.plan import with_interval

    return with_interval(spec, Path(run_dir).resolve() if run_dir else None, dict(os.environ), preemption)


def _login_context(spec, paths) -> tuple:
    from hpc_mm.job.megatron import login_backend
    from hpc_mm.job.spec import derive
    from hpc_mm.launch.watchdog import collective_timeout
    from hpc_mm.run.rundir import RunDir

    timeout = collective_timeout(spec.fault, RunDir(paths.run_dir))
    return spec, paths, login_backend(spec), derive(spec).world_size, timeout


def cmd_validate(args: argparse.Namespace) -> int:
    from hpc_mm.job.entries import contract
    from hpc_mm.launch import watchdog
    from hpc_mm.run.interval import worst_case_loss
    from hpc_mm.run.rundir import RunDir
    from hpc_mm.slurm.submit import check

    problems, results = [], {}
    for job in args.jobs:
        try:
            spec = _load(args, job)
            _login_argv(spec, args.run_dir)  # what `args` and `render` would do, written nowhere
            check(spec, args.run_dir)  # what `render` and `submit` would refuse
            if args.dry_run:
                from hpc_mm.errors import warn
                from hpc_mm.slurm.submit import ask_slurm, grace_problems

                for problem in grace_problems(spec, args.run_dir):
                    warn(problem)
                ask_slurm(spec, args.run_dir)  # what `submit --dry-run` asks, refused the same way
        except UserError as exc:
            problems += exc.problems
            continue
        spec, chosen = _with_interval(spec, args.run_dir)
        entry = contract(spec)
        d = entry.derived(spec)
        limits = watchdog.budgets(spec.fault, RunDir(args.run_dir)) if args.run_dir else watchdog.floors(spec.fault)
        results[job] = {
            "name": spec.name,
            "entry": entry.kind,
            "contract": entry.describe(spec),
            "preemption": entry.preemption(spec),
            "saves": entry.saves(spec),
            "hang_watch": entry.watch(spec).value if spec.fault.hang_detection else None,
            "hang_watch_why": watchdog.describe(spec.fault, entry.watch(spec), limits),
            "worst_case_loss": worst_case_loss(spec, args.run_dir),
            "save_interval": chosen.to_json() if chosen else None,
            "save_interval_why": chosen.describe() if chosen else None,
            "nnodes": spec.nnodes,
            "world_size": d.world_size,
            "data_parallel_size": d.data_parallel_size,
            "global_batch_size": d.global_batch_size,
            "gradient_accumulation_steps": d.gradient_accumulation_steps,
            "micro_batches_per_step": d.micro_batches_per_step,
        }
    if problems:
        raise UserError(problems)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for job, r in results.items():
        if r["world_size"] is None:
            print(f"ok {job}: {nodes(r['nnodes'])}; world size decided at launch (nproc_per_node: auto)")
        elif r["data_parallel_size"] is None:
            print(f"ok {job}: world size {r['world_size']} = {nodes(r['nnodes'])} x {r['world_size'] // r['nnodes']}")
        else:
            print(
                f"ok {job}: world size {r['world_size']} = {nodes(r['nnodes'])} x {r['world_size'] // r['nnodes']}, "
                f"DP {r['data_parallel_size']}, global batch {r['global_batch_size']}, "
                f"gradient accumulation {r['gradient_accumulation_steps']}, "
                f"micro-batches per step {r['micro_batches_per_step']}"
            )
        print(f"  entry {r['contract']}")
        print(f"  hang watchdog: {r['hang_watch_why']}")
        print(f"  checkpoint saves: {r['saves']}")
        if r["save_interval_why"]:
            print(f"  checkpoint.save_interval: auto: {r['save_interval_why']}")
        loss, took = r["worst_case_loss"], ""
        if loss:
            took = (
                f", about {loss['minutes']:.0f} min at the measured {loss['step_seconds']:.1f} s/iteration"
                if (loss.get("minutes") is not None)
                else " (its time is known once the run has logged iterations)"
            )
        print(f"  {r['preemption']}{took}")
    return 0


# Where `args` has no run directory to show: the one `submit` will create (its name has the time).
PLACEHOLDER = "RUN_DIR"


def cmd_args(args: argparse.Namespace) -> int:
    from hpc_mm.job.megatron import shell_line
    from hpc_mm.run.layout import is_run_dir

    if args.node is not None or args.diff:
        return node_args(args)
    if args.run_dir is None and is_run_dir(Path(args.job).parent):  # a run's own job file: that run
        args.run_dir = Path(args.job).parent
    print(shell_line(_login_argv(_load(args), args.run_dir)))
    if args.run_dir is None:
        print(
            f"note: {PLACEHOLDER} stands for the run directory submit creates; pass --run-dir to see a run's own paths",
            file=sys.stderr,
        )
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from hpc_mm.launch.plan import resolve_plan

    plan = resolve_plan(args.job, args.overrides, args.run_dir, nodes=args.nodes, nproc_per_node=args.nproc_per_node)
    info = plan.describe()
    # One write per process: under mpirun several processes share this stream.
    if args.json:
        text = json.dumps(info, sort_keys=True) + "\n"
    else:
        text = "".join(f"{key:16} {value}\n" for key, value in info.items())
    os.write(sys.stdout.fileno(), text.encode())
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.submit import render

    return render(_load(args), args.run_dir, args.template_dir, args.output, new_code=args.new_code)


def job_loader(args: argparse.Namespace):
    """load(job file, extra --set items): the job as the command's flags make it, checked."""

    def load(job: str, extra: list[str]):
        return _load(argparse.Namespace(**{**vars(args), "overrides": list(args.overrides) + extra}), job)

    return load


def cmd_submit(args: argparse.Namespace) -> int:
    from hpc_mm.cli.submitting import submit

    return submit(args, job_loader(args))


def cmd_status(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.status import print_status

    return print_status(args.target, as_json=args.json, show_all=args.show_all, limit=args.limit)


def cmd_logs(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.logs import print_logs

    return print_logs(args.target, rank=args.rank, restart=args.restart, follow=args.follow, job=args.job)


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.cancel import cancel

    return cancel(args.target, now=args.now)


def cmd_launch(args: argparse.Namespace) -> int:
    from hpc_mm.launch.supervise import launch

    return launch(
        args.job, overrides=args.overrides, run_dir=args.run_dir, nodes=args.nodes, nproc_per_node=args.nproc_per_node
    )


def cmd_local(args: argparse.Namespace) -> int:
    from hpc_mm.launch.local import run_local

    return run_local(_load(args), args.run_dir, mpirun=args.mpirun, preempt_at=args.preempt_at, new_code=args.new_code)


def cmd_preflight(args: argparse.Namespace) -> int:
    from hpc_mm.launch.preflight import run_checks

    return run_checks(Path(args.target))


def cmd_post(args: argparse.Namespace) -> int:
    from hpc_mm.launch.post import run_post
    from hpc_mm.run.rundir import RunDir

    return run_post(RunDir(args.target).job, args.returncode, args.status)


def cmd_finish(args: argparse.Namespace) -> int:
    from hpc_mm.launch.finish import finish
    from hpc_mm.slurm import query

    # A requeue must not be lost to a controller that is restarting: ask it again for 5 minutes.
    with query.patience(300):
        return finish(
            Path(args.target),
            args.returncode,
            None if args.signal == "none" else args.signal,
            args.failed,
            args.preflight_failed,
        )


def cmd_next_restart(args: argparse.Namespace) -> int:
    from hpc_mm.launch.finish import next_restart

    print(next_restart(Path(args.target)))
    return 0


def cmd_standby(args: argparse.Namespace) -> int:
    from hpc_mm.launch.warm import serve

    return serve(Path(args.target))


def cmd_release_hold(args: argparse.Namespace) -> int:
    from hpc_mm.launch.hold import release_hold

    return release_hold(args.job_id, Path(args.target), args.restart)


def cmd_report(args: argparse.Namespace) -> int:
    from hpc_mm.run.report import report, report_sweep
    from hpc_mm.run.sweepdir import SweepDir
    from hpc_mm.slurm.runs import find

    found = find(args.target)
    return report_sweep(found.path, found.tasks()) if isinstance(found, SweepDir) else report(found)


def cmd_tensorboard(args: argparse.Namespace) -> int:
    from hpc_mm.run.sweepdir import SweepDir
    from hpc_mm.run.tensorboard import serve
    from hpc_mm.slurm.runs import find

    found = [find(t) for t in (args.targets or [None])]
    runs = [r for f in found for r in (f.tasks() if isinstance(f, SweepDir) else [f])]
    return serve(runs, args.port, args.host)


def cmd_goodput(args: argparse.Namespace) -> int:
    from hpc_mm.run.forecast import forecast

    return forecast(args)


COMMANDS = {
    "validate": cmd_validate,
    "args": cmd_args,
    "env": cmd_env,
    "render": cmd_render,
    "submit": cmd_submit,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "launch": cmd_launch,
    "local": cmd_local,
    "preflight": cmd_preflight,
    "release-hold": cmd_release_hold,
    "finish": cmd_finish,
    "post": cmd_post,
    "import": cmd_import,
    "next-restart": cmd_next_restart,
    "standby": cmd_standby,
    "report": cmd_report,
    "goodput": cmd_goodput,
    "tensorboard": cmd_tensorboard,
}
