"""The command line's flags: one subcommand per step of a job's life, sbatch's short flags on
submit/render, argparse's own errors as one line and exit 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hpc_mm import __version__
from hpc_mm.cli.types import non_negative_float, non_negative_int, nproc, positive_float, positive_int

DESCRIPTION = """\
Run MindSpeed-MM jobs (Megatron-argument entries, the FSDP2 trainer of MindSpeed-MM
26, inference and other commands) from one YAML job file: validate it, render an
sbatch script, submit to Slurm, launch on every node, emulate a multi-node job on
one machine with mpirun, and follow the run.

typical use:
  hpc-mm validate jobs/tiny-vlm.yaml          check the job before it queues
  hpc-mm submit jobs/tiny-vlm.yaml --nodes 2  submit to Slurm (prints job id, run dir)
  hpc-mm status                               a table of your runs (state, iteration, ETA)
  hpc-mm local jobs/tiny-vlm.yaml             emulate 2 nodes on this machine
  hpc-mm report runs/<run>                    plot and summarise a run
  hpc-mm --remote login1 submit JOB -N 4      submit from a laptop, over ssh
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"error: {self.prog}: {message} (hint: {self.prog} --help)\n")


def _job_options(
    p: argparse.ArgumentParser, many: bool = False, optional: bool = False, what: str = "the job file (YAML)"
) -> None:
    """What every command that takes a job file takes: the file, --set, --nodes, --nproc-per-node, --run-dir."""
    if many:
        p.add_argument("jobs", nargs="+", metavar="job", help="job files (YAML)")
    else:
        p.add_argument("job", nargs="?" if optional else None, help=what)
    _set_option(p, "override a job-file value, e.g. --set gpt.lr=1.0e-4 (repeatable; value is YAML)")
    p.add_argument("--nodes", type=positive_int, help="number of nodes (sets slurm.nodes and distributed.nnodes)")
    p.add_argument(
        "--nproc-per-node",
        "--nproc_per_node",
        dest="nproc_per_node",
        type=nproc,
        help="processes (devices) per node, or auto",
    )
    p.add_argument("--run-dir", type=Path, help="run directory (default: runs/<name>-<time>)")


# sbatch's own short flags, for people who think in them: each sets one job-file value.
SHORTCUTS = (
    ("-p", "--partition", "slurm.partition", str, "Slurm partition"),
    ("-t", "--time", "slurm.time", str, "time limit, as sbatch takes it (e.g. 2:00:00, 1-12:00:00)"),
    ("-A", "--account", "slurm.account", str, "account to charge"),
    ("-q", "--qos", "slurm.qos", str, "quality of service"),
    (None, "--gpus-per-node", "slurm.gpus_per_node", str, "GPUs to ask Slurm for on every node"),
)


def _set_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text)


