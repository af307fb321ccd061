"""The step's launchers watch each other: a failure anywhere ends the whole step within a second.

Without this, when one rank dies the others find out only when a collective fails or times out,
and the step ends when the last of them gives up (seconds, or the backend's timeout). Here the
launcher with global rank 0 (the leader) listens on a port of its own choosing, published in the
run directory (`RunDir.peers_file`); every other launcher connects and stays connected:

  member -> leader   {"hello": id}; {"beat": 1} every BEAT seconds; {"exit": rc} when its entry ended
  leader -> members  {"end": reason}: a launcher's entry failed, or a launcher vanished; {"bye": 1}
                     when the leader's own entry ended well (no more watching)

A launcher vanishes when its connection closes without an "exit" (the process or its node died:
the kernel closes its sockets at once), or when it is silent for SILENCE seconds (a node that
lost power). The leader vanishing is seen the same way by every member. Ending the step is the
launcher's own (`on_end`: its entry's whole tree killed); the step then ends as it does today.
A stop (preemption, time limit) is never a failure here: the entries save and exit 0.
"""

from __future__ import annotations

import json
import select
import selectors
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from hpc_mm.run.atomic import write_atomic

BEAT = 0.5  # seconds between a member's beats
SILENCE = 15.0  # a member (or the leader) silent this long is gone: a node that died without a word
CONNECT_FOR = 600.0  # how long a member looks for the leader's address (the leader may start later)


def _send(sock: socket.socket, message: dict) -> bool:
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
        return True
    except OSError:
        return False


class _Lines:
    """Whole JSON lines from a socket; `None` at its end."""

    def __init__(self, sock: socket.socket):
        self.sock, self.held = sock, b""

    def read(self) -> list[dict] | None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not chunk:
            return None
        self.held += chunk
        *lines, self.held = self.held.split(b"\n")
        out = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                out.append(message)
        return out


class Peers(threading.Thread):
    """One launcher's part: the leader's listener and judge, or a member's connection to it."""

    def __init__(self, address_file: Path, me: str, leader: bool, host: str, on_end: Callable[[str], None]):
        super().__init__(name="peers", daemon=True)
        self.address_file, self.me, self.leader, self.host, self.on_end = address_file, me, leader, host, on_end
        self.ended: str | None = None  # why the step was ended by a peer's failure (or this launcher's)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._socks: dict[socket.socket, dict] = {}  # leader: each member's connection and what it said
        self._server: socket.socket | None = None
        self._to_leader: socket.socket | None = None
        if leader:  # bound before the entry starts: a member that connects early finds it listening
            server = socket.create_server(("", 0), backlog=1024)
            server.setblocking(False)
            self._server = server
            write_atomic(address_file, f"{host}:{server.getsockname()[1]}\n")

    # ------------------------------------------------------------------ what the launcher calls
    def entry_exited(self, rc: int, stopping: bool) -> None:
        """This launcher's entry ended with `rc`: a failure (not a stop) ends the step everywhere."""
        failed = rc != 0 and not stopping
        if self.leader:
            if failed:
                self._end(f"{self.me}'s entry failed (exit code {rc})")
            else:
                self._broadcast({"bye": 1})
        elif self._to_leader is not None:
            _send(self._to_leader, {"exit": rc, "stopping": stopping})
        self._halt.set()

    def close(self) -> None:
        self._halt.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(5)
        for sock in [*self._socks, self._server, self._to_leader]:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    # ------------------------------------------------------------------ the thread
    def run(self) -> None:
        try:
            self._lead() if self.leader else self._follow()
        except Exception as exc:  # watching must never take the training down
            sys.stderr.write(f"hpc-mm peers: {exc.__class__.__name__}: {exc}\n")

    def _end(self, reason: str, heard: bool = False) -> None:
        """End this launcher's part (once), and the step's: told by the leader (`heard`), or deciding."""
        with self._lock:
            if self.ended is not None:
                return
            self.ended = reason
        sys.stderr.write(f"hpc-mm launch: {'the step ends' if heard else 'ending the step'}: {reason}\n")
        sys.stderr.flush()
        if not heard:
            self._broadcast({"end": reason})
        self.on_end(reason)

    def _broadcast(self, message: dict) -> None:
        for sock in list(self._socks):
            _send(sock, message)

    def _lead(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._server, selectors.EVENT_READ)
        readers: dict[socket.socket, _Lines] = {}
        while not self._halt.is_set():
            for key, _ in selector.select(timeout=BEAT):
                sock = key.fileobj
                if sock is self._server:
                    try:
                        conn, _addr = self._server.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    readers[conn] = _Lines(conn)
                    self._socks[conn] = {"id": "a launcher", "seen": time.monotonic(), "exited": None}
                    selector.register(conn, selectors.EVENT_READ)
                    if self.ended is not None:
                        _send(conn, {"end": self.ended})
                    continue
                said = self._socks[sock]
                messages = readers[sock].read()
                if messages is None:  # closed: fine after its exit, a vanished launcher otherwise
                    selector.unregister(sock)
                    del readers[sock], self._socks[sock]
                    sock.close()
                    if said["exited"] is None:
                        self._end(f"the launcher of {said['id']} vanished (its process or node died)")
                    continue
                said["seen"] = time.monotonic()
                for message in messages:
                    if "hello" in message:
                        said["id"] = str(message["hello"])
                    if "exit" in message:
                        said["exited"] = message["exit"]
                        if message["exit"] != 0 and not message.get("stopping"):
                            self._end(f"{said['id']}'s entry failed (exit code {message['exit']})")
            now = time.monotonic()
            self._broadcast({"beat": 1})
            for said in list(self._socks.values()):
                if said["exited"] is None and now - said["seen"] > SILENCE:
                    said["exited"] = "silent"
                    self._end(f"the launcher of {said['id']} has been silent for {SILENCE:.0f} s")
        selector.close()

    def _follow(self) -> None:
        sock = self._connect()
        if sock is None:
            return
        self._to_leader = sock
        sock.setblocking(False)
        _send(sock, {"hello": self.me})
        lines, heard = _Lines(sock), time.monotonic()
        while not self._halt.is_set():
            ready, _, _ = select.select([sock], [], [], BEAT)
            if ready:
                messages = lines.read()
                if messages is None:
                    if not self._halt.is_set():
                        self._end("the leader's launcher vanished (its process or node died)")
                    return
                heard = time.monotonic()
                for message in messages:
                    if "end" in message:
                        self._end(str(message["end"]), heard=True)
                        return
                    if "bye" in message:
                        return
            elif time.monotonic() - heard > SILENCE:
                self._end(f"the leader's launcher has been silent for {SILENCE:.0f} s")
                return
            if not _send(sock, {"beat": 1}) and not self._halt.is_set():
                self._end("the leader's launcher vanished (its process or node died)")
                return

    def _connect(self) -> socket.socket | None:
        deadline = time.monotonic() + CONNECT_FOR
        while not self._halt.is_set() and time.monotonic() < deadline:
            try:
                host, port = self.address_file.read_text().strip().rsplit(":", 1)
                return socket.create_connection((host, int(port)), timeout=5)
            except (OSError, ValueError):
                self._halt.wait(0.2)
        return None


def member_id(node: int, task: int | None, host: str) -> str:
    return f"node {node} ({host})" if task is None else f"rank {task} of node {node} ({host})"
