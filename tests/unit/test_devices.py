"""Which device a node has, by the table in environments/devices.py, on fake device roots."""

import pytest

from hpc_mm.environments.devices import check_device
from hpc_mm.errors import UserError
from hpc_mm.launch.plan import resolve_plan

from conftest import JOBS


def node(tmp_path, *devices, **env):
    """A fake node: files under <root>/dev, and the variables its job sees."""
    dev = tmp_path / "root" / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    for name in devices:
        (dev / name).touch()
    return {"HPC_MM_DEVICE_ROOT": str(tmp_path / "root"), "SLURMD_NODENAME": "n7", **env}


DAVINCI = [f"davinci{i}" for i in range(8)] + ["davinci_manager"]
NVIDIA = ["nvidia0", "nvidia1", "nvidiactl"]

# (id, declared device, device files, variables, expected (kind, count) or the error's words)
TABLE = [
    ("npu-8", "npu", DAVINCI, {}, ("npu", 8)),
    ("npu-visible-2", "npu", DAVINCI, {"ASCEND_RT_VISIBLE_DEVICES": "0,1"}, ("npu", 2)),
    ("npu-missing", "npu", [], {}, "node n7 has no /dev/davinci*"),
    ("npu-no-manager", "npu", DAVINCI[:-1], {}, "node n7 has no /dev/davinci*"),
    ("npu-visible-not-here", "npu", DAVINCI, {"ASCEND_RT_VISIBLE_DEVICES": "0,9"}, "lists 9, which n7 does not have"),
    ("npu-on-a-gpu-node", "npu", NVIDIA, {"SLURM_GPUS_ON_NODE": "2"}, "the job runs on npu but node n7"),
    ("gpu-from-slurm", "cuda", [], {"SLURM_GPUS_ON_NODE": "4"}, ("cuda", 4)),
    ("gpu-from-devices", "cuda", NVIDIA, {}, ("cuda", 2)),
    ("gpu-visible", "cuda", NVIDIA, {"CUDA_VISIBLE_DEVICES": "0,1,2", "SLURM_GPUS_ON_NODE": "3"}, ("cuda", 3)),
    ("gpu-from-job-gres", "cuda", [], {"SLURM_JOB_GRES": "gpu:a100:2"}, ("cuda", 2)),
    ("gpu-missing", "cuda", [], {"CUDA_VISIBLE_DEVICES": "0"}, "node n7 has no /dev/nvidia* devices"),
    ("cpu-declared-on-npu-node", "cpu", DAVINCI, {}, ("cpu", 1)),
    ("auto-finds-npus", None, DAVINCI, {}, ("npu", 8)),
    ("auto-finds-gpus", None, NVIDIA, {}, ("cuda", 2)),
    ("auto-on-cpu", None, [], {"ASCEND_RT_VISIBLE_DEVICES": "0,1"}, ("cpu", 1)),
]


@pytest.mark.parametrize("declared,files,env,expected", [c[1:] for c in TABLE], ids=[c[0] for c in TABLE])
def test_device_table(tmp_path, declared, files, env, expected):
    variables = node(tmp_path, *files, **env)
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected.replace("*", r"\*")):
            check_device(declared, variables)
    else:
        device = check_device(declared, variables)
        assert (device.kind, device.count) == expected


def slurm(**extra):
    return {
        "SLURM_JOB_ID": "77",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "n[7-8]",
        "SLURM_TASKS_PER_NODE": "1(x2)",
        **extra,
    }


@pytest.mark.parametrize(
    "gres,files,env,expected",
    [
        ("npu:8", DAVINCI, {}, (8, "npu", "hccl")),  # gres npu does not set ASCEND_RT_VISIBLE_DEVICES: the node counts
        ("npu:8", DAVINCI, {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3"}, (4, "npu", "hccl")),
        ("gpu:4", [], {"SLURM_GPUS_ON_NODE": "4"}, (4, "cuda", "nccl")),
    ],
)
def test_nproc_auto_counts_the_nodes_devices(tmp_path, gres, files, env, expected):
    variables = node(tmp_path, *files, **slurm(**env))
    plan = resolve_plan(
        str(JOBS / "tiny-vlm.yaml"),
        [f"slurm.gres={gres}", "distributed.nproc_per_node=auto", "gpt.global_batch_size=null"],
        tmp_path / "run",
        env=variables,
    )
    assert (plan.nproc_per_node, plan.device, plan.backend) == expected
    assert plan.world_size == 2 * expected[0]


def test_a_job_for_npus_on_a_cpu_node_is_one_error_naming_the_node(tmp_path):
    with pytest.raises(UserError) as err:
        resolve_plan(
            str(JOBS / "tiny-vlm.yaml"),
            ["slurm.gres=npu:8", "distributed.nproc_per_node=auto", "gpt.global_batch_size=null"],
            tmp_path / "run",
            env=node(tmp_path, **slurm()),
        )
    assert str(err.value).startswith("distributed.device: the job runs on npu but node n7 has no /dev/davinci*")