def _slurm_shortcuts(p: argparse.ArgumentParser) -> None:
    p.add_argument("-N", dest="nodes", type=positive_int, help="same as --nodes")
    for short, long, key, kind, text in SHORTCUTS:
        flags = [short, long] if short else [long]
        p.add_argument(
            *flags,
            dest=key.replace(".", "__"),
            metavar=long.strip("-").upper().replace("-", "_"),
            type=kind,
            help=f"{text} (sets {key})",
        )


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """--set items for the sbatch-style flags given; the value is text, quoted as YAML would need."""
    out = []
    for _short, _long, key, _kind, _text in SHORTCUTS:
        value = getattr(args, key.replace(".", "__"), None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpc-mm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpc-mm {__version__}")
    parser.add_argument(
        "--remote",
        metavar="LOGIN",
        help="run submit, status, logs, cancel and report on this login node over ssh (an ssh destination "
        "or a Host of your ssh config; also HPC_MM_REMOTE, or remote: in ~/.config/hpc-mm/config.yaml); "
        "submit checks the job here and copies it and the files it names there",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("validate", help="check job files and print the derived figures")
    _job_options(p, many=True)
    _slurm_shortcuts(p)
    p.add_argument("--json", action="store_true", help="print the derived figures as JSON")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="also ask Slurm, as `submit --dry-run` does: `sbatch --test-only` of the script, and does the "
        "last save fit in the partition's preemption GraceTime + KillWait",
    )

    p = sub.add_parser(
        "args",
        help="print the arguments the entry receives, exactly as launch gives them (one shell line); "
        "for the FSDP2 trainer, the path of the YAML hpc-mm writes for it at every start",
        description="Without --node: the entry's arguments. With --node N: what `hpc-mm launch` runs on node N "
        "of the job (the launcher, its options, the entry, its arguments and the variables hpc-mm or the job "
        "sets), in an allocation of nodes n1..nN. With --diff SCRIPT: that, set beside what the launch script "
        "runs, every difference with hpc-mm's reason for it.",
    )
    _job_options(p)
    p.add_argument("--node", type=int, metavar="N", help="what node N (0-based) runs")
    p.add_argument("--device", choices=["npu", "cuda", "cpu"], help="the nodes' device (default: the job's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--diff",
        nargs=argparse.REMAINDER,
        metavar="SCRIPT",
        help="the launch script (and its arguments) to compare with; last on the line",
    )

    p = sub.add_parser(
        "import",
        help="bring your launch script: run it with its launchers replaced by recorders and write what it runs "
        "as a job file (every value from the script, with the line it came from)",
        description="Runs SCRIPT under bash in a throw-away copy of the folder you run it from, with torchrun, "
        "msrun, accelerate, python and every command that changes something replaced by recorders (no network, "
        "a time limit), and writes what each launch would run as a job file: the entry, its arguments, the "
        "layout, the exported variables and sourced files. What hpc-mm runs differently, and what it could not "
        "carry, is said line by line. Options go before SCRIPT; everything after it is the script's.",
    )
    p.add_argument("-o", "--output", metavar="JOB.yaml", help="the job file to write (default: SCRIPT's name .yaml)")
    p.add_argument("--workdir", metavar="DIR", help="the folder you run the script from (default: here)")
    p.add_argument("--name", help="the job's name (default: from the script's name)")
    p.add_argument("--force", action="store_true", help="write over an existing job file")
    p.add_argument("--trace", action="store_true", help="print what the recorders saw, as JSON, and write nothing")
    p.add_argument(
        "--timeout", type=positive_int, default=60, metavar="S", help="seconds the script may run (default 60)"
    )
    p.add_argument("script", metavar="SCRIPT", help="the launch script (bash)")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")

    p = sub.add_parser("env", help="print what this process resolved: ranks, master address/port, backend")
    _job_options(p, optional=True, what="job file or run directory (optional)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("render", help="write the sbatch script for a job (plain `sbatch` works on it)")
    _job_options(p)
    _slurm_shortcuts(p)
    p.add_argument("-o", "--output", type=Path, help="write the script here instead of standard output")
    p.add_argument("--template-dir", type=Path, help="use your own templates (sbatch.sh.j2) from this folder")
    p.add_argument(
        "--new-code",
        action="store_true",
        help="continue a run (--run-dir) with the entry's checkout as it is now, though it differs from the "
        "code the run was submitted with (each run keeps a copy of its code: entry.snapshot)",
    )

    p = sub.add_parser(
        "submit",
        help="submit a job to Slurm (prints the job id and run directory); several job files: a pipeline",
        description="Submit a job to Slurm. Several job files make a pipeline: each stage waits for the "
        "one before it (or for what its job file's `after:` names) and starts only if that one completed; "
        "Slurm cancels the stages after one that failed.",
    )
    _job_options(p, many=True)
    _slurm_shortcuts(p)
    p.add_argument(
        "--after",
        action="append",
        default=[],
        metavar="RUN_OR_JOB",
        help="start only once this job (a Slurm job id or a run directory) completed (repeatable)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="submit one Slurm job array, a task per combination of the swept values "
        "(repeatable; e.g. --sweep gpt.lr=1e-4,2e-4 --sweep gpt.seed=1,2)",
    )
    p.add_argument(
        "--zip",
        action="store_true",
        help="pair the swept values (the i-th value of every --sweep together) instead of every combination",
    )
    p.add_argument(
        "--max-parallel",
        type=positive_int,
        metavar="N",
        help="let at most N tasks of the sweep run at once (Slurm's --array=...%%N)",
    )
    p.add_argument(
        "--new-code",
        action="store_true",
        help="continue a run (--run-dir) with the entry's checkout as it is now, though it differs from the "
        "code the run was submitted with (each run keeps a copy of its code: entry.snapshot)",
    )
    p.add_argument("--template-dir", type=Path, help="use your own templates (sbatch.sh.j2) from this folder")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be submitted; run `sbatch --test-only` when Slurm is reachable",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the job with a progress line until it ends; exit non-zero if it failed",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "status",
        help="a table of runs (state, restarts, iteration, loss, ETA), or one run with the timeline of its starts",
    )
    p.add_argument(
        "target", nargs="?", help="run directory, sweep folder or Slurm job id (default: every run under runs/)"
    )
    p.add_argument("--all", dest="show_all", action="store_true", help="every run, not only the newest")
    p.add_argument("--limit", type=positive_int, default=20, help="how many runs the table shows (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("logs", help="print a run's logs (of its newest start, unless told which)")
    p.add_argument("target", help="run directory or Slurm job id (a job id: that job's newest start)")
    p.add_argument("--rank", type=int, help="only lines from this global rank")
    p.add_argument(
        "--restart",
        type=int,
        metavar="N",
        help="the logs of the run's start N, counted across the run directory as `status RUN` lists them "
        "(default: the newest)",
    )
    p.add_argument("--job", metavar="JOB_ID", help="the newest start of this job (a run directory may hold several)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")

    p = sub.add_parser("cancel", help="stop a run's Slurm job: it saves a checkpoint first, then ends as cancelled")
    p.add_argument("target", help="run directory, sweep folder or Slurm job id")
    p.add_argument(
        "--now",
        action="store_true",
        help="scancel at once instead of asking the job to save first; Slurm's SIGTERM still lets an "
        "entry that saves on it (Megatron's --exit-signal-handler) save within Slurm's KillWait",
    )

    p = sub.add_parser("launch", help="(inside an allocation) start training on this node or task")
    _job_options(p, what="run directory (from submit/render) or a job file")

    p = sub.add_parser("local", help="emulate a multi-node job on this machine with mpirun")
    _job_options(p)
    p.add_argument("--mpirun", default="mpirun", help="the mpirun to use (default: mpirun on PATH)")
    p.add_argument(
        "--new-code",
        action="store_true",
        help="continue a run (--run-dir) with the entry's checkout as it is now, though it differs from the "
        "code the run was submitted with (each run keeps a copy of its code: entry.snapshot)",
    )
    p.add_argument(
        "--preempt-at",
        type=positive_int,
        action="append",
        default=[],
        metavar="ITER",
        help="emulate a preemption at this iteration: the job saves, stops and starts again as a "
        "requeued job would (repeatable)",
    )

    p = sub.add_parser(
        "preflight",
        help="(batch script) check this node before training: interpreter, devices, folders, the master's port",
    )
    p.add_argument("target", help="run directory")

    p = sub.add_parser("finish", help="(batch script) after the step: requeue on a stop signal, or end")
    p.add_argument("target", help="run directory")
    p.add_argument("--returncode", type=int, default=0, help="the training step's exit status")
    p.add_argument("--signal", default="none", help="the stop signal the batch shell caught (USR1, TERM, none)")
    p.add_argument("--failed", metavar="REASON", help="the batch script failed before the step: record REASON")
    p.add_argument("--preflight-failed", action="store_true", help="the preflight step failed on some node")

    p = sub.add_parser("post", help="(batch script) the job's post lines, after the step; exits with --status")
    p.add_argument("target", help="run directory")
    p.add_argument("--returncode", type=int, default=0, help="the training step's exit status (HPC_MM_STEP_RC)")
    p.add_argument("--status", type=int, default=0, help="the job's own exit status, kept whatever the lines return")

    p = sub.add_parser("next-restart", help="(batch script) this start's number within its job")
    p.add_argument("target", help="run directory")

    p = sub.add_parser(
        "standby", help="(batch script) this node's standby interpreters for restarts inside the allocation"
    )
    p.add_argument("target", help="run directory")

    p = sub.add_parser("release-hold", help="(after a requeue) let the requeued job start as soon as it has nodes")
    p.add_argument("job_id", help="the requeued job")
    p.add_argument("target", help="run directory")
    p.add_argument("--restart", type=int, default=1, help="the start the job makes next")

    p = sub.add_parser(
        "goodput",
        help="predict the goodput of this job at scale (1k-100k accelerators), from a run's measured costs",
        description="Simulate (event-driven, seeded) and estimate (closed form) the goodput of the job at "
        "several scales for three strategies: requeue only, restart inside the allocation, restart inside "
        "with spare nodes. The costs (save, stop, restart, start-up, step time) come from the run's record; "
        "what it never did is assumed, and any of them can be declared.",
    )
    p.add_argument("target", help="a run directory (its measured costs), or a job file (declare the costs)")
    _set_option(p, "override a value of the job (its file, or the run's), e.g. --set slurm.spare_nodes=2")
    p.add_argument("--nodes", type=positive_int, help="number of nodes of the job")
    p.add_argument("--accelerators", default="1024,4096,16384,65536,100000", help="scales to predict, comma-separated")
    p.add_argument("--per-node", type=positive_int, help="accelerators a node (default: the job's nproc_per_node)")
    p.add_argument("--mtbf-hours", type=positive_float, help="a measured MTBF of a job of --mtbf-at accelerators")
    p.add_argument("--mtbf-at", type=positive_int, default=16384, help="the scale --mtbf-hours was measured at")
    p.add_argument(
        "--failure-rate",
        type=positive_float,
        help="failures per accelerator-hour (default: Meta's, Llama 3: 1.8 h MTBF on 16,384 GPUs)",
    )
    p.add_argument(
        "--node-loss", type=non_negative_float, default=0.78, help="share of failures that lose a node for good"
    )
    p.add_argument("--preemptions-per-day", type=non_negative_float, default=0.0)
    p.add_argument(
        "--queue-wait-minutes", type=non_negative_float, default=60.0, help="mean wait in the queue after a requeue"
    )
    p.add_argument(
        "--spares", type=non_negative_int, help="spare nodes held with the job (default: slurm.spare_nodes, or 1)"
    )
    for name in ("save", "stop", "restart", "startup", "step"):
        p.add_argument(
            f"--{name}-seconds", type=positive_float, help=f"declare the {name} time instead of measuring it"
        )
    p.add_argument(
        "--stall-ratio",
        type=non_negative_float,
        help="what a save holds training over its whole time (default: the run's own background saves')",
    )
    p.add_argument(
        "--warm-ratio",
        type=non_negative_float,
        help="a restart inside over a cold start-up (default: the run's own, measured from its restarts)",
    )
    p.add_argument("--days", type=positive_float, default=30.0, help="training time to simulate (days of work)")
    p.add_argument("--seeds", type=positive_int, default=5, help="simulations a scale and strategy (averaged)")
    p.add_argument("--figure", type=Path, help="write the figure here (PNG); default RUN_DIR/goodput.png")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("report", help="plot a run (loss, throughput, timeline with restarts) and summarise it")
    p.add_argument(
        "target", nargs="?", help="run directory, Slurm job id, job array id or sweep folder (default: the newest run)"
    )

    p = sub.add_parser(
        "tensorboard",
        help="start TensorBoard on runs' event folders (every start of a run is one run there)",
        description="Start TensorBoard on the TensorBoard folders of the given runs (each run directory's "
        "tensorboard/, or the folder its job named), one run each, named as the run. Needs the `report` "
        "extra (pip install 'hpc-mm[report]'). It listens on this machine only unless --host says otherwise: "
        "from your laptop, `ssh -L PORT:localhost:PORT LOGIN` and open http://localhost:PORT.",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="RUN",
        help="run directories, Slurm job ids or sweep folders (default: the newest run)",
    )
    p.add_argument("--port", type=positive_int, default=6006, help="the port to listen on (default 6006)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine)")
    return parser
