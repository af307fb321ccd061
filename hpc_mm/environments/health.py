"""Whether this node's devices are healthy, asked of the vendors' own tools (no torch): before training
(the preflight) and at each checkpoint while it trains (the watchdog).

    device  tool (where the driver installs it)                       unhealthy when
    npu     npu-smi info -t health -i CARD -c CHIP                    Health Status is Warning/Alarm/Critical
            npu-smi info -t ecc -i CARD -c CHIP                       an HBM/DDR double-bit (uncorrectable) error
            hccn_tool -i DEVICE -link -g  (where installed)           link status is not UP
    cuda    nvidia-smi --query-gpu=... --format=csv,noheader          an uncorrectable ECC error, a row remap that
                                                                      failed or waits for a reset, a GPU the
                                                                      driver cannot reach
            dmesg (where readable)                                    a fatal Xid since `since` (while training)

Only an answer that says a device is sick counts: a tool that is missing, or too slow to answer on a
busy node (TOOL_SECONDS), or an output this code cannot read leaves the device `unchecked`, said but
never blamed: a false alarm takes a healthy node out of the job. NPU cards and chips are found with
`npu-smi info -m` (a logical device is not a card number). Tests point HPC_MM_DEVICE_ROOT (devices.py)
at a folder that holds the tools as well as dev/; the tools are then looked for there only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from hpc_mm.environments.devices import ROOT_VARIABLE, Device, node_name, numbered

FIELD = "device.health"  # a problem of a device of this node: it points at this node, whatever others say
TOOL_SECONDS = 30.0  # a tool slower than this on a loaded node is not an answer
STORAGE_SECONDS = 60.0
# Where the drivers install their tools (searched in this order when PATH does not have them).
TOOLS = {
    "npu-smi": ("usr/local/sbin/npu-smi", "usr/local/bin/npu-smi", "usr/sbin/npu-smi"),
    "hccn_tool": ("usr/local/Ascend/driver/tools/hccn_tool", "usr/local/bin/hccn_tool"),
    "nvidia-smi": ("usr/bin/nvidia-smi", "usr/local/bin/nvidia-smi"),
    "dmesg": ("usr/bin/dmesg", "bin/dmesg"),
}
NPU_SICK = ("Warning", "Alarm", "Critical")  # npu-smi's Health Status other than OK (Ascend's words)
NPU_UNCORRECTABLE = re.compile(r"^\s*(HBM|DDR) Double Bit Error Count\s*:\s*(\d+)", re.M)
NVIDIA_QUERY = "index,pci.bus_id,ecc.errors.uncorrected.volatile.total,remapped_rows.pending,remapped_rows.failure"
# Xids after which the GPU needs a reset or a repair (NVIDIA's Xid catalogue): double-bit ECC, row
# remapping failures, NVLink errors, fallen off the bus, contained/uncontained ECC, GSP errors.
FATAL_XIDS = {48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140}
_XID = re.compile(r"^\[\s*(\d+\.\d+)\].*NVRM: Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+),", re.M)


@dataclass(frozen=True)
class Health:
    problems: tuple[str, ...] = ()  # what says a device is sick, one line each
    unchecked: tuple[str, ...] = ()  # what could not be asked, and why (never blamed)


def tool(name: str, env: Mapping[str, str]) -> str | None:
    """The tool's path: under the fake device root only, when one is set; else PATH, then its usual places."""
    root = env.get(ROOT_VARIABLE)
    if root:
        base = Path(root.replace("{node}", node_name(env)))
        return next((str(base / p) for p in TOOLS[name] if os.access(base / p, os.X_OK)), None)
    return shutil.which(name) or next((f"/{p}" for p in TOOLS[name] if os.access(f"/{p}", os.X_OK)), None)


def ask(command: list[str], timeout: float | None = None) -> tuple[int | None, str]:
    """(exit code, output); None when it could not run or did not answer in time (then its whole
    process group is killed: a tool's child must not hold the pipe, or this call, open)."""
    try:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    except OSError:
        return None, ""
    try:
        out, _ = proc.communicate(timeout=TOOL_SECONDS if timeout is None else timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.stdout.close()
        proc.wait()
        return None, ""
    return proc.returncode, out


# ---------------------------------------------------------------------------------------- parsers
def npu_chips(text: str) -> dict[int, tuple[int, int]]:
    """`npu-smi info -m`: each logical device (davinciN) -> (card, chip)."""
    chips = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit():
            chips[int(parts[2])] = (int(parts[0]), int(parts[1]))
    return chips


def npu_health(text: str) -> str | None:
    """`npu-smi info -t health`: the problem it states, or None (OK, or nothing readable)."""
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines()) if _)
    status = fields.get("Health Status") or fields.get("Health")
    if status not in NPU_SICK:
        return None
    said = [f"{k} {fields[k]}" for k in ("Error Code", "Error Information") if fields.get(k, "NA") not in ("NA", "")]
    return f"Health Status {status}" + (f" ({', '.join(said)})" if said else "")


def npu_ecc(text: str) -> str | None:
    """`npu-smi info -t ecc`: uncorrectable (double-bit) errors counted, or None."""
    found = [
        f"{m.group(1)} double-bit errors {m.group(2)}" for m in NPU_UNCORRECTABLE.finditer(text) if m.group(2) != "0"
    ]
    return ", ".join(found) or None


