"""The preflight's network check: the master listens on the port training will use, from the first
moment of its preflight; every other node connects to it. How a node failed to connect (refused,
no answer) is what tells the master's fault from the node's (launch/finish.py, `failed_nodes`)."""

from __future__ import annotations

import errno
import socket
import threading
import time

# How long the nodes try to reach the master's port. The master listens before anything slow (its
# interpreter check can take seconds on a busy node), so the nodes normally connect at once; a
# refused connection is tried again until then (the master may simply not be up yet).
REACH_SECONDS = 60.0


class Listener:
    """The master's side of the port check: it listens from the first moment of its preflight and
    accepts the other nodes in a thread while its own checks run."""

    def __init__(self, port: int, expected: int) -> None:
        self.expected, self.accepted, self.error = expected, 0, None
        try:
            self.server = socket.create_server(("", port), reuse_port=False, backlog=max(8, expected))
        except OSError as exc:
            self.server, self.error = None, exc
            return
        self.server.settimeout(0.5)
        self.deadline = time.monotonic() + REACH_SECONDS + 5
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.accepted < self.expected and time.monotonic() < self.deadline:
            try:
                self.server.accept()[0].close()
                self.accepted += 1
            except socket.timeout:
                continue
            except OSError:
                return

    def wait(self) -> int:
        """Until every node has connected (or the deadline): how many did."""
        if self.server is None:
            return 0
        self.thread.join(max(0.0, self.deadline - time.monotonic()))
        self.server.close()
        return self.accepted


def reach_master(environment, node: str) -> tuple[str | None, str | None]:
    """A node other than the master connects to the master's port: the address and port training
    will use work from this node. (None, None), or how it failed (an errno name) and one line."""
    addr, port = environment.main_address(), environment.main_port()
    deadline, error = time.monotonic() + REACH_SECONDS, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=5):
                return None, None
        except OSError as exc:
            error = exc
            time.sleep(0.2)
    name = errno.errorcode.get(getattr(error, "errno", None) or 0) or type(error).__name__
    if isinstance(error, socket.timeout):
        name = "ETIMEDOUT"
    said = getattr(error, "strerror", None) or str(error)
    return name, f"{node} cannot reach the master {addr}:{port} ({said})"
