"""Device health from the vendors' tools (environments/health.py), read from their documented formats
through fake device roots; and the rule that turns what they say at a checkpoint into nodes to leave
(launch/sentinel.py)."""

import os
import time

import pytest
from fake_devices import gpu_node, npu_ecc_text, npu_health_text, npu_node, set_npu

from hpc_mm.environments import health
from hpc_mm.environments.devices import ROOT_VARIABLE, Device, check_device
from hpc_mm.launch.sentinel import Sentinel, to_leave
from hpc_mm.names import Cause


def env_for(root, node="n1", **more):
    return {ROOT_VARIABLE: f"{root}/{{node}}", "SLURMD_NODENAME": node, **more}


@pytest.mark.parametrize(
    "text, said",
    [
        (npu_health_text("OK"), None),
        (npu_health_text("Warning", "0x80C98008", "HBM single-bit ECC over threshold"),
         "Health Status Warning (Error Code 0x80C98008, Error Information HBM single-bit ECC over threshold)"),
        (npu_health_text("Alarm", "0x80E18005"), "Health Status Alarm (Error Code 0x80E18005)"),
        (npu_health_text("Critical"), "Health Status Critical"),
        ("        Health                         : OK\n", None),  # older drivers' word
        ("", None),
        ("npu-smi: command failed", None),
    ],
)  # fmt: skip
def test_npu_smi_health(text, said):
    assert health.npu_health(text) == said


def test_npu_smi_ecc_and_hccn_link_and_the_chip_map():
    assert health.npu_ecc(npu_ecc_text(0, 0)) is None
    assert health.npu_ecc(npu_ecc_text(3, 2)) == "HBM double-bit errors 2"
    assert health.hccn_link("link status: UP\n") is None
    assert health.hccn_link("link status: DOWN\n") == "network link DOWN"
    assert health.hccn_link("hccn_tool: device not found") is None
    text = (
        "        NPU ID      Chip ID     Chip Logic ID     Chip Name\n"
        "        8           0           0                 Ascend 910B3\n"
        "        8           1           -                 Mcu\n"
        "        9           0           1                 Ascend 910B3\n"
    )
    assert health.npu_chips(text) == {0: (8, 0), 1: (9, 0)}


def test_nvidia_smi_rows_and_fatal_xids():
    rows = "0, 00000000:07:00.0, 0, No, No\n1, 00000000:08:00.0, 3, Yes, No\n2, 00000000:09:00.0, [N/A], [N/A], [N/A]\n"
    assert health.nvidia_gpus(rows) == {
        "0": "",
        "1": "3 uncorrectable ECC errors, a row remap waits for a GPU reset",
        "2": "",
    }
    log = (
        "[  100.5] NVRM: Xid (PCI:0000:07:00): 79, pid=0, GPU has fallen off the bus.\n"
        "[  200.0] NVRM: Xid (PCI:0000:08:00): 13, pid=123, Graphics Exception\n"
        "[  300.0] NVRM: Xid (PCI:0000:08:00): 94, pid=123, Contained ECC error\n"
    )
    assert health.fatal_xids(log, 0) == ["Xid 79 on PCI 0000:07:00", "Xid 94 on PCI 0000:08:00"]
    assert health.fatal_xids(log, 150) == ["Xid 94 on PCI 0000:08:00"]  # only since the start


def test_a_sick_npu_is_named_with_the_tools_words_and_a_healthy_node_never(tmp_path):
    npu_node(tmp_path, "n1", devices=4)
    npu_node(tmp_path, "n2", devices=4, sick={2: "Alarm"}, ecc={3: 1}, links={1: "DOWN"})
    healthy = health.check(check_device("npu", env_for(tmp_path, "n1")), env_for(tmp_path, "n1"))
    assert healthy == health.Health()
    sick = health.check(check_device("npu", env_for(tmp_path, "n2")), env_for(tmp_path, "n2"))
    assert sick.problems == (
        "NPU 2 (card 2 chip 0): npu-smi health: Health Status Alarm (Error Code 0x80E18005, "
        "Error Information HBM ECC fault)",
        "NPU 3 (card 3 chip 0): npu-smi ecc: HBM double-bit errors 1",
        "NPU 1: hccn_tool: network link DOWN",
    )
    # only the devices the job uses
    env = env_for(tmp_path, "n2", ASCEND_RT_VISIBLE_DEVICES="0,1")
    assert health.check(check_device("npu", env), env).problems == ("NPU 1: hccn_tool: network link DOWN",)


