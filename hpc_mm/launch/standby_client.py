# Start the entry in a standby interpreter of this node (launch/standby.py), or, where none is ready,
# as a fresh process. Runs in the entry's own interpreter (which need not have hpc-mm): it imports
# nothing of ours and nothing heavy. Usage, in place of `python -u`:
#
#     python standby_client.py SCRIPT|-m MODULE|-c CODE ARGS...
#
# It hands its argv, environment, working directory, ignored signals and its stdin, stdout and stderr
# to the standby, forwards every signal it gets to it, and exits as the standby exits (the same code,
# or killed by the same signal), so that to torchrun, srun or the launcher it is the entry. Where
# $HPC_MM_STANDBY is unset, no standby answers or none is ready, it runs the entry itself (a cold start).
import array
import json
import os
import signal
import socket
import sys

SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCONT")
ARGV = sys.argv[1:]
ADDRESS = os.environ.get("HPC_MM_STANDBY", "")  # kept: torchrun, in a standby, starts its workers through it too


def cold(why):
    if why:
        sys.stderr.write(f"hpc-mm standby: {why}; a cold start\n")
        sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-u", *ARGV])


def ask():
    if not ADDRESS:
        cold("")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect("\0" + ADDRESS)
    except OSError:  # the pool is gone (its node's step ended): as without one
        sock.close()
        cold("")
    ignored = [
        int(n) for name in SIGNALS if (n := getattr(signal, name, None)) and signal.getsignal(n) == signal.SIG_IGN
    ]
    request = {"argv": ARGV, "env": dict(os.environ), "cwd": os.getcwd(), "ignored": ignored}
    fds = array.array("i", [0, 1, 2])
    try:
        sock.sendmsg([json.dumps(request).encode() + b"\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    except OSError as exc:
        cold(f"the standby pool did not take the start ({exc.strerror or exc})")
    return sock


def lines(sock):
    held = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except InterruptedError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            return
        held += chunk
        *whole, held = held.split(b"\n")
        for line in whole:
            yield json.loads(line)


def main():
    sock = ask()
    said = lines(sock)
    first = next(said, None)
    if first is None or "pid" not in first:
        sock.close()
        cold((first or {}).get("cold", "the standby pool closed"))
    pid = first["pid"]

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for name in SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) != signal.SIG_IGN:
            signal.signal(number, forward)
    status = next(said, None)
    if status is None or "exit" not in status:
        sys.stderr.write("hpc-mm standby: the standby pool went away during the run\n")
        sys.stderr.flush()
        os._exit(1)
    code = status["exit"]
    if code < 0:  # killed by a signal: end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        os._exit(128 - code)
    os._exit(code)


main()
