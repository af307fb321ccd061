"""hpc-mm's command line: parse flags, call one function per command, print user errors.

User errors print ``error: <field>: <problem> (hint: ...)`` and exit 2, never a traceback.
Heavy modules (torch, megatron, submitit) are imported inside the commands that need them,
so `validate`, `args`, `render` and `submit` stay quick on a login node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hpc_mm import __version__
from hpc_mm.errors import UserError, print_problems

DESCRIPTION = """\
Run MindSpeed-MM / Megatron training jobs from one YAML job file: validate it,
render an sbatch script, submit to Slurm, launch on every node, emulate a
multi-node job on one machine with mpirun, and follow the run.

typical use:
  hpc-mm validate jobs/tiny-vlm.yaml          check the job before it queues
  hpc-mm submit jobs/tiny-vlm.yaml --nodes 2  submit to Slurm (prints job id, run dir)
  hpc-mm status                               state of the latest run
  hpc-mm local jobs/tiny-vlm.yaml             emulate 2 nodes on this machine
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"error: {self.prog}: {message} (hint: {self.prog} --help)\n")


def _job_options(p: argparse.ArgumentParser, many: bool = False, optional: bool = False,
                 what: str = "the job file (YAML)") -> None:
    """What every command that takes a job file takes: the file, --set, --nodes, --nproc-per-node, --run-dir."""
    if many:
        p.add_argument("jobs", nargs="+", metavar="job", help="job files (YAML)")
    else:
        p.add_argument("job", nargs="?" if optional else None, help=what)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job-file value, e.g. --set gpt.lr=1.0e-4 (repeatable; value is YAML)")
    p.add_argument("--nodes", type=_positive_int, help="number of nodes (sets slurm.nodes and distributed.nnodes)")
    p.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc_per_node", type=_nproc,
                   help="processes (devices) per node, or auto")
    p.add_argument("--run-dir", type=Path, help="run directory (default: runs/<name>-<time>)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpc-mm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpc-mm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("validate", help="check job files and print the derived figures")
    _job_options(p, many=True)
    p.add_argument("--json", action="store_true", help="print the derived figures as JSON")

    p = sub.add_parser("args", help="print the training arguments the entry point receives (one shell line)")
    _job_options(p)

    p = sub.add_parser("env", help="print what this process resolved: ranks, master address/port, backend")
    _job_options(p, optional=True, what="job file or run directory (optional)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("render", help="write the sbatch script for a job (plain `sbatch` works on it)")
    _job_options(p)
    p.add_argument("-o", "--output", type=Path, help="write the script here instead of standard output")
    p.add_argument("--template-dir", type=Path, help="use your own templates (sbatch.sh.j2) from this folder")

    p = sub.add_parser("submit", help="submit a job to Slurm; prints the job id and run directory")
    _job_options(p)
    p.add_argument("--template-dir", type=Path, help="use your own templates (sbatch.sh.j2) from this folder")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be submitted; run `sbatch --test-only` when Slurm is reachable")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit non-zero if it failed")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("status", help="state, restarts, last iteration and checkpoint of a run")
    p.add_argument("target", nargs="?", help="run directory or Slurm job id (default: the newest run in runs/)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("logs", help="print a run's logs")
    p.add_argument("target", help="run directory or Slurm job id")
    p.add_argument("--rank", type=int, help="only lines from this global rank")
    p.add_argument("--restart", type=int, help="the log of this restart (default: the latest)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")

    p = sub.add_parser("cancel", help="cancel a run's Slurm job")
    p.add_argument("target", help="run directory or Slurm job id")

    p = sub.add_parser("launch", help="(inside an allocation) start training on this node or task")
    _job_options(p, what="run directory (from submit/render) or a job file")

    p = sub.add_parser("local", help="emulate a multi-node job on this machine with mpirun")
    _job_options(p)
    p.add_argument("--mpirun", default="mpirun", help="the mpirun to use (default: mpirun on PATH)")

    p = sub.add_parser("preflight", help="(batch script) check this node before training: interpreter, devices, "
                                         "folders, the master's port")
    p.add_argument("target", help="run directory")

    p = sub.add_parser("finish", help="(batch script) after the step: requeue on a stop signal, or end")
    p.add_argument("target", help="run directory")
    p.add_argument("--returncode", type=int, default=0, help="the training step's exit status")
    p.add_argument("--signal", default="none", help="the stop signal the batch shell caught (USR1, TERM, none)")
    p.add_argument("--failed", metavar="REASON", help="the batch script failed before the step: record REASON")
    p.add_argument("--preflight-failed", action="store_true", help="the preflight step failed on some node")

    p = sub.add_parser("report", help="plot loss and learning rate of a run and summarise it")
    p.add_argument("target", help="run directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        return print_problems(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hpc-mm logs ... | head`: the reader left; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# ---------------------------------------------------------------- commands

def _load(args: argparse.Namespace, job: str | None = None):
    """The job file, with --set and the shortcuts applied, validated; warnings printed."""
    from hpc_mm.errors import warn
    from hpc_mm.job.jobfile import load_job
    from hpc_mm.job.rules import advice

    spec = load_job(job or args.job, args.overrides, args.nodes, args.nproc_per_node)
    for problem in advice(spec):
        warn(problem)
    return spec


def _login_argv(spec, run_dir: Path | None) -> list[str]:
    """The entry's argv as a login node can know it (the launcher's plan fills in the rest)."""
    from hpc_mm.job.megatron import login_backend, training_argv
    from hpc_mm.job.spec import derive
    from hpc_mm.run.layout import checkpoint_dir, default_run_dir

    run_dir = Path(run_dir or default_run_dir(spec)).resolve()
    return training_argv(spec, run_dir=run_dir, checkpoint_dir=checkpoint_dir(spec, run_dir),
                         backend=login_backend(spec), world_size=derive(spec).world_size)


def cmd_validate(args: argparse.Namespace) -> int:
    from hpc_mm.job.spec import derive
    from hpc_mm.slurm.submit import prepare

    problems, results = [], {}
    for job in args.jobs:
        try:
            spec = _load(args, job)
            _login_argv(spec, args.run_dir)  # what `args` and `render` would do, written nowhere
            prepare(spec, args.run_dir)
        except UserError as exc:
            problems += exc.problems
            continue
        d = derive(spec)
        results[job] = {"name": spec.name, "nnodes": spec.nnodes, "world_size": d.world_size,
                        "data_parallel_size": d.data_parallel_size, "global_batch_size": d.global_batch_size,
                        "gradient_accumulation_steps": d.gradient_accumulation_steps,
                        "micro_batches_per_step": d.micro_batches_per_step}
    if problems:
        raise UserError(problems)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for job, r in results.items():
        if r["world_size"] is None:
            print(f"ok {job}: {r['nnodes']} nodes; world size decided at launch (nproc_per_node: auto)")
            continue
        print(f"ok {job}: world size {r['world_size']} = {r['nnodes']} nodes x {r['world_size'] // r['nnodes']}, "
              f"DP {r['data_parallel_size']}, global batch {r['global_batch_size']}, "
              f"gradient accumulation {r['gradient_accumulation_steps']}, "
              f"micro-batches per step {r['micro_batches_per_step']}")
    return 0


def cmd_args(args: argparse.Namespace) -> int:
    from hpc_mm.job.megatron import shell_line

    print(shell_line(_login_argv(_load(args), args.run_dir)))
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

    return render(_load(args), args.run_dir, args.template_dir, args.output)


def cmd_submit(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.submit import dry_run, submit

    spec = _load(args)
    if args.dry_run:
        return dry_run(spec, args.run_dir, args.template_dir, as_json=args.json)
    return submit(spec, args.run_dir, template_dir=args.template_dir, wait=args.wait, as_json=args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.status import print_status

    return print_status(args.target, as_json=args.json)


def cmd_logs(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.status import print_logs

    return print_logs(args.target, rank=args.rank, restart=args.restart, follow=args.follow)


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.status import cancel

    return cancel(args.target)


def cmd_launch(args: argparse.Namespace) -> int:
    from hpc_mm.launch.supervise import launch

    return launch(args.job, overrides=args.overrides, run_dir=args.run_dir, nodes=args.nodes,
                  nproc_per_node=args.nproc_per_node)


def cmd_local(args: argparse.Namespace) -> int:
    from hpc_mm.launch.local import run_local

    return run_local(_load(args), args.run_dir, mpirun=args.mpirun)


def cmd_preflight(args: argparse.Namespace) -> int:
    from hpc_mm.launch.preflight import run_checks

    return run_checks(Path(args.target))


def cmd_finish(args: argparse.Namespace) -> int:
    from hpc_mm.slurm.finish import finish

    return finish(Path(args.target), args.returncode, None if args.signal == "none" else args.signal, args.failed,
                  args.preflight_failed)


def cmd_report(args: argparse.Namespace) -> int:
    from hpc_mm.run.report import report

    return report(Path(args.target))


COMMANDS = {
    "validate": cmd_validate, "args": cmd_args, "env": cmd_env, "render": cmd_render, "submit": cmd_submit,
    "status": cmd_status, "logs": cmd_logs, "cancel": cmd_cancel, "launch": cmd_launch, "local": cmd_local, "preflight": cmd_preflight, "finish": cmd_finish,
    "report": cmd_report,
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _nproc(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)