def test_gpus_ecc_and_a_gpu_the_driver_lost(tmp_path):
    gpu_node(tmp_path, "n1")
    gpu_node(tmp_path, "n2", uncorrected={1: 5})
    gpu_node(tmp_path, "n3", lost=True)
    said = {n: health.check(Device("cuda", 2), env_for(tmp_path, n)).problems for n in ("n1", "n2", "n3")}
    assert said == {
        "n1": (),
        "n2": ("GPU 1: nvidia-smi: 5 uncorrectable ECC errors",),
        "n3": ("nvidia-smi: Unable to determine the device handle for GPU0000:07:00.0",),
    }


def test_a_missing_or_slow_tool_is_said_never_blamed(tmp_path, monkeypatch):
    (tmp_path / "n1" / "dev").mkdir(parents=True)
    (tmp_path / "n1" / "dev" / "davinci0").touch()
    (tmp_path / "n1" / "dev" / "davinci_manager").touch()
    env = env_for(tmp_path)
    assert health.check(Device("npu", 1), env) == health.Health(unchecked=("npu-smi not found",))
    npu_node(tmp_path, "n1", devices=1, sick={0: "Alarm"})
    slow = tmp_path / "n1" / "usr" / "local" / "sbin" / "npu-smi"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    monkeypatch.setattr(health, "TOOL_SECONDS", 0.3)
    found = health.check(Device("npu", 1), env)
    assert found.problems == () and len(found.unchecked) == 2
    assert health.check(Device("cpu", 1), env) == health.Health()


def test_storage_that_answers_and_storage_that_hangs(tmp_path, monkeypatch):
    assert health.answers_in_time(tmp_path, 5) is None
    monkeypatch.setattr(os, "statvfs", lambda _p: time.sleep(2))
    assert health.answers_in_time(tmp_path, 0.2) == "its file system did not answer in 0 s"


@pytest.mark.parametrize(
    "unhealthy, states, leave",
    [
        ({}, {}, None),
        ({"n1": (), "n2": ()}, {"n1": "ALLOCATED", "n2": "MIXED"}, None),
        ({}, {"n1": "ALLOCATED", "n2": "ALLOCATED+DRAIN"}, (("n2",), Cause.DRAIN)),
        ({}, {"n1": "MIXED+DRAIN", "n2": "IDLE+DRAIN"}, (("n1", "n2"), Cause.DRAIN)),
        ({}, {"n2": "DOWN*"}, (("n2",), Cause.DRAIN)),
        ({"n2": ("NPU 0: npu-smi health: Health Status Alarm",)}, {"n1": "ALLOCATED"}, (("n2",), Cause.DEVICE)),
        ({"n1": ("GPU 1: nvidia-smi: 5 uncorrectable ECC errors",)}, {"n2": "MIXED+DRAIN"}, (("n1",), Cause.DEVICE)),
        ({}, {"n1": "ALLOCATED+COMPLETING", "n2": "MIXED+RESERVED"}, None),
    ],
)
def test_which_nodes_a_start_leaves_at_a_checkpoint(unhealthy, states, leave):
    found = to_leave(unhealthy, states)
    assert (None if found is None else (found.nodes, found.cause)) == leave
    if found:
        assert all(line.split(":")[0] in found.nodes for line in found.evidence)


def test_the_sentinel_checks_at_each_new_checkpoint_only(tmp_path):
    from hpc_mm.job.jobfile import load_job
    from hpc_mm.run.checkpoints import write_tracker

    from conftest import JOBS

    spec = load_job(JOBS / "tiny-vlm.yaml", [])
    npu_node(tmp_path / "root", "n1", devices=2)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write_tracker(folder, 10)  # the checkpoint the start begins from: not a new one
    sentinel = Sentinel(spec, folder, "npu", time.time(), env_for(tmp_path / "root"))
    assert not sentinel.poll() and sentinel.problems == ()
    set_npu(tmp_path / "root", "n1", 1, "Critical")
    assert not sentinel.poll()  # nothing is asked between checkpoints
    write_tracker(folder, 20)
    assert sentinel.poll() and sentinel.problems == (
        "NPU 1 (card 1 chip 0): npu-smi health: Health Status Critical (Error Code 0x80E18005, "
        "Error Information HBM ECC fault)",
    )
    assert not sentinel.poll()
