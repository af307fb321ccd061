"""A rank's wait for other processes' turns on a CPU: the run delay less its cgroups' CPU-quota
throttling (v1 and v2, on the rank's cgroup or one above it), read from a fake /proc and cgroup tree
in the kernel's formats; and, on this machine's real kernel, a CPU quota counted as the rank's own."""

import os
import time
from pathlib import Path

import pytest

from hpc_mm.train.cpuwait import CpuWait, Mark, OwnTime, throttle_sources

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
"""
V2_MOUNTS = "40 23 0:40 / {root}/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def fake(tmp_path: Path, mounts: str, cgroup: str, delay_ns: int) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "thread-self").mkdir()
    (proc / "self/mountinfo").write_text(mounts.format(root=tmp_path / "cg"))
    (proc / "self/cgroup").write_text(cgroup)
    (proc / "thread-self/schedstat").write_text(f"123456 {delay_ns} 42\n")
    return proc


def v1_group(tmp_path: Path, path: str, quota: int, throttled_ns: int) -> None:
    folder = tmp_path / "cg/cpu" / path.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.stat").write_text(f"nr_periods 10\nnr_throttled 3\nthrottled_time {throttled_ns}\n")


def test_without_a_quota_all_the_run_delay_is_contention(tmp_path):
    proc = fake(tmp_path, V1_MOUNTS, "4:memory:/x\n2:cpu,cpuacct:/slurm/job1\n0::/\n", delay_ns=2_000_000)
    v1_group(tmp_path, "/slurm/job1", -1, 0)
    v1_group(tmp_path, "/slurm", -1, 0)
    (tmp_path / "cg/cpu/cpu.cfs_quota_us").write_text("-1\n")
    wait = CpuWait(proc)
    assert wait.sources == ()
    before = wait.mark()
    (proc / "thread-self/schedstat").write_text("123456 5000000 43\n")
    assert wait.contended(before, wait.mark()) == pytest.approx(0.003)


def test_a_v1_quota_on_a_cgroup_above_the_ranks_is_its_own_time(tmp_path):
    proc = fake(tmp_path, V1_MOUNTS, "2:cpu,cpuacct:/kube/pod/rank\n", delay_ns=1_000_000)
    v1_group(tmp_path, "/kube/pod/rank", -1, 0)
    v1_group(tmp_path, "/kube/pod", 70000, 4_000_000)
    v1_group(tmp_path, "/kube", -1, 0)
    wait = CpuWait(proc)
    assert [s.stat for s in wait.sources] == [tmp_path / "cg/cpu/kube/pod/cpu.stat"]
    before = wait.mark()
    (proc / "thread-self/schedstat").write_text("1 4000000 2\n")  # waited 3 ms ...
    v1_group(tmp_path, "/kube/pod", 70000, 6_500_000)  # ... 2.5 ms of them throttled by the quota
    assert wait.contended(before, wait.mark()) == pytest.approx(0.0005)
    # throttled for longer than the thread waited (other tasks of the cgroup): no contention, not less
    v1_group(tmp_path, "/kube/pod", 70000, 20_000_000)
    assert wait.contended(before, wait.mark()) == 0.0


def test_a_v2_quota_and_a_rank_moved_into_a_limited_cgroup_while_it_trains(tmp_path):
    proc = fake(tmp_path, V2_MOUNTS, "0::/job/step\n", delay_ns=0)
    step = tmp_path / "cg/unified/job/step"
    step.mkdir(parents=True)
    (step / "cpu.max").write_text("max 100000\n")
    (step.parent / "cpu.max").write_text("max 100000\n")
    wait = CpuWait(proc)
    assert wait.sources == ()
    limited = tmp_path / "cg/unified/job/slow"
    limited.mkdir()
    (limited / "cpu.max").write_text("70000 100000\n")
    (limited / "cpu.stat").write_text("usage_usec 900\nnr_throttled 2\nthrottled_usec 1500\n")
    (proc / "self/cgroup").write_text("0::/job/slow\n")
    wait.refresh()
    assert [(s.key, s.unit) for s in wait.sources] == [("throttled_usec", 1e-6)]
    before = wait.mark()
    (proc / "thread-self/schedstat").write_text("1 3000000 2\n")
    (limited / "cpu.stat").write_text("usage_usec 900\nnr_throttled 4\nthrottled_usec 3500\n")
    assert wait.contended(before, wait.mark()) == pytest.approx(0.001)


def test_marks_taken_under_other_cgroups_compare_only_what_both_read(tmp_path):
    before = Mark(0.010, {Path("/a/cpu.stat"): 5.0})
    after = Mark(0.014, {Path("/b/cpu.stat"): 9.0})
    assert CpuWait.contended(before, after) == pytest.approx(0.004)


def test_no_proc_at_all_reads_as_no_wait(tmp_path):
    wait = CpuWait(tmp_path / "nothing")
    assert wait.sources == () and wait.contended(wait.mark(), wait.mark()) == 0.0
    assert throttle_sources(tmp_path / "nothing") == ()


def test_own_time_adds_up_its_stretches_less_their_waits_and_leaves_out_the_rest(tmp_path):
    proc = fake(tmp_path, V1_MOUNTS, "2:cpu,cpuacct:/\n", delay_ns=0)
    own = OwnTime(CpuWait(proc))
    own.end()  # nothing begun: nothing counted
    outer = 0.0  # the stretches' time as the test sees it, from before begin() to after end()
    for waited_ms in (4, 6):  # two stretches of its own work, 30 ms each, waiting 4 and 6 ms of them
        began = time.perf_counter()
        own.begin()
        time.sleep(0.03)
        old = int((proc / "thread-self/schedstat").read_text().split()[1])
        (proc / "thread-self/schedstat").write_text(f"1 {old + waited_ms * 1_000_000} 2\n")
        own.end()
        outer += time.perf_counter() - began
        time.sleep(0.05)  # waiting for data or for the other ranks: not its own time
    assert own.delayed == pytest.approx(0.010)
    assert 0.06 - 0.010 <= own.seconds <= outer - 0.010
    own.reset()
    assert (own.seconds, own.delayed) == (0.0, 0.0)


CPU_V1 = Path("/sys/fs/cgroup/cpu")


def test_on_this_kernel_a_cpu_quota_is_not_counted_as_contention(tmp_path):
    """The real thing: this process in a cgroup limited to 10% of a CPU busy-loops; the kernel counts
    the throttled time as run delay, and CpuWait gives it back as the rank's own (what other processes
    took of the CPU meanwhile, on a busy machine, stays contention)."""
    group = CPU_V1 / f"hpc-mm-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("10000")
        (group / "cpu.cfs_quota_us").write_text("1000")
        (group / "cgroup.procs").write_text(str(os.getpid()))
        wait = CpuWait()
        assert wait.sources and wait.sources[0].stat == group / "cpu.stat"
        before, began = wait.mark(), time.perf_counter()
        while time.perf_counter() - began < 0.3:
            pass
        after = wait.mark()
        waited = after.run_delay - before.run_delay
        throttled = after.throttled[group / "cpu.stat"] - before.throttled[group / "cpu.stat"]
        assert waited > 0.1 and throttled > 0.1  # the kernel says it waited, throttled by the quota ...
        assert wait.contended(before, after) == pytest.approx(max(0.0, waited - throttled))  # ... its own
    finally:
        (CPU_V1 / "cgroup.procs").write_text(str(os.getpid()))
        group.rmdir()
