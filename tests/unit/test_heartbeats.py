"""Heartbeats: one file per launcher and start, so that ranks started one by one by srun (several
launchers on a node) are all seen by the hang detector and by `finish`, and a later job in the same
run directory never reads an earlier job's."""

import subprocess
import sys
from types import SimpleNamespace

from hpc_mm.launch import watchdog
from hpc_mm.run.events import StartKey
from hpc_mm.run.records import Heartbeat, ended_by_host
from hpc_mm.run.rundir import RunDir


def launcher(run, key, node, task, child):
    progress = SimpleNamespace(iteration=5, last_progress=0.0, saving=False, train_iters=10, final_saved=False)
    budgets = watchdog.Budgets(startup=60, step=60, checkpoint=60)
    return watchdog.Watchdog(run, key, node, progress, child, decides=False, budgets=budgets, builtin=True, task=task)


def test_launchers_sharing_a_node_keep_their_own_heartbeat(tmp_path):
    run, key = RunDir(tmp_path), StartKey("74", 0)
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(4)]
    try:
        dogs = [
            launcher(run, key, 0, 0, children[0]),
            launcher(run, key, 0, 1, children[1]),
            launcher(run, key, 1, None, children[2]),
            launcher(run, StartKey("76", 0), 1, None, children[3]),
        ]
        for dog in dogs:
            dog.beat()
        beats = run.heartbeats(key)
        assert sorted(b.node for b in beats) == [0, 0, 1], "two launchers on node 0 must not overwrite each other"
        assert {p.name for p in (tmp_path / "heartbeats").iterdir()} == {
            "74-r0-n0-t0.json",
            "74-r0-n0-t1.json",
            "74-r0-n1.json",
            "76-r0-n1.json",
        }
        assert [b.node for b in run.heartbeats(StartKey("76", 0))] == [1]  # another job's start: its own only
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_a_host_has_ended_only_when_every_launcher_there_has():
    def beat(host, ended):
        return Heartbeat(node=0, host=host, pid=1, time=0.0, ended=ended)

    beats = [beat("n1", True), beat("n1", False), beat("n2", True)]
    assert ended_by_host(beats) == {"n1": False, "n2": True}
    assert ended_by_host([]) == {}
