# A standby interpreter (launch/standby.py starts it; it runs in the entry's own interpreter, which
# need not have hpc-mm, so it imports nothing of ours). Usage: standby_child.py FD WORKDIR MODULE...
#
# It imports the modules, says it is ready on FD, and
# waits for one start: the argv, environment, working directory and signal dispositions of the
# process it stands in for, with that process's stdin, stdout and stderr. It then becomes that
# process: the entry runs as __main__, as `python [-u] SCRIPT|-m MODULE|-c CODE ARGS` would run it.
import array
import io
import json
import os
import signal
import socket
import sys
import time

CONTROL = int(sys.argv[1])
WORKDIR = sys.argv[2]
MODULES = sys.argv[3:]
SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGPIPE", "SIGXFSZ")
_PR_SET_PDEATHSIG = 1


def _prctl(option, value):
    try:
        import ctypes

        ctypes.CDLL(None).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


os.setsid()  # its own session: the pool ends it (and what it starts) as one
_prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # and it never outlives the pool
sys.path[0] = WORKDIR  # not this file's folder: the entry's modules, as the entry would find them
started = time.monotonic()
failed = {}
for name in MODULES:
    try:
        __import__(name)
    except BaseException as exc:  # a module that does not import here is imported (or fails) by the entry
        failed[name] = f"{exc.__class__.__name__}: {exc}"
control = socket.socket(fileno=CONTROL)
said = {"ready": os.getpid(), "seconds": round(time.monotonic() - started, 3), "failed": failed}
control.sendall(json.dumps(said).encode() + b"\n")

fds = array.array("i")
try:
    data, ancillary, _flags, _addr = control.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
except OSError:
    data, ancillary = b"", []
for level, kind, payload in ancillary:
    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
if not data or len(fds) != 3:
    os._exit(0)  # the pool let it go
while not data.endswith(b"\n"):
    more = control.recv(1 << 20)
    if not more:
        os._exit(0)
    data += more
request = json.loads(data)
control.close()

# Become the process it stands in for.
os.environ.clear()
os.environ.update(request["env"])
os.chdir(request["cwd"])
ignored = set(request.get("ignored", ()))
for name in SIGNALS:
    number = getattr(signal, name, None)
    if number is None:
        continue
    if number in ignored:
        signal.signal(number, signal.SIG_IGN)
    elif number == signal.SIGINT:
        signal.signal(number, signal.default_int_handler)
    elif number not in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these two itself
        signal.signal(number, signal.SIG_DFL)
for target, fd in enumerate(fds):
    os.dup2(fd, target)
    os.close(fd)
sys.stdin = open(0, "r", closefd=False)
# as `python -u` has them: nothing held back (the launcher watches the entry's lines as they come)
sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)
sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), write_through=True, errors="backslashreplace")
sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr

argv = request["argv"]
del control, fds, data, ancillary, request, failed, started, said
if argv[0] == "-m":
    import runpy

    sys.argv = [argv[1], *argv[2:]]
    sys.path[0] = os.getcwd()
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
elif argv[0] == "-c":
    sys.argv = ["-c", *argv[2:]]
    sys.path[0] = ""
    exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
else:
    import runpy

    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")
