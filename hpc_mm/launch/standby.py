"""Warm restarts: standby interpreters on every node of the allocation, the entry's modules imported.

A restart inside the allocation used to be a cold start on every node: an interpreter, torch's
import (torch_npu's and CANN's on Ascend, megatron's), then the model and the checkpoint. The batch
script now runs `hpc-mm standby RUN_DIR` once per node, for the whole allocation, in a step of its
own beside the training steps (`srun --overlap`): a pool that keeps enough standby interpreters
for the node's part of a start (its ranks, and torchrun's agent). Each is the entry's interpreter
(behind its wrapper), in the entry's folder, with the job's environment, that has imported the
device's modules, the entry kind's and `requeue.preload` (filled REFILL_AFTER seconds after the
pool starts or hands standbys out: never while a start is getting under way).

A start hands each process to a standby through `standby_client.py` (what torchrun, srun or the
launcher run in place of `python -u`): its argv, environment, folder and stdio go over this
node's socket, and the standby becomes that process (launch/standby_child.py); the client stays
as its stand-in, forwarding signals and exiting as it exits. The pool refills behind each start.
Where no standby is ready (the pool not started yet, a node without one, a standby that died) the
client runs the entry itself: a cold start, as before. The socket is the node's own (an abstract
Unix socket named after the job and node) and answers only the job's user.

The pool, its standbys and whatever a standby runs end with the allocation: Slurm ends the step,
a standby dies with its pool (PR_SET_PDEATHSIG), and a running one is killed as soon as its
client goes (the training step ended). What they hold in memory is written to the pool's log and
to `standby/<job>-<node>.json` in the run directory (`hpc-mm status` shows it).
"""

from __future__ import annotations

import array
import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpc_mm.errors import UserError
from hpc_mm.run.atomic import write_atomic

CHILD = Path(__file__).resolve().parent / "standby_child.py"
CLIENT = Path(__file__).resolve().parent / "standby_client.py"
ENV = "HPC_MM_STANDBY"  # the node's pool, for the client
REPORT_EVERY = 10.0  # seconds between the pool's memory reports
# A pool fills (and refills behind a start) this long after it starts (or hands out): not while a start
# is getting under way, on CPUs it may need; the imports then take a few CPU-seconds per standby.
REFILL_AFTER = float(os.environ.get("HPC_MM_STANDBY_REFILL_AFTER", 10.0))


def address(job_id: str | None, node: str) -> str:
    """The pool's abstract socket name on `node` (several emulated nodes may share one host)."""
    return f"hpc-mm-standby-{os.getuid()}-{job_id or 'local'}-{node}"


def links_dir() -> Path:
    """Where the pool says which standby stands in for which client (read by launch/procs.py)."""
    return Path(f"/tmp/hpc-mm-standby-{os.getuid()}")


def _links_are_ours() -> bool:
    """The links name processes the launcher may kill: they count only in a folder of this user's that
    nobody else can write (a folder someone else made first in /tmp is never trusted)."""
    try:
        info = os.lstat(links_dir())
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def stand_ins() -> dict[int, int]:
    """Every client on this host and the standby running its process."""
    out = {}
    if not _links_are_ours():
        return out
    try:
        names = os.listdir(links_dir())
    except OSError:
        return out
    for name in names:
        if name.isdigit() and (real := stand_in(int(name))) is not None:
            out[int(name)] = real
    return out


def stand_in(pid: int) -> int | None:
    """The standby running the process whose client is `pid`, if any."""
    if not _links_are_ours():
        return None
    try:
        real, real_started, client_started = (links_dir() / str(pid)).read_text().split()
    except (OSError, ValueError):
        return None
    # both still the processes the link was written for (a pid is reused once its process is gone)
    if _started(pid) != client_started or _started(int(real)) != real_started:
        return None
    return int(real)


