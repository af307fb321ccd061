"""One node of a Ray cluster inside the allocation (`entry.launcher: ray`, verl's GRPO): the head on the
first node, a worker on every other; the driver runs once, on the head, when every node has joined,
and the cluster is stopped when it ends.

    python ray_node.py head   --address HOST:PORT --nodes N --done FILE --temp-dir DIR [RAY START OPTIONS] -- DRIVER...
    python ray_node.py worker --address HOST:PORT --nodes N --done FILE --temp-dir DIR [RAY START OPTIONS]

Each node's `ray start --block` is a child of this process in a session of its own: stopping this node
stops its raylet (and only its: never `ray stop`, which ends every Ray process of the machine). The
head writes FILE when the driver has ended; a worker then stops its raylet and ends. A stop signal ends
the driver first, then the node. It runs in the entry's interpreter, which need not have hpc-mm: the
standard library and Ray only. Exit status: the driver's on the head, 0 on a worker that saw the end.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

JOIN_TIMEOUT = float(os.environ.get("HPC_MM_RAY_JOIN_TIMEOUT", "600"))
RAY = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"]
_children: list = []
_stopping = {"signal": None}


def say(text: str) -> None:
    print(f"hpc-mm ray: {text}", flush=True)


def parse(argv: list[str]) -> dict:
    role, rest = argv[0], argv[1:]
    driver = rest[rest.index("--") + 1 :] if "--" in rest else []
    rest = rest[: rest.index("--")] if "--" in rest else rest
    out = {"role": role, "driver": driver, "start": []}
    i = 0
    while i < len(rest):
        if rest[i] in ("--address", "--nodes", "--done", "--temp-dir"):
            out[rest[i][2:].replace("-", "_")] = rest[i + 1]
            i += 2
        else:
            out["start"].append(rest[i])
            i += 1
    return out


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    child = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(child)
    return child


def end(child: subprocess.Popen, grace: float = 30.0) -> None:
    """Stop a child and everything it started (its session), politely first."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()


def on_stop(signum, _frame) -> None:
    _stopping["signal"] = signum
    for child in reversed(_children):  # the driver first, then the raylet
        if child.poll() is None:
            try:
                os.killpg(child.pid, signum if child is _children[-1] else signal.SIGTERM)
            except ProcessLookupError:
                pass


def alive_nodes(address: str) -> int:
    """How many nodes of the cluster at `address` are alive (asked through Ray's own client)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    done = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else 0


def resolved(address: str) -> tuple[str, str]:
    """The head's address as Ray wants it (an IP, and the port)."""
    host, port = address.rsplit(":", 1)
    return socket.gethostbyname(host), port


def worker_ports(port: str) -> list[str]:
    """Ray's worker ports, in a range that leaves out the head's port (hpc-mm's master ports lie in Ray's
    default range, 10002-19999)."""
    low = 20002 if int(port) < 20000 else 10002
    return ["--min-worker-port", str(low), "--max-worker-port", str(low + 9997)]


def head(opts: dict) -> int:
    host, port = resolved(opts["address"])
    opts["address"] = f"{host}:{port}"
    nodes = int(opts["nodes"])
    ray = spawn([*RAY, "start", "--head", "--block", "--port", port, "--node-ip-address", host,
                 "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", opts["temp_dir"],
                 *worker_ports(port), *opts["start"]])  # fmt: skip
    deadline, joined, said = time.monotonic() + JOIN_TIMEOUT, 0, -1
    while joined < nodes:
        if ray.poll() is not None or _stopping["signal"]:
            say(f"the head stopped before the cluster formed (exit {ray.poll()})")
            return ray.poll() or 1
        if time.monotonic() > deadline:
            say(f"{joined} of {nodes} nodes joined within {JOIN_TIMEOUT:.0f} s; giving up")
            end(ray)
            return 1
        time.sleep(1)
        joined = alive_nodes(opts["address"])
        if joined != said:
            say(f"{joined} of {nodes} nodes joined")
            said = joined
    say(f"every node joined; the driver starts: {' '.join(opts['driver'][:4])} ...")
    driver = spawn(opts["driver"], env={**os.environ, "RAY_ADDRESS": opts["address"]})
    rc = driver.wait()
    with open(opts["done"], "w") as f:
        json.dump({"returncode": rc}, f)
    end(ray)
    say(f"the driver ended (exit {rc}); the cluster is stopped")
    return rc


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def worker(opts: dict) -> int:
    host, port = resolved(opts["address"])
    opts["address"] = f"{host}:{port}"
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not reachable(host, int(port)):
        if time.monotonic() > deadline or _stopping["signal"]:
            say(f"the head at {opts['address']} never answered")
            return 1
        time.sleep(1)
    node_ip = socket.gethostbyname(os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    ray = spawn([*RAY, "start", "--block", "--address", opts["address"], "--node-ip-address", node_ip,
                 "--disable-usage-stats", "--temp-dir", opts["temp_dir"], *worker_ports(port),
                 *opts["start"]])  # fmt: skip
    while True:
        if os.path.exists(opts["done"]) or _stopping["signal"]:
            end(ray)
            return 0 if not _stopping["signal"] else 128 + _stopping["signal"]
        if ray.poll() is not None:
            say(f"this node's raylet ended (exit {ray.returncode}): the head is gone")
            return 0 if os.path.exists(opts["done"]) else ray.returncode or 1
        time.sleep(1)


def main(argv: list[str]) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, on_stop)
    opts = parse(argv)
    return head(opts) if opts["role"] == "head" else worker(opts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
