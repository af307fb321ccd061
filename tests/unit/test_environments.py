"""Where SLURM / Open MPI / torchrun variables become ranks: tables of environments."""

import pytest

from hpc_mm.environments import (
    LocalEnvironment,
    MPIEnvironment,
    SlurmEnvironment,
    TorchrunEnvironment,
    port_for_job,
    select_environment,
)
from hpc_mm.environments.base import PORT_BASE, PORT_SPAN
from hpc_mm.environments.slurm import expand_tasks_per_node
from hpc_mm.errors import UserError


def slurm_env(**over):
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_TASKS_PER_NODE": "1(x2)",
    }
    env.update(over)
    return env


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("node[001-003,010]", ["node001", "node002", "node003", "node010"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("a,b-c", ["a", "b-c"]),
        ("gpu-[1-2]", ["gpu-1", "gpu-2"]),
        ("linux[1,2]", ["linux1", "linux2"]),
        ("alpha,beta", ["alpha", "beta"]),
        ("n1", ["n1"]),
    ],
)
def test_slurm_nodelists_and_master(nodelist, hosts):
    n = len(hosts)
    env = slurm_env(
        SLURM_JOB_NODELIST=nodelist,
        SLURM_NNODES=str(n),
        SLURM_NTASKS=str(n),
        SLURM_TASKS_PER_NODE=f"1(x{n})" if n > 1 else "1",
    )
    e = SlurmEnvironment(env)
    e.check()
    assert e.hosts() == hosts and e.main_address() == hosts[0]


@pytest.mark.parametrize(
    "text,counts",
    [
        ("2(x3),1", [2, 2, 2, 1]),
        ("8", [8]),
        ("4(x2)", [4, 4]),
        ("1,2,3", [1, 2, 3]),
        ("2(x2),1(x2)", [2, 2, 1, 1]),
    ],
)
def test_compressed_task_counts(text, counts):
    assert expand_tasks_per_node(text) == counts


# Heterogeneous 2(x3),1 layout: 7 tasks on 4 nodes; (procid, localid, nodeid) -> local world size
@pytest.mark.parametrize("procid,localid,nodeid,local_size", [(0, 0, 0, 2), (1, 1, 0, 2), (4, 0, 2, 2), (6, 0, 3, 1)])
def test_heterogeneous_layout(procid, localid, nodeid, local_size):
    env = slurm_env(
        SLURM_PROCID=str(procid),
        SLURM_LOCALID=str(localid),
        SLURM_NODEID=str(nodeid),
        SLURM_NTASKS="7",
        SLURM_NNODES="4",
        SLURM_JOB_NODELIST="c[1-4]",
        SLURM_TASKS_PER_NODE="2(x3),1",
    )
    e = SlurmEnvironment(env)
    e.check()
    assert (e.world_size(), e.global_rank(), e.local_rank(), e.node_rank(), e.local_world_size(), e.num_nodes()) == (
        7,
        procid,
        localid,
        nodeid,
        local_size,
        4,
    )


def test_step_variables_win_over_the_job():
    env = slurm_env(
        SLURM_NNODES="4",
        SLURM_JOB_NODELIST="n[1-4]",
        SLURM_TASKS_PER_NODE="1(x4)",
        SLURM_NTASKS="4",
        SLURM_STEP_NODELIST="n[3-4]",
        SLURM_STEP_NUM_NODES="2",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_STEP_TASKS_PER_NODE="1(x2)",
    )
    e = SlurmEnvironment(env)
    e.check()
    assert e.hosts() == ["n3", "n4"] and e.main_address() == "n3" and e.world_size() == 2