def hccn_link(text: str) -> str | None:
    """`hccn_tool -i N -link -g`: "link status: UP" is healthy; DOWN is not; anything else unread."""
    match = re.search(r"link status\s*:\s*(\w+)", text, re.I)
    return f"network link {match.group(1)}" if match and match.group(1).upper() == "DOWN" else None


def nvidia_gpus(text: str) -> dict[str, str]:
    """nvidia-smi's CSV rows (NVIDIA_QUERY): GPU index -> its problem ("" when healthy)."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        index, _, uncorrected, pending, failure = cells
        said = []
        if uncorrected.isdigit() and int(uncorrected) > 0:
            said.append(f"{uncorrected} uncorrectable ECC errors")
        if pending.lower() == "yes":
            said.append("a row remap waits for a GPU reset")
        if failure.lower() == "yes":
            said.append("row remapping failed")
        found[index] = ", ".join(said)
    return found


def fatal_xids(text: str, since_uptime: float) -> list[str]:
    """Fatal Xids the kernel logged after `since_uptime` (seconds since boot, dmesg's clock)."""
    return [
        f"Xid {m.group(3)} on PCI {m.group(2)}"
        for m in _XID.finditer(text)
        if float(m.group(1)) >= since_uptime and int(m.group(3)) in FATAL_XIDS
    ]


# ---------------------------------------------------------------------------------------- checks
def _npu(device: Device, env: Mapping[str, str], indices: list[int]) -> Health:
    smi = tool("npu-smi", env)
    if smi is None:
        return Health(unchecked=("npu-smi not found",))
    rc, text = ask([smi, "info", "-m"])
    chips = npu_chips(text) if rc == 0 else {}
    problems, unchecked = [], []
    for index in indices:
        card, chip = chips.get(index, (index, 0))
        for what, read in (("health", npu_health), ("ecc", npu_ecc)):
            rc, text = ask([smi, "info", "-t", what, "-i", str(card), "-c", str(chip)])
            if rc is None:
                unchecked.append(f"npu-smi info -t {what} -i {card} did not answer in {TOOL_SECONDS:.0f} s")
            elif rc == 0 and (said := read(text)):
                problems.append(f"NPU {index} (card {card} chip {chip}): npu-smi {what}: {said}")
    hccn = tool("hccn_tool", env)
    for index in indices if hccn else []:
        rc, text = ask([hccn, "-i", str(index), "-link", "-g"])
        if rc == 0 and (said := hccn_link(text)):
            problems.append(f"NPU {index}: hccn_tool: {said}")
    return Health(tuple(problems), tuple(unchecked))


def _uptime() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cuda(env: Mapping[str, str], since: float | None) -> Health:
    """Every GPU nvidia-smi shows (under Slurm's cgroup: the job's own, numbered from 0)."""
    smi = tool("nvidia-smi", env)
    if smi is None:
        return Health(unchecked=("nvidia-smi not found",))
    rc, text = ask([smi, f"--query-gpu={NVIDIA_QUERY}", "--format=csv,noheader,nounits"])
    if rc is None:
        return Health(unchecked=(f"nvidia-smi did not answer in {TOOL_SECONDS:.0f} s",))
    gpus = nvidia_gpus(text)
    problems = [f"GPU {i}: nvidia-smi: {said}" for i, said in gpus.items() if said]
    lost = re.search(r"(Unable to determine the device handle for GPU\S*|GPU is lost|has fallen off the bus)", text)
    if rc != 0 and lost:
        problems.append(f"nvidia-smi: {lost.group(1).rstrip(':')}")
    dmesg = tool("dmesg", env) if since is not None else None
    uptime = _uptime()
    if dmesg and uptime is not None:
        rc, text = ask([dmesg])
        if rc == 0:
            since_boot = uptime - (time.time() - since)
            problems += [f"kernel log: {x}" for x in dict.fromkeys(fatal_xids(text, since_boot))]
    return Health(tuple(problems))


def visible(device: Device, env: Mapping[str, str], present: list[int]) -> list[int]:
    """The NPUs of this node the job uses: ASCEND_RT_VISIBLE_DEVICES, else all of them."""
    listed = [v.strip() for v in env.get("ASCEND_RT_VISIBLE_DEVICES", "").split(",") if v.strip().isdigit()]
    return [int(v) for v in listed] or present or list(range(device.count))


def check(device: Device, env: Mapping[str, str] | None = None, since: float | None = None) -> Health:
    """The health of this node's devices of the job's kind (cpu: nothing to ask). `since` (a time):
    also what the kernel logged since then (a running start's checks)."""
    env = os.environ if env is None else env
    if device.kind == "npu":
        return _npu(device, env, visible(device, env, numbered(env, "davinci")))
    if device.kind == "cuda":
        return _cuda(env, since)
    return Health()


def answers_in_time(folder: Path, seconds: float = STORAGE_SECONDS) -> str | None:
    """Does the file system of `folder` answer (a stat, a file made and removed) within `seconds`?
    None if it did; else what hangs. A hung mount blocks the thread for good: it is left behind."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            os.statvfs(folder)
            probe_file = Path(folder) / f".hpc-mm-storage-{os.getpid()}-{threading.get_ident()}"
            probe_file.write_bytes(b"")
            probe_file.unlink()
            outcome.append(None)
        except OSError:
            outcome.append(None)  # it answered: whether it is writable is the preflight's other check

    thread = threading.Thread(target=probe, name="storage-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    return None if outcome else f"its file system did not answer in {seconds:.0f} s"
