"""Jinja2 environment and the finished context for templates/.

Every decision (which #SBATCH options, how many tasks per node, what is quoted) is made
here in Python; templates only place the finished values. Values reach bash through
`shlex.quote` or as #SBATCH option values (which sbatch parses, bash never runs), and
anything that could end a #SBATCH line early (a newline) is refused.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpc_mm import __version__
from hpc_mm.errors import UserError
from hpc_mm.job.rules.slurm import sbatch_value_problem
from hpc_mm.job.spec import JobSpec, devices_requested, keeps_standbys
from hpc_mm.names import AGAIN_EXIT, STOP_SIGNALS
from hpc_mm.run.layout import BATCH_LOG, EXCLUDE_FILE, LOGS, TASK, task_log_parts
from hpc_mm.run.rundir import RunDir
from hpc_mm.run.sweepdir import SweepDir

if TYPE_CHECKING:
    import jinja2

TEMPLATE = "sbatch.sh.j2"


# `finish` exits with this (EX_TEMPFAIL) when the step is to start again inside the allocation, and
# leaves the nodes it must avoid in RUN_DIR/<EXCLUDE_FILE>-<job id> (a Slurm hostlist).


@dataclass(frozen=True)
class ScriptContext:
    name: str
    version: str
    sbatch: list[str]  # finished "--key=value" options, one #SBATCH line each
    run_dir: str  # shell-quoted (a job array's: its sweep folder and the task's run directory in it)
    setup: list[str]  # the job's own shell lines, verbatim (they are shell by intent)
    env: list[tuple[str, str | None]]  # (name, shell-quoted value; None: unset)
    hpc_mm: str  # shell-quoted command that runs hpc-mm on the nodes
    srun: str  # shell-quoted srun options
    log_pattern: str  # shell-quoted srun --output, with "$RESTART" expanded by bash
    traps: tuple[str, ...]  # the stop signals the batch shell forwards to the step
    preflight: str  # shell-quoted srun options of the preflight step ("" when it is off)
    standby: str  # shell-quoted srun options of the standby pools' step ("" without standbys)
    step_nodes: int = 1  # the nodes the training step runs on (the job may hold spares beyond them)
    again: int = AGAIN_EXIT  # `finish`'s exit code for "start again inside the allocation"
    exclude_file: str = EXCLUDE_FILE  # where `finish` leaves the nodes the next step must avoid (+ -<job id>)
    post: bool = False  # the job has post lines (`hpc-mm post` runs them after the step)


def template_dirs(user_dir: Path | None) -> list[str]:
    """The user's folder first, then the checkout's templates/, then the installed copy."""
    package = Path(__file__).resolve().parent.parent
    candidates = [user_dir, package.parent / "templates", package / "templates"]
    return [str(d) for d in candidates if d is not None and Path(d).is_dir()]


def environment(user_dir: Path | None = None) -> jinja2.Environment:
    import jinja2  # here, not above: `validate` checks a script without rendering it

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dirs(user_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def tasks_per_node(spec: JobSpec) -> int:
    if spec.entry.agent:
        return 1  # one agent per node (torchrun, msrun) starts the ranks
    n = spec.distributed.nproc_per_node
    if n == "auto":
        n = devices_requested(spec)
        if n is None:
            raise UserError.one(
                "distributed.nproc_per_node",
                "auto needs slurm.gres (e.g. npu:8) with launcher srun",
                "set a number, or use launcher torchrun",
            )
    return n


def _option_value(field: str, value: str) -> str:
    """A value for an #SBATCH line (the job's values were checked by the rules; the run
    directory's path is checked here)."""
    problem = sbatch_value_problem(value)
    if problem:
        raise UserError.one(field, problem, "sbatch options take plain values; rename the path or value")
    return f'"{value}"' if " " in value else value  # sbatch splits #SBATCH lines on blanks, honours quotes


def sbatch_options(spec: JobSpec, run_dir: Path, array: int | None = None, throttle: int | None = None) -> list[str]:
    """The #SBATCH options; for a job array of `array` tasks, `run_dir` is the sweep's folder and
    each task's batch log goes into its own run directory (task-<index>)."""
    s = spec.slurm
    logs = _option_value("--run-dir", str(RunDir(SweepDir(run_dir).task_dir("%a") if array else run_dir).logs))
    nodes = spec.nnodes + s.spare_nodes  # the step runs on nnodes of them: the others replace a blamed node
    opts = [f"--job-name={spec.name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node(spec)}"]
    if s.cpus_per_task:
        opts.append(f"--cpus-per-task={s.cpus_per_task}")
    for key in ("gres", "gpus_per_node", "partition", "account", "qos", "mem", "constraint"):
        value = getattr(s, key)
        if value is not None:
            opts.append(f"--{key.replace('_', '-')}={_option_value(f'slurm.{key}', str(value))}")
    opts.append(f"--time={s.time}")
    if s.exclusive:
        opts.append("--exclusive")
    # Slurm sends the signal to the batch shell (B:) grace_seconds before the time limit,
    # and at preemption (preempt_send_user_signal); the script forwards it to every rank.
    opts += [
        f"--signal=B:{spec.requeue.signal}@{spec.requeue.grace_seconds}",
        "--requeue" if spec.requeue.enabled and spec.requeue.mode == "requeue" else "--no-requeue",
        "--open-mode=append",
        f"--output={logs}/{BATCH_LOG}",
    ]
    if spec.after:  # a pipeline's stage (slurm/pipeline.py resolved these to job ids)
        bad = [a for a in spec.after if not re.match(r"^\d+(_\d+)?$", a)]
        if bad:
            raise UserError.one("after", f"{bad[0]!r} is not a Slurm job id", "name the job, or its run directory")
        opts += [f"--dependency=afterok:{':'.join(spec.after)}", "--kill-on-invalid-dep=yes"]
    if spec.requeue.enabled and spec.requeue.inside:
        opts.append("--no-kill")  # a dead node ends the step, not the allocation: the step starts again without it
    for key, value in s.extra_sbatch.items():
        if value is True:
            opts.append(f"--{key}")
        elif value is not False:
            opts.append(f"--{key}={_option_value(f'slurm.extra_sbatch.{key}', str(value))}")
    if array:  # at most `throttle` tasks at a time (Slurm's %N)
        opts.append(f"--array=0-{array - 1}" + (f"%{throttle}" if throttle and throttle < array else ""))
    return opts


