"""Reading a launch command line: which launcher a recorded command is, the launcher's own options up
to its entry, and Megatron-style arguments as (flag, values). Shared by the import and the comparison
of a node's command with a script's."""

from __future__ import annotations

from hpc_mm.importer.trace import Command

# What each launcher takes that hpc-mm gives from the allocation, and what it says about it.
TOPOLOGY = {
    "torchrun": {"--nproc_per_node": "nproc", "--nproc-per-node": "nproc", "--nnodes": "nnodes",
                 "--node_rank": "from Slurm", "--node-rank": "from Slurm", "--master_addr": "from Slurm",
                 "--master-addr": "from Slurm", "--master_port": "from Slurm", "--master-port": "from Slurm",
                 "--rdzv_endpoint": "from Slurm", "--rdzv-endpoint": "from Slurm", "--rdzv_backend": "from Slurm",
                 "--rdzv-backend": "from Slurm", "--rdzv_id": "from Slurm", "--rdzv-id": "from Slurm",
                 "--standalone": "from Slurm", "--max_restarts": "hpc-mm", "--max-restarts": "hpc-mm",
                 "--log_dir": "logs", "--log-dir": "logs", "--redirects": "logs", "-r": "logs", "--tee": "logs",
                 "-t": "logs"},
    "msrun": {"--worker_num": "world", "--local_worker_num": "nproc", "--master_addr": "from Slurm",
              "--master_port": "from Slurm", "--node_rank": "from Slurm", "--log_dir": "logs", "--join": "hpc-mm"},
    "accelerate": {"--num_machines": "nnodes", "--machine_rank": "from Slurm", "--main_process_ip": "from Slurm",
                   "--main_process_port": "from Slurm", "--num_processes": "world"},
}  # fmt: skip
TORCHRUN_FLAGS = ("--standalone", "--no_python", "--no-python", "-m", "--module", "--run_path", "--run-path")
ACCELERATE_FLAGS = ("--cpu", "--multi_gpu", "--tpu", "--use_deepspeed", "--use_fsdp", "--use_megatron_lm", "--use_xpu",
                    "-m", "--module", "--no_python", "--debug", "-q", "--quiet", "--same_network",
                    "--dynamo_use_fullgraph", "--dynamo_use_dynamic", "--enable_cpu_affinity")  # fmt: skip


def launcher_of(cmd: Command) -> str | None:
    """The launcher a recorded command is, or None for a command that launches nothing."""
    name = cmd.name
    if name in ("torchrun", "msrun"):
        return name
    if name == "accelerate":
        return "accelerate" if len(cmd.argv) > 1 and cmd.argv[1] == "launch" else None
    if name in ("python", "python3"):
        rest = [a for a in cmd.argv[1:] if not a.startswith("-") or a == "-m"]
        if "-c" in cmd.argv[1:2] or not rest:
            return None  # python -c: computes a value for the script
        return "python"
    if name in ("deepspeed", "ray", "mpirun", "srun", "sbatch"):
        return name
    return None


def options(argv: list[str], flags_only: tuple[str, ...]) -> tuple[list[tuple[str, str | None, list[str]]], list[str]]:
    """A launcher's own options up to its script: (name, value, the words as written), and the rest."""
    out, i = [], 0
    while i < len(argv) and argv[i].startswith("-"):
        word = argv[i]
        name, eq, value = word.partition("=")
        if eq:
            out.append((name, value, [word]))
            i += 1
        elif word in flags_only or i + 1 >= len(argv):
            out.append((word, None, [word]))
            i += 1
        else:
            out.append((word, argv[i + 1], [word, argv[i + 1]]))
            i += 2
    return out, argv[i:]


def flag_pairs(args: list[str]) -> list[tuple[str, list[str]]]:
    """Megatron-style arguments as (flag, its values): a word after a flag that is not itself a flag is
    one of its values."""
    out: list[tuple[str, list[str]]] = []
    for word in args:
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            out.append((name, [value] if eq else []))
        elif out:
            out[-1][1].append(word)
        else:
            out.append(("", [word]))  # a positional argument before any flag
    return out
