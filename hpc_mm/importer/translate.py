"""What a traced launch script runs, as job files: one per launch (a pipeline when there are
several), every value taken from the script and commented with the line it came from, and a list of
what could not be carried, one line each."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.importer.launches import (
    ACCELERATE_FLAGS,
    TOPOLOGY,
    TORCHRUN_FLAGS,
    flag_pairs,
    launcher_of,
    options,
)
from hpc_mm.importer.trace import Command, Trace
from hpc_mm.job.entries import recognise

# Variables a launch script sets for its own launcher line: hpc-mm gives each node its own.
TOPOLOGY_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "NNODES", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                 "LOCAL_WORLD_SIZE", "GROUP_RANK", "NPUS_PER_NODE", "GPUS_PER_NODE", "NPROC_PER_NODE")  # fmt: skip
# Megatron flags that make a resumed run differ from an unbroken one (job/megatron.py refuses them
# while requeue is on): a fine-tuning script's --load of weights is checkpoint.pretrained instead.
BREAKS_RESUME = ("--no-save-optim", "--no-save-rng", "--no-load-optim", "--no-load-rng", "--finetune")
# Entries that train and how they keep their own checkpoints (for resume:), by their arguments.
OWN_CHECKPOINTS = (
    # diffusers / DiffSynth: --output_dir D --checkpointing_steps N; resumes with --resume_from_checkpoint latest
    ("--output_dir", "--checkpointing_steps", "--max_train_steps", r"checkpoint-(\d+)",
     ["--resume_from_checkpoint", "latest"]),
    # verl (Hydra overrides): trainer.default_local_dir=D trainer.save_freq=N; resumes with resume_mode=auto
    ("trainer.default_local_dir", "trainer.save_freq", "trainer.total_training_steps", r"global_step_(\d+)",
     ["trainer.resume_mode=auto"]),
)  # fmt: skip


@dataclass
class Stage:
    """One launch of the script, as a job file (a dict in the job file's order) with its comments."""

    job: dict
    comments: dict[str, str] = field(default_factory=dict)  # dotted key -> the script line it came from
    launch: Command | None = None
    args: list[str] = field(default_factory=list)  # the entry's arguments as the script passed them

    def as_command(self, why: str) -> Stage:
        """The same launch as a `command`: its arguments verbatim (a Megatron-style entry whose options
        hpc-mm's tables do not know, or whose files it cannot check)."""
        job = {k: v for k, v in self.job.items() if k not in ("mm", "gpt", "checkpoint", "fault")}
        job["entry"] = {k: v for k, v in self.job["entry"].items() if k != "config"}
        job["entry"]["kind"] = "command"
        if self.args:
            job["entry"]["extra_args"] = list(self.args)
        comments = {**self.comments, "entry": f"{self.comments.get('entry', '')} (as a command: {why})"}
        pairs = {f: v for f, v in flag_pairs(self.args) if f}
        save = (pairs.get("--save") or [None])[0]
        if save and self.launch is not None:  # it keeps Megatron's checkpoints: it resumes from them with --load
            every, steps = (pairs.get("--save-interval") or [""])[0], (pairs.get("--train-iters") or [""])[0]
            job["resume"] = {"dir": str(self.launch.cwd / save), "pattern": r"iter_(\d+)", "args": ["--load", save],
                             **({"every": int(every)} if every.isdigit() and int(every) > 0 else {}),
                             **({"steps": int(steps)} if steps.isdigit() and int(steps) > 0 else {})}  # fmt: skip
            comments["resume"] = f"{self.launch.at}: --save {save}"
        return Stage(job, comments, self.launch, self.args)


@dataclass
class Imported:
    stages: list[Stage]
    not_carried: list[str]  # one line each: what the job file cannot say, and why
    changed: list[str]  # what hpc-mm runs differently from the script, and why (the documented table)


def translate(found: Trace, name: str) -> Imported:
    launches = [c for c in found.commands if launcher_of(c)]
    not_carried: list[str] = []
    changed: list[str] = []
    stages = []
    for i, cmd in enumerate(launches):
        kind = launcher_of(cmd)
        if kind == "ray":
            not_carried.append(
                f"{cmd.at}: `{_short(cmd)}` starts or stops a Ray cluster by hand; hpc-mm forms it inside the "
                "allocation itself: import the script that runs the driver (it runs with entry.launcher: ray)"
            )
            continue
        if kind in ("deepspeed", "mpirun", "srun", "sbatch"):
            not_carried.append(f"{cmd.at}: `{kind}` is not a launcher hpc-mm runs ({_short(cmd)})")
            continue
        stage_name = name if len(launches) == 1 else f"{name}-{i + 1}"
        stages.append(_stage(found, cmd, kind, stage_name, not_carried, changed))
    if not launches:
        said = next((line for line in reversed(found.output.splitlines()) if line.strip()), "")
        ended = (
            f"ended with exit code {found.returncode} before launching anything"
            if found.returncode
            else ("launches nothing hpc-mm can run (no torchrun, msrun, accelerate or python)")
        )
        not_carried.append(f"{found.script.name} {ended}" + (f"; its last line: {said.strip()[:200]}" if said else ""))
    tees = [c for c in found.commands if c.name == "tee"]
    teed = {a for c in tees for a in c.argv[1:] if not a.startswith("-")}
    last = max((found.commands.index(s.launch) for s in stages if s.launch), default=None)
    if stages and last is not None:
        post = []
        for c in found.commands[last + 1 :]:
            if c.name == "tee" or launcher_of(c):
                continue
            if teed & set(c.argv[1:]):  # hpc-mm keeps the launch's output in the run's logs, not there
                not_carried.append(f"{c.at}: `{_short(c)}`: acts on the launch's log, which hpc-mm keeps elsewhere")
            else:
                post.append(c)
        if post:
            stages[-1].job["post"] = [shlex.join(c.argv) for c in post]
            stages[-1].comments["post"] = ", ".join(c.at for c in post)
    if tees:
        changed.append(
            f"{tees[0].at}: the launch's output goes to the run's logs (hpc-mm logs RUN), not to "
            f"{' '.join(tees[0].argv[1:])}; lines that read that log afterwards (a speed summary) find nothing: "
            "`hpc-mm report RUN` summarises the run"
        )
    for i, stage in enumerate(stages[1:], 1):
        stage.job["after"] = [stages[i - 1].job["name"]]
    return Imported(stages, not_carried, changed)


def _short(cmd: Command, n: int = 6) -> str:
    return shlex.join(cmd.argv[:n]) + (" ..." if len(cmd.argv) > n else "")


def _stage(found: Trace, cmd: Command, kind: str, name: str, not_carried: list[str], changed: list[str]) -> Stage:
    job: dict = {"name": name, "entry": {}, "distributed": {}}
    comments = {"entry": cmd.at}
    argv = list(cmd.argv[1:])
    if kind == "accelerate":
        argv = argv[1:]  # `launch`
    launcher_args: list[str] = []
    nproc = nnodes = world = None
    program = False
    if kind == "python":
        opts, rest = options(argv, ("-u", "-B", "-O", "-m"))
        # python -m MODULE ARGS: rest starts with the module
        script, args = (rest[0], rest[1:]) if rest else ("", [])
        # one process; verl's driver on a Ray cluster hpc-mm forms (one node as shipped: its head alone)
        job["entry"]["launcher"] = "ray" if script.startswith("verl.") else "srun"
        nproc, nnodes = 1, 1
    else:
        opts, rest = options(
            argv, TORCHRUN_FLAGS if kind == "torchrun" else ACCELERATE_FLAGS if kind == "accelerate" else ()
        )
        owned = TOPOLOGY[kind]
        for opt, value, written in opts:
            role = owned.get(opt)
            if role == "nproc":
                nproc = _int(value)
            elif role == "nnodes":
                nnodes = _int(value)
            elif role == "world":
                world = _int(value)
            elif role == "logs":
                changed.append(
                    f"{cmd.at}: {' '.join(written)}: hpc-mm keeps every rank's log under the run directory (logs/)"
                )
            elif role in ("from Slurm", "hpc-mm"):
                if (
                    value is not None
                    and opt in ("--node_rank", "--node-rank", "--machine_rank")
                    and value not in ("0",)
                ):
                    changed.append(f"{cmd.at}: {' '.join(written)}: each node's rank comes from Slurm")
            elif opt in ("--no_python", "--no-python"):
                program = True
            elif opt in ("-m", "--module"):
                pass  # a module, not a file: the entry's script has no .py, and hpc-mm runs it with -m
            else:
                launcher_args += written  # the launcher's own option, as the script wrote it
        script, args = (rest[0], rest[1:]) if rest else ("", [])
        job["entry"]["launcher"] = kind
    if kind == "accelerate" and (world is None or nnodes is None):  # its config file may say them
        config = next((v for o, v, _ in opts if o == "--config_file" and v), None)
        found_config = _small_yaml(cmd.cwd / config) if config else {}
        world = world or _int(str(found_config.get("num_processes", "")))
        nnodes = nnodes or _int(str(found_config.get("num_machines", "")))
    if world and nproc is None:
        nproc = world // (nnodes or 1) if world % (nnodes or 1) == 0 else world
    if world and nnodes is None and nproc:
        nnodes = max(1, world // nproc)
    job["entry"]["script"] = script
    job["entry"]["workdir"] = str(cmd.cwd)
    if program:
        job["entry"]["program"] = True
    if launcher_args:
        job["entry"]["launcher_args"] = launcher_args
    job["distributed"]["nnodes"] = nnodes or 1
    job["distributed"]["nproc_per_node"] = nproc or 1
    comments["distributed"] = cmd.at
    if (nnodes or 1) == 1:
        changed.append(
            f"{cmd.at}: the script runs on one node (NNODES=1, NODE_RANK=0, MASTER_ADDR=localhost); under hpc-mm "
            "each node gets its rank and the master's address and port from Slurm: "
            "`hpc-mm submit --nodes N` runs it on N"
        )
    kind_of = "command" if (program or kind in ("accelerate", "python")) else recognise(script)
    if kind_of == "megatron" and args and re.search(r"\.ya?ml$", args[0]):
        kind_of = "command"  # a YAML-first entry (pretrain_transformers.py CONFIG.yaml, mcore's qwen3_5)
    job["entry"]["kind"] = kind_of
    if kind_of == "megatron":
        _megatron(job, comments, args, cmd, not_carried, changed)
    elif kind_of == "fsdp2":
        config, extra = (args[0], args[1:]) if args and not args[0].startswith("-") else (None, args)
        if config:
            job["entry"]["config"] = str(cmd.cwd / config)
            training = _small_yaml(cmd.cwd / config).get("training")
            interval = training.get("save_interval") if isinstance(training, dict) else None
            if isinstance(interval, int) and not isinstance(interval, bool) and interval > 0:
                job["checkpoint"] = {"save_interval": interval}  # the YAML's, kept: hpc-mm writes it back
                comments["checkpoint"] = f"{config}: training.save_interval"
        if extra:
            job["entry"]["extra_args"] = extra
    else:
        if args:
            job["entry"]["extra_args"] = args
        _own_checkpoints(job, comments, args, cmd)
    _environment(job, comments, found, cmd, not_carried, changed)
    return Stage(job, comments, cmd, list(args))


def _small_yaml(path: Path) -> dict:
    """A launcher's config file, if it is a small YAML mapping; {} otherwise."""
    from hpc_mm.job.yamlfile import read_small_yaml

    try:
        value = read_small_yaml(path, "--config_file")
    except UserError:  # unreadable, not YAML: accelerate says so on the nodes
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _typed(value: str):
    """A flag's value as YAML should hold it: an integer, a number, else the text."""
    if re.fullmatch(r"[-+]?\d+", value):
        return int(value)
    try:
        number = float(value)
    except ValueError:
        return value
    return number if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", value) else value


def _megatron(job: dict, comments: dict, args: list[str], cmd: Command, not_carried: list[str], changed: list[str]):
    from hpc_mm.job.megatron import owner
    from hpc_mm.job.options import normal

    gpt: dict = {}
    extra: dict = {}
    save = load = None
    for flag, values in flag_pairs(args):
        where = f"{cmd.at}: {flag}"
        if not flag:
            not_carried.append(f"{where} {' '.join(values)}: a positional argument to a Megatron entry")
            continue
        norm = normal(flag)
        value = values[0] if len(values) == 1 else values if values else None
        if norm in BREAKS_RESUME:
            changed.append(
                f"{where}: dropped; it makes a resumed run differ from an unbroken one (requeue resumes exactly)"
            )
            continue
        if norm == "--save":
            save = str(cmd.cwd / value) if isinstance(value, str) else None
            continue
        if norm == "--fsdp2-config-path" and isinstance(value, str):  # the FSDP2 settings file: copied into the run
            job["entry"]["config"] = str(cmd.cwd / value)
            continue
        if norm == "--load":
            load = str(cmd.cwd / value) if isinstance(value, str) else None
            continue
        key = owner(flag)
        if key is None:
            extra[flag.lstrip("-").replace("-", "_")] = (
                True if value is None else _typed(value) if isinstance(value, str) else [_typed(v) for v in value]
            )
            continue
        section, _, leaf = key.partition(".")
        if key == "distributed.backend":
            changed.append(
                f"{where} {value}: distributed.backend auto (hccl on NPUs, nccl on GPUs, gloo on CPUs; "
                "MindSpeed maps nccl to hccl)"
            )
            continue
        if key == "requeue.signal":
            continue  # hpc-mm passes --exit-signal-handler itself
        if key.startswith("mm."):
            job.setdefault("mm", {})[leaf] = str(cmd.cwd / value) if isinstance(value, str) else value
            comments["mm"] = cmd.at
            continue
        typed = True if value is None else _typed(value) if isinstance(value, str) else [_typed(v) for v in value]
        target = gpt if section == "gpt" else job.setdefault(section, {})
        target[leaf] = typed
        if section not in ("gpt", "mm"):
            comments[section] = cmd.at
    if save:
        job.setdefault("checkpoint", {})["dir"] = save
        comments["checkpoint"] = cmd.at
    if load and load != save:
        job.setdefault("checkpoint", {})["pretrained"] = load
        comments["checkpoint"] = cmd.at
        changed.append(
            f"{cmd.at}: --load {load}: checkpoint.pretrained, loaded only while the run has no checkpoint of its "
            "own; every later start resumes from checkpoint.dir"
        )
    if extra:
        gpt["extra"] = extra
    if gpt.get("global_batch_size") == 0:  # the script's arithmetic for one node: DP = 0 there
        del gpt["global_batch_size"]
        changed.append(
            f"{cmd.at}: --global-batch-size 0 (the script computes it from its one-node layout): hpc-mm derives "
            "it as micro batch x gradient accumulation x DP of the allocation (set gpt.gradient_accumulation_steps)"
        )
    _enough_nodes(job, gpt, cmd, changed)
    if gpt:
        job["gpt"] = gpt
        comments["gpt"] = cmd.at


def _enough_nodes(job: dict, gpt: dict, cmd: Command, changed: list[str]) -> None:
    """A script written for several nodes but shipped with NNODES=1: its model parallelism (TP x PP x CP)
    needs more devices than one node has. The job asks for the fewest nodes that hold it."""
    d = job["distributed"]
    parallel = 1
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
        parallel *= gpt.get(key, 1) if isinstance(gpt.get(key, 1), int) and gpt.get(key, 1) > 0 else 1
    world = d["nnodes"] * d["nproc_per_node"]
    if world % parallel == 0:
        return
    nnodes = d["nnodes"]
    while (nnodes * d["nproc_per_node"]) % parallel:
        nnodes += 1
    changed.append(
        f"{cmd.at}: NNODES={d['nnodes']} gives {world} devices, fewer than (or not a multiple of) the model's "
        f"TP x PP x CP = {parallel}: the job asks for {nnodes} nodes of {d['nproc_per_node']}"
    )
    d["nnodes"] = nnodes


def _own_checkpoints(job: dict, comments: dict, args: list[str], cmd: Command) -> None:
    """resume: for an entry whose arguments say where it keeps its own checkpoints (diffusers'
    --output_dir with --checkpointing_steps)."""
    pairs = dict((f, v) for f, v in flag_pairs(args) if f)
    pairs.update((w.split("=", 1)[0], [w.split("=", 1)[1]]) for w in args if "=" in w and not w.startswith("-"))
    project, experiment = pairs.get("trainer.project_name"), pairs.get("trainer.experiment_name")
    if "trainer.default_local_dir" not in pairs and project and experiment:  # verl's own default folder
        pairs["trainer.default_local_dir"] = [f"checkpoints/{project[0]}/{experiment[0]}"]
    for folder_flag, every_flag, steps_flag, pattern, resume_args in OWN_CHECKPOINTS:
        folder, every = pairs.get(folder_flag), pairs.get(every_flag)
        if folder and every and folder[0]:
            job["resume"] = {"dir": str(cmd.cwd / folder[0]), "pattern": pattern, "args": resume_args}
            if every[0].isdigit() and int(every[0]) > 0:
                job["resume"]["every"] = int(every[0])
            steps = pairs.get(steps_flag)
            if steps and steps[0].isdigit() and int(steps[0]) > 0:
                job["resume"]["steps"] = int(steps[0])
            comments["resume"] = f"{cmd.at}: {folder_flag} {folder[0]} {every_flag} {every[0]}"
            return


def _environment(job: dict, comments: dict, found: Trace, cmd: Command, not_carried: list[str], changed: list[str]):
    from hpc_mm.job.secrets import is_secret_name, looks_secret

    env = {}
    for name, value in cmd.env.items():
        if name in TOPOLOGY_VARS:
            changed.append(f"{cmd.at}: {name}={value}: each node's value comes from Slurm")
        elif is_secret_name(name) or looks_secret(value):
            not_carried.append(f"{cmd.at}: {name}: looks like a secret; export it in your shell before submitting")
        elif re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
            not_carried.append(f"{cmd.at}: {name}: its value spans lines; set it in a setup line")
        else:
            env[name] = value
    for _at, line in found.unsets:
        for name in line.split()[1:]:
            if not name.startswith("-") and name not in cmd.env:
                env[name] = None
    if env:
        job["env"] = env
        comments["env"] = "exported by the script when it launched"
    setup = [line for _, line in found.sourced] + [line for _, line in found.ulimits]
    if setup:
        job["setup"] = setup
        comments["setup"] = ", ".join(at for at, _ in found.sourced + found.ulimits)
