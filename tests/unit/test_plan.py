"""resolve_plan: a table of environments and job settings -> this process's part in the job."""

import pytest

from hpc_mm.errors import UserError
from hpc_mm.launch.command import TORCHRUN, child_env, command
from hpc_mm.launch.plan import resolve_plan

from conftest import JOBS

TINY = str(JOBS / "tiny-vlm.yaml")


def slurm(procid=0, nodes=2, tasks_per_node=1, **extra):
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % tasks_per_node),
        "SLURM_NODEID": str(procid // tasks_per_node),
        "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": f"n[1-{nodes}]",
        "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
    }
    return {**env, **{k: str(v) for k, v in extra.items()}}


TORCHRUN_IN_SLURM = {
    **slurm(procid=1),
    "RANK": "3",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "n1",
    "MASTER_PORT": "29500",
}

# (id, env, --set overrides, expected (mode, environment, nnodes, node_rank, nproc, world, rank, master))
CASES = [
    ("torchrun-agent-node0", slurm(0), [], ("agent", "slurm", 2, 0, 2, 4, None, "n1")),
    ("torchrun-agent-node1", slurm(1), [], ("agent", "slurm", 2, 1, 2, 4, None, "n1")),
    (
        "srun-worker-rank3",
        slurm(3, tasks_per_node=2),
        ["entry.launcher=srun"],
        ("worker", "slurm", 2, 1, 2, 4, 3, "n1"),
    ),
    (
        "auto-from-slurm-gpus",
        slurm(0, SLURM_GPUS_ON_NODE=4),
        ["distributed.nproc_per_node=auto", "gpt.global_batch_size=null"],
        ("agent", "slurm", 2, 0, 4, 8, None, "n1"),
    ),
    (
        "auto-without-slurm-devices",
        slurm(0),
        ["distributed.nproc_per_node=auto", "gpt.global_batch_size=null"],
        ("agent", "slurm", 2, 0, 1, 2, None, "n1"),
    ),
    ("torchrun-inside-slurm", TORCHRUN_IN_SLURM, [], ("worker", "torchrun", 2, 1, 2, 4, 3, "n1")),
    ("hand-started-one-node", {}, ["slurm.nodes=1"], ("agent", "local", 1, 0, 2, 2, None, "localhost")),
]


@pytest.mark.parametrize("env,overrides,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resolve_plan(tmp_path, env, overrides, expected):
    plan = resolve_plan(TINY, overrides, tmp_path / "run", env=env)
    assert (
        plan.mode,
        plan.environment.name,
        plan.nnodes,
        plan.node_rank,
        plan.nproc_per_node,
        plan.world_size,
        plan.rank,
        plan.master_addr,
    ) == expected
    gpus = "SLURM_GPUS_ON_NODE" in env  # Slurm gave GPUs: the node has CUDA devices
    assert (plan.backend, plan.device) == (("nccl", "cuda") if gpus else ("gloo", "cpu"))
    assert plan.spec.nnodes == plan.nnodes  # the plan's copy of the job has the real topology


def test_plan_copies_the_job_and_command_carries_the_world(tmp_path):
    plan = resolve_plan(
        TINY,
        ["distributed.nproc_per_node=auto", "gpt.global_batch_size=null"],
        tmp_path / "run",
        env=slurm(0, SLURM_GPUS_ON_NODE=4),
    )
    cmd = command(plan)
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4" and cmd[cmd.index("--nnodes") + 1] == "2"
    assert cmd[cmd.index("--global-batch-size") + 1] == "32"  # MBS 4 x DP 8, derived from the real world
    assert cmd[cmd.index("--save") + 1] == str(tmp_path / "run" / "checkpoints")


def test_plan_rechecks_the_arithmetic_with_the_real_world(tmp_path):
    # GBS 32 is a multiple of MBS 4 x DP 4 (the job's 2 x 2), not of MBS 4 x DP 6 (3 nodes x 2).
    with pytest.raises(UserError, match="global_batch_size"):
        resolve_plan(TINY, [], tmp_path / "run", env=slurm(0, nodes=3))


@pytest.mark.parametrize(
    "extra,expected", [({}, "1"), ({"SLURM_CPUS_PER_TASK": "6"}, "6"), ({"OMP_NUM_THREADS": "3"}, "3")]
)
def test_ranks_started_by_srun_get_a_thread_budget_as_torchrun_gives(tmp_path, extra, expected):
    plan = resolve_plan(
        TINY, ["entry.launcher=srun", "env={}"], tmp_path / "run", env=slurm(3, tasks_per_node=2, **extra)
    )
    assert child_env(plan)["OMP_NUM_THREADS"] == expected


def test_torchrun_runs_as_itself_and_ends_without_teardown(tmp_path):
    import subprocess
    import sys

    plan = resolve_plan(TINY, ["requeue.warm_standby=false"], tmp_path / "run", env=slurm(0))
    cmd = command(plan)
    assert cmd[1:3] == ["-c", TORCHRUN] and "--nproc_per_node" in cmd
    # torchrun's own exit status and help come through the wrapper
    out = subprocess.run([sys.executable, "-c", TORCHRUN, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--nproc-per-node" in out.stdout.replace("_", "-")
    bad = subprocess.run(
        [sys.executable, "-c", TORCHRUN, "--no-such-flag"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and bad.stderr.startswith("usage: torchrun")