def _standby_options(spec: JobSpec) -> str:
    """The standby pools' step (launch/standby.py): one task on every node of the allocation, spares
    too, beside the training steps (--overlap); a node that dies takes only its own pool (--no-kill)."""
    options = ["--overlap", "--no-kill", "--kill-on-bad-exit=0", "--ntasks-per-node=1"]
    options += spec.slurm.srun_args
    log = '"$RUN_DIR"/' + shlex.quote(f"{LOGS}/{spec.name}-%j-standby-t%t.out")
    return " ".join(shlex.quote(a) for a in options) + f" --output={log}"


def context(
    spec: JobSpec, run_dir: Path, python: str | None = None, array: int | None = None, throttle: int | None = None
) -> ScriptContext:
    run_dir = Path(run_dir).resolve()
    # --ntasks too: a step on fewer nodes than the allocation (spare nodes) must not inherit its SLURM_NTASKS
    per_node = tasks_per_node(spec)
    srun = ["--kill-on-bad-exit=1", "--wait=60", "--unbuffered", f"--ntasks={spec.nnodes * per_node}"]
    srun.append(f"--ntasks-per-node={per_node}")
    if spec.slurm.cpus_per_task:
        srun.append(f"--cpus-per-task={spec.slurm.cpus_per_task}")  # 22.05+: srun no longer inherits it
    srun += spec.slurm.srun_args
    # The preflight: one task per node, each checks itself; a failure there is recorded, not killed.
    # srun line-buffers its output (no --unbuffered), so the nodes' lines never run together.
    check = [f"--ntasks={spec.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=0", "--wait=30"]
    if spec.slurm.cpus_per_task:
        check.append(f"--cpus-per-task={spec.slurm.cpus_per_task}")
    check += spec.slurm.srun_args
    env = [(k, None if v is None else shlex.quote(v)) for k, v in spec.env.items()]
    head, tail = task_log_parts(spec.name, array=bool(array))
    logs = '"$RUN_DIR"/' + shlex.quote(f"{LOGS}/{head}") + '"$RESTART"' + shlex.quote(tail)
    where = shlex.quote(str(run_dir)) + ("/" + TASK.format('"$SLURM_ARRAY_TASK_ID"') if array else "")
    return ScriptContext(
        post=bool(spec.post),
        name=spec.name,
        version=__version__,
        sbatch=sbatch_options(spec, run_dir, array, throttle),
        run_dir=where,
        setup=list(spec.setup),
        env=env,
        hpc_mm=" ".join(shlex.quote(a) for a in [python or spec.slurm.python or sys.executable, "-m", "hpc_mm"]),
        srun=" ".join(shlex.quote(a) for a in srun),
        log_pattern=logs,
        traps=STOP_SIGNALS,
        preflight=" ".join(shlex.quote(a) for a in check) if spec.fault.preflight else "",
        standby=_standby_options(spec) if keeps_standbys(spec) else "",
        step_nodes=spec.nnodes,
    )


def check_script(spec: JobSpec, run_dir: Path, template_dir: Path | None = None) -> None:
    """Refuse what `render_script` would refuse. Every check is in `context`; the shipped template
    renders any context (the golden tests hold it to that), so only a user's template is rendered."""
    if template_dir is not None:
        render_script(spec, run_dir, template_dir)
    else:
        context(spec, run_dir)


def render_script(
    spec: JobSpec,
    run_dir: Path,
    template_dir: Path | None = None,
    python: str | None = None,
    array: int | None = None,
    throttle: int | None = None,
) -> str:
    import jinja2

    if template_dir is not None and not (Path(template_dir) / TEMPLATE).is_file():
        raise UserError.one(
            "--template-dir", f"no {TEMPLATE} in {template_dir}", "copy templates/sbatch.sh.j2 there and edit it"
        )
    try:
        template = environment(template_dir).get_template(TEMPLATE)
    except jinja2.TemplateNotFound:  # an installation without its templates: a packaging bug
        raise RuntimeError(f"{TEMPLATE} not found in {template_dirs(None)}") from None
    try:
        return template.render(ctx=context(spec, run_dir, python, array, throttle))
    except jinja2.UndefinedError as exc:
        raise UserError.one(
            "--template-dir",
            f"the template uses an unknown value: {exc.message}",
            "templates get `ctx` with: " + ", ".join(ScriptContext.__dataclass_fields__),
        ) from None
