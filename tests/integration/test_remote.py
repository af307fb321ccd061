"""`hpc-mm --remote`, against a real sshd (Debian's openssh-server) started here with key
authentication only: a "laptop" user, whose hpc-mm is another virtual environment and whose ssh
config names the login node, submits a 2-node job to the test cluster, follows its log, reads its
status, gets its report's figure back, and cancels a second job; a wrong host, a login node without
hpc-mm and a refused key are one line each."""

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import JOBS, ROOT
from test_faults import finished

LAPTOP = "hpcmm-laptop"


@dataclass
class Laptop:
    home: Path
    hpc_mm: Path

    def cli(self, *args, env=None, timeout=600):
        """hpc-mm as the laptop user, in their home, with their own environment (no SLURM_CONF: the
        laptop has no Slurm; its ssh config sends it to the login node, as a site's profile would)."""
        base = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run(
            ["/usr/sbin/runuser", "-u", LAPTOP, "--", str(self.hpc_mm), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=self.home,
            env=base,
            timeout=timeout,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def laptop(slurm_cluster):
    if not Path("/usr/sbin/sshd").is_file():
        raise RuntimeError("sshd is missing: scripts/setup installs openssh-server")
    if subprocess.run(["id", LAPTOP], capture_output=True).returncode:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", LAPTOP], check=True)
    home = Path(tempfile.mkdtemp(prefix="hpc-mm-laptop-"))
    os.chmod(home, 0o755)
    subprocess.run(["pkill", "-u", LAPTOP], capture_output=True)  # a connection left open by an earlier run
    time.sleep(0.5)
    subprocess.run(["usermod", "-d", str(home), LAPTOP], check=True)
    uid = pwd.getpwnam(LAPTOP).pw_uid
    server = Path(tempfile.mkdtemp(prefix="hpc-mm-sshd-"))
    port = _free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", server / "host"], check=True)
    ssh = home / ".ssh"
    ssh.mkdir()
    for key in ("id_ed25519", "other"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ssh / key], check=True)
    shutil.copy(ssh / "id_ed25519.pub", server / "authorized_keys")
    (server / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {server / 'host'}\n"
        f"AuthorizedKeysFile {server / 'authorized_keys'}\nPidFile {server / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nAcceptEnv SLURM_CONF\n"
    )
    cluster = Path(tempfile.mkdtemp(prefix="hpc-mm-login-"))  # where hpc-mm works on the login node
    host = f"HostName 127.0.0.1\n  Port {port}\n  User root\n  UserKnownHostsFile ~/.ssh/known_hosts\n"
    host += f"  StrictHostKeyChecking accept-new\n  SetEnv SLURM_CONF={os.environ['SLURM_CONF']}\n"
    (ssh / "config").write_text(
        f"Host login\n  {host}  IdentityFile ~/.ssh/id_ed25519\n  IdentitiesOnly yes\n"
        # another user too: ssh would otherwise reuse the open connection (ControlMaster) of `login`
        f"Host login-other-key\n  {host.replace('User root', 'User nobody')}  IdentityFile ~/.ssh/other\n"
        "  IdentitiesOnly yes\n"
    )
    config = home / ".config" / "hpc-mm"
    config.mkdir(parents=True)
    (config / "config.yaml").write_text(f"remote_dir: {cluster}\nremote_hpc_mm: {ROOT / '.venv' / 'bin' / 'hpc-mm'}\n")
    # the laptop's own hpc-mm: another virtual environment, a plain (not editable) install of this checkout
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    target = home / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target, ROOT],
        check=True,
        capture_output=True,
    )
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    # hpc-mm from its own copy; its light dependencies (PyYAML, Jinja2) from the test environment's
    (purelib / "laptop.pth").write_text(f"{target}\n{sysconfig.get_paths()['purelib']}\n")
    script = venv / "bin" / "hpc-mm"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom hpc_mm.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    shutil.copy(JOBS / "tiny-vlm.yaml", home / "tiny-vlm.yaml")
    shutil.copytree(JOBS / "tiny-vlm", home / "tiny-vlm")
    subprocess.run(["chown", "-R", f"{uid}:{uid}", home], check=True)
    opened = []  # the interpreter's folders (under /root here) must be reachable by the laptop user
    for folder in Path(os.path.realpath(sys.executable)).parents:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(folder, mode | stat.S_IXOTH)
            opened.append((folder, mode))
    os.chmod(ssh / "id_ed25519", 0o600)
    os.makedirs("/run/sshd", exist_ok=True)
    daemon = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", server / "sshd_config"], stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    try:
        yield Laptop(home, script)
    finally:
        daemon.terminate()
        daemon.wait(10)
        subprocess.run(["pkill", "-u", LAPTOP], capture_output=True)  # its shared ssh connections
        for folder in (home, server, cluster):
            shutil.rmtree(folder, ignore_errors=True)
        for folder, mode in reversed(opened):
            os.chmod(folder, mode)