def test_slurm_restart_array_and_devices():
    e = SlurmEnvironment(
        slurm_env(SLURM_RESTART_COUNT="2", SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3", SLURM_GPUS_ON_NODE="8")
    )
    assert e.restart_count() == 2 and e.array() == ("77", "3") and e.devices_on_node() == 8
    assert e.job_id() == "77_3"  # a job array's task, as sacct and scontrol name it
    assert SlurmEnvironment(slurm_env()).job_id() == "4242"


@pytest.mark.parametrize("missing", ["SLURM_JOB_NODELIST", "SLURM_TASKS_PER_NODE", "SLURM_NNODES"])
def test_missing_slurm_variable_is_a_user_error(missing):
    env = slurm_env()
    env.pop(missing)
    with pytest.raises(UserError, match=missing):
        e = SlurmEnvironment(env)
        e.check()


def test_contradictory_slurm_variables():
    with pytest.raises(UserError, match="SLURM_STEP_NODELIST"):
        SlurmEnvironment(slurm_env(SLURM_JOB_NODELIST="n[1-3]")).check()
    with pytest.raises(UserError, match="rank 5 is outside"):
        SlurmEnvironment(slurm_env(SLURM_PROCID="5")).check()
    with pytest.raises(UserError, match="not an integer"):
        SlurmEnvironment(slurm_env(SLURM_PROCID="zero")).global_rank()


def test_ports():
    assert port_for_job("4242") == PORT_BASE + 4242 % PORT_SPAN
    assert port_for_job("100") != port_for_job("101")  # two jobs sharing a node
    assert all(PORT_BASE <= port_for_job(str(j)) < 32768 for j in range(0, 200000, 997))
    assert SlurmEnvironment(slurm_env()).main_port() == port_for_job("4242")
    assert SlurmEnvironment(slurm_env(), master_port=6000).main_port() == 6000  # the job file's value
    assert SlurmEnvironment(slurm_env(MASTER_PORT="7001"), master_port=6000).main_port() == 7001  # env wins


TORCHRUN = {
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "GROUP_RANK": "2",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "n1",
    "MASTER_PORT": "29500",
    "GROUP_WORLD_SIZE": "4",
}
OPENMPI = {
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
}
MPICH = {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"}


@pytest.mark.parametrize(
    "env,cls",
    [
        (TORCHRUN, TorchrunEnvironment),
        ({**TORCHRUN, **slurm_env()}, TorchrunEnvironment),  # torchrun inside Slurm: torchrun's view wins
        (slurm_env(), SlurmEnvironment),
        ({**slurm_env(), "PMI_RANK": "0", "PMI_SIZE": "2"}, SlurmEnvironment),  # srun --mpi=pmi2
        ({**slurm_env(), **OPENMPI}, MPIEnvironment),  # Open MPI's mpirun inside an allocation
        (OPENMPI, MPIEnvironment),
        (MPICH, MPIEnvironment),
        ({"PMIX_RANK": "0"}, MPIEnvironment),
        ({}, LocalEnvironment),
    ],
)
def test_selection_priority(env, cls):
    assert type(select_environment(env)) is cls


def test_torchrun_answers():
    e = TorchrunEnvironment(TORCHRUN)
    e.check()
    assert (e.world_size(), e.global_rank(), e.local_rank(), e.node_rank(), e.num_nodes()) == (8, 5, 1, 2, 4)
    assert (e.main_address(), e.main_port()) == ("n1", 29500)


@pytest.mark.parametrize(
    "env,answers",
    [
        (OPENMPI, (4, 3, 1, 2, 1, 2)),
        (MPICH, (4, 2, 0, 2, 1, 2)),
    ],
)
def test_mpi_answers(env, answers):
    e = MPIEnvironment(env)
    assert (
        e.world_size(),
        e.global_rank(),
        e.local_rank(),
        e.local_world_size(),
        e.node_rank(),
        e.num_nodes(),
    ) == answers


def test_mpi_detection_does_not_initialise_mpi():
    import sys

    e = select_environment(OPENMPI)
    assert isinstance(e, MPIEnvironment) and "mpi4py.MPI" not in sys.modules
    with pytest.raises(UserError, match="MASTER_ADDR"):
        e.main_address()  # known only after agree()
    assert MPIEnvironment({**OPENMPI, "MASTER_ADDR": "h0", "MASTER_PORT": "1234"}).main_port() == 1234


def test_local_environment_from_job_and_variables():
    e = LocalEnvironment({}, nnodes=2, node_rank=1, master_addr="10.0.0.1")
    assert (e.world_size(), e.node_rank(), e.main_address(), e.main_port()) == (2, 1, "10.0.0.1", 6000)
    e = LocalEnvironment({"NNODES": "4", "NODE_RANK": "3", "MASTER_ADDR": "h"})
    assert (e.num_nodes(), e.node_rank(), e.main_address()) == (4, 3, "h")


def test_detection_writes_nothing():
    import os

    before = dict(os.environ)
    for env in (TORCHRUN, slurm_env(), OPENMPI, {}):
        e = select_environment(env)
        e.world_size(), e.global_rank(), e.local_rank()
    assert dict(os.environ) == before
