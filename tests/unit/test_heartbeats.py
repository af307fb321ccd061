"""Heartbeats: one file per launcher, so that ranks started one by one by srun (several launchers
on a node) are all seen by the hang detector and by `finish`."""

import subprocess
import sys
from types import SimpleNamespace

from hpc_mm.launch import watchdog
from hpc_mm.run import heartbeats


def launcher(run_dir, node, task, child):
    progress = SimpleNamespace(iteration=5, last_progress=0.0, saving=False)
    budgets = watchdog.Budgets(startup=60, step=60, checkpoint=60)
    return watchdog.Watchdog(run_dir, 0, node, progress, child, decides=False, budgets=budgets, builtin=True,
                             task=task)


def test_launchers_sharing_a_node_keep_their_own_heartbeat(tmp_path):
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(3)]
    try:
        dogs = [launcher(tmp_path, 0, 0, children[0]), launcher(tmp_path, 0, 1, children[1]),
                launcher(tmp_path, 1, None, children[2])]
        for dog in dogs:
            dog.beat()
        beats = heartbeats.read(tmp_path, 0)
        assert sorted(b["node"] for b in beats) == [0, 0, 1], "two launchers on node 0 must not overwrite each other"
        assert {p.name for p in (tmp_path / "heartbeats").iterdir()} == {"r0-n0-t0.json", "r0-n0-t1.json",
                                                                         "r0-n1.json"}
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_a_host_has_ended_only_when_every_launcher_there_has():
    beats = [{"host": "n1", "ended": True}, {"host": "n1", "ended": False}, {"host": "n2", "ended": True}]
    assert heartbeats.ended_by_host(beats) == {"n1": False, "n2": True}
    assert heartbeats.ended_by_host([]) == {}