def test_submit_follow_status_report_and_cancel_from_a_laptop(laptop):
    sets = ["--set", "gpt.train_iters=40", "--set", "distributed.nproc_per_node=1", "--set", "fault.preflight=false"]
    result = laptop.cli("--remote", "login", "submit", "tiny-vlm.yaml", "-N", "2", *sets, "--json")
    assert result.returncode == 0, result.stderr
    job_id, run_dir = json.loads(result.stdout)["job_id"], json.loads(result.stdout)["run_dir"]
    follow = laptop.cli("--remote", "login", "logs", "-f", job_id, "--rank", "0")
    assert follow.returncode == 0, follow.stderr
    assert "iteration       40/      40" in follow.stdout
    status = json.loads(laptop.cli("--remote", "login", "status", job_id, "--json").stdout)
    assert status["state"] == "COMPLETED" and status["nodes"] == 2 and status["last_iteration"] == 40
    assert status["run_dir"] == run_dir and not Path(run_dir).is_relative_to(laptop.home)
    # HPC_MM_REMOTE instead of --remote; the figure comes back next to the laptop user
    report = laptop.cli("report", job_id, env={"HPC_MM_REMOTE": "login"})
    assert report.returncode == 0, report.stderr
    local = laptop.home / f"{Path(run_dir).name}-report.png"
    assert f"figure (copied here) {local}" in report.stdout
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second, longer job: cancelled from the laptop, it saves first
    long = laptop.cli(
        "--remote", "login", "submit", "tiny-vlm.yaml", "-N", "2", *sets, "--set", "gpt.train_iters=5000", "--json"
    )
    second = json.loads(long.stdout)["job_id"]
    deadline = time.time() + 300
    while time.time() < deadline:
        now = json.loads(laptop.cli("--remote", "login", "status", second, "--json").stdout)
        if (now["last_iteration"] or 0) >= 20:
            break
        time.sleep(2)
    cancel = laptop.cli("--remote", "login", "cancel", second)
    assert cancel.returncode == 0 and f"cancelled job {second}" in cancel.stdout, cancel.stdout + cancel.stderr
    assert finished(second) == "CANCELLED"


def test_a_wrong_host_a_missing_hpc_mm_and_a_refused_key_are_one_line_each(laptop):
    cases = {
        "cannot reach nowhere.invalid": (["--remote", "nowhere.invalid", "status"], {}),
        "no hpc-mm on login": (["--remote", "login", "status"], {"HPC_MM_REMOTE_HPC_MM": "/opt/none/hpc-mm"}),
        "login-other-key refused the key": (["--remote", "login-other-key", "status"], {}),
    }
    for words, (argv, env) in cases.items():
        result = laptop.cli(*argv, env=env, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and words in lines[0], (words, result.stderr)
        assert lines[0].startswith("error: --remote: ") and "Traceback" not in result.stderr
    # a job with a mistake is refused on the laptop, before anything crosses the network
    bad = laptop.cli("--remote", "nowhere.invalid", "submit", "tiny-vlm.yaml", "--set", "gpt.lr=-1")
    assert bad.returncode == 2 and "gpt.lr" in bad.stderr and "cannot reach" not in bad.stderr