def _started(pid: int) -> str:
    """When a process started (clock ticks since boot): with its pid, it names the process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "gone"


@dataclass
class Standby:
    proc: subprocess.Popen
    control: socket.socket
    ready: bool = False
    seconds: float | None = None
    failed: dict = field(default_factory=dict)
    client: socket.socket | None = None
    client_pid: int | None = None
    held: bytes = b""


def _rss_mib(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Pool:
    """One node's standbys, and the socket that hands them out."""

    def __init__(
        self,
        name: str,
        command: list[str],
        workdir: str,
        env: dict,
        modules: list[str],
        count: int,
        report: Path | None = None,
        refill_after: float = REFILL_AFTER,
    ):
        self.command, self.workdir, self.env, self.modules, self.count = command, workdir, env, modules, count
        self.refill_after = refill_after
        self.report, self.node = report, name.rsplit("-", 1)[-1]
        # Bound once its first standby is ready: until then a launcher finds no pool here and starts
        # its processes as it always did (the first start of an allocation never waits for one).
        self.name, self.server = name, None
        self.selector = selectors.DefaultSelector()
        self.standbys: list[Standby] = []
        self.handed = 0
        self.stopping = False
        self.refill_at = time.monotonic() + refill_after
        links_dir().mkdir(mode=0o700, exist_ok=True)
        if not _links_are_ours():  # someone else's folder: no links, and every start through here is cold
            raise UserError.one(
                "/tmp", f"{links_dir()} is not this user's own folder", "remove it; hpc-mm makes it (mode 0700)"
            )

    # ------------------------------------------------------------------ standbys
    def spawn(self) -> None:
        mine, theirs = socket.socketpair()
        proc = subprocess.Popen(
            [*self.command, str(CHILD), str(theirs.fileno()), self.workdir, *self.modules],
            cwd=self.workdir,
            env=self.env,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        standby = Standby(proc, mine)
        self.standbys.append(standby)
        self.selector.register(mine, selectors.EVENT_READ, ("standby", standby))

    def idle(self) -> list[Standby]:
        return [s for s in self.standbys if s.client is None]

    def fill(self) -> None:
        if time.monotonic() < self.refill_at:
            return
        while not self.stopping and len(self.idle()) < self.count:
            self.spawn()

    # ------------------------------------------------------------------ the loop
    def serve(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._stop)
        reported = 0.0
        while not self.stopping:
            self.fill()
            for key, _ in self.selector.select(timeout=0.2):
                what, standby = key.data
                if what == "server":
                    self._accept()
                elif what == "standby":
                    self._from_standby(standby)
                else:
                    self._from_client(standby)
            self._reap()
            if time.monotonic() - reported > REPORT_EVERY:
                reported = time.monotonic()
                self._report()
        self.close()

    def _stop(self, _signum, _frame) -> None:
        self.stopping = True

    def close(self) -> None:
        for standby in self.standbys:
            _kill(standby.proc.pid)
        for standby in self.standbys:
            try:
                standby.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self._unlink(standby)
        if self.server is not None:
            self.server.close()

    def _open(self) -> None:
        if self.server is None:
            self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.server.bind("\0" + self.name)
            self.server.listen(64)
            self.selector.register(self.server, selectors.EVENT_READ, ("server", None))

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid = int.from_bytes(creds[0:4], sys.byteorder), int.from_bytes(creds[4:8], sys.byteorder)
        if uid != os.getuid():  # another user on the node: nothing of this job is theirs to run
            conn.close()
            return
        conn.settimeout(10)
        try:
            data, fds = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        if not data.strip():  # a launcher asking whether this node has a pool (`available`)
            conn.close()
            return
        ready = next((s for s in self.idle() if s.ready and s.proc.poll() is None), None)
        if ready is None or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            why = "no standby interpreter is ready yet" if ready is None else "the start's stdio did not arrive"
            _reply(conn, {"cold": why})
            conn.close()
            return
        try:
            ready.control.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        except OSError:
            _reply(conn, {"cold": "the standby interpreter did not take the start"})
            conn.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        ready.client, ready.client_pid = conn, pid
        self.handed += 1
        write_atomic(links_dir() / str(pid), f"{ready.proc.pid} {_started(ready.proc.pid)} {_started(pid)}")
        _reply(conn, {"pid": ready.proc.pid})
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, ("client", ready))
        self.refill_at = time.monotonic() + self.refill_after  # the next start's standby, once this one is going
        self._report()

    def _from_standby(self, standby: Standby) -> None:
        try:
            chunk = standby.control.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.selector.unregister(standby.control)
            standby.control.close()
            return
        standby.held += chunk
        *lines, standby.held = standby.held.split(b"\n")
        for line in lines:
            said = json.loads(line)
            if "ready" in said:
                standby.ready, standby.seconds, standby.failed = True, said.get("seconds"), said.get("failed") or {}
                self._open()
                if standby.failed:
                    print(f"hpc-mm standby: {self.node}: not imported ahead: {standby.failed}", file=sys.stderr)
                self._report()

    def _from_client(self, standby: Standby) -> None:
        try:
            chunk = standby.client.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went (its step ended, it was killed): so does what it stood for
            _kill(standby.proc.pid)

    def _reap(self) -> None:
        for standby in list(self.standbys):
            code = standby.proc.poll()
            if code is None:
                continue
            self.standbys.remove(standby)
            self._unlink(standby)
            for sock in (standby.control, standby.client):
                if sock is not None:
                    try:
                        self.selector.unregister(sock)
                    except (KeyError, ValueError):
                        pass
            if standby.client is not None:
                # What it started and left behind (a killed rank's data loader workers, which look for
                # their parent only every few seconds, holding the start's output open) goes with it.
                _kill(standby.proc.pid)
                standby.client.setblocking(True)
                _reply(standby.client, {"exit": code})
                standby.client.close()
            else:
                standby.control.close()
                print(f"hpc-mm standby: {self.node}: a standby interpreter ended ({code}); another is started")

    def _unlink(self, standby: Standby) -> None:
        if standby.client_pid is not None:
            try:
                (links_dir() / str(standby.client_pid)).unlink()
            except OSError:
                pass

    def _report(self) -> None:
        ready = [s for s in self.idle() if s.ready]
        state = {
            "node": self.node,
            "time": round(time.time(), 3),
            "ready": len(ready),
            "warming": len(self.idle()) - len(ready),
            "running": len(self.standbys) - len(self.idle()),
            "handed_out": self.handed,
            "idle_rss_mib": round(sum(_rss_mib(s.proc.pid) for s in self.idle()), 1),
            "import_seconds": max((s.seconds or 0 for s in ready), default=None),
            "modules": self.modules,
        }
        if self.report is not None:
            try:
                write_atomic(self.report, json.dumps(state))
            except OSError:
                pass


def _kill(pid: int) -> None:
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
            return
        except (ProcessLookupError, PermissionError):
            continue


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    while data and not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            raise ValueError("the request was cut short")
        data += more
    if not data:
        raise ValueError("no request")
    return data, list(fds)


def _reply(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass
