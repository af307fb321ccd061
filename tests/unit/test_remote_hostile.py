"""`--remote` against hostile values: a login is [user@]host[:port] and always reaches ssh after `--`;
anything else is one error line before ssh runs. What `submit` sends is the job's files and the
entry's code, never its secrets, caches or weights, streamed and capped. A fake `ssh` on PATH records
what it was given (no network, no sshd: tests/integration/test_remote.py has the real one)."""

import json
import os
import stat
import tarfile
import tempfile
from io import BytesIO

import pytest

from hpc_mm.cli import staging
from hpc_mm.cli.remote import Remote, parse_login
from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job

from conftest import JOBS, cli_in_process

TINY = JOBS / "tiny-vlm.yaml"
FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$@" > "$SSH_ARGS"
echo "Permission denied (publickey)." >&2
exit 255
"""


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    args = tmp_path / "ssh-args"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SSH_ARGS", str(args))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.delenv("HPC_MM_REMOTE", raising=False)
    (tmp_path / "tmp").mkdir()
    return args


@pytest.mark.parametrize(
    "login",
    ["-oProxyCommand=touch /tmp/pwned", "-F/tmp/evil", "-V", "", "a b", "host;rm", "u@-x", "host:99999", "h\n-o", "@h"],
)
def test_a_login_that_could_be_an_option_or_is_not_one_is_refused_before_ssh(fake_ssh, login):
    rc, out, err = cli_in_process(f"--remote={login}", "status")
    assert rc == 2 and err.startswith("error: --remote: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and not fake_ssh.exists()


@pytest.mark.parametrize("value", ["['a', 'b']", "{h: 1}", "yes", "-oProxyCommand=x", "''"])
def test_a_config_file_login_that_is_not_a_string_login_is_refused(fake_ssh, tmp_path, value):
    config = tmp_path / "config" / "hpc-mm"
    config.mkdir(parents=True)
    (config / "config.yaml").write_text(f"remote: {value}\n")
    rc, out, err = cli_in_process("status")
    assert rc == 2 and err.startswith("error: remote: ") and len(err.splitlines()) == 1, err
    assert not fake_ssh.exists()


@pytest.mark.parametrize(
    "text, said",
    [
        ("remote: a\nremote: b\n", "given twice"),
        ("a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
         for p, c in zip("abcdefgh", "bcdefghi")), "aliases"),
        ("\x00\x01binary", "control character"),
    ],
)  # fmt: skip
def test_the_config_file_is_read_with_the_job_files_caps(fake_ssh, tmp_path, text, said):
    config = tmp_path / "config" / "hpc-mm"
    config.mkdir(parents=True)
    (config / "config.yaml").write_text(text)
    rc, out, err = cli_in_process("status")
    assert rc == 2 and said in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_the_login_reaches_ssh_after_the_options_end_and_a_refusal_is_an_error(fake_ssh):
    rc, out, err = cli_in_process("--remote", "me@login1:2222", "status")
    args = fake_ssh.read_text().splitlines()
    cut = args.index("--")
    assert args[cut + 1] == "me@login1" and args[cut - 2 : cut] == ["-p", "2222"]
    assert rc == 2 and "refused the key" in err, err
    assert parse_login("login1", "x") == ("login1", None)


def test_a_control_folder_others_may_use_is_refused(fake_ssh, tmp_path):
    control = tmp_path / "tmp" / f"hpc-mm-ssh-{os.getuid()}"
    control.mkdir()
    control.chmod(0o777)
    rc, out, err = cli_in_process("--remote", "login1", "status")
    assert rc == 2 and "mode 777" in err and not fake_ssh.exists(), err
    control.chmod(0o700)
    assert stat.S_IMODE(control.stat().st_mode) == 0o700
    assert Remote("login1").ssh("true")[-2:] == ["login1", "true"]


def entry_folder(tmp_path):
    code = tmp_path / "code"
    files = {
        "pretrain_vlm.py": "print('hi')",
        "lib/util.py": "",
        ".env": "HF_TOKEN=hf_secret",
        ".ssh/id_rsa": "-----BEGIN",
        ".aws/credentials": "[default]",
        "lib/.secret": "x",
        "ckpt/iter_0000001/model.pt": "w",
        "weights.safetensors": "w",
        "cache/x.bin": "w",
        "data/big.parquet": "d",
        "outputs_local/keep.py": "",
        "scratch/notes.txt": "n",
        ".gitignore": "scratch/\n# a comment\n*.log\n",
        "train.log": "l",
        "lib/__pycache__/util.cpython-311.pyc": "c",
    }
    for name, text in files.items():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_text(text)
    (code / "link.py").symlink_to("/etc/hostname")
    return code


def test_submit_sends_the_entrys_code_and_never_its_secrets_caches_or_weights(tmp_path):
    code = entry_folder(tmp_path)
    spec = load_job(TINY, [f"entry.workdir={code}", "entry.script=pretrain_vlm.py", "entry.kind=command"])
    _, copies = staging.staged_job(spec, "s")
    sent = sorted(k.removeprefix("s/workdir/") for k in copies if k.startswith("s/workdir/"))
    assert sent == ["lib/util.py", "outputs_local/keep.py", "pretrain_vlm.py"], sent
    with tarfile.open(fileobj=BytesIO(staging.tar(copies))) as tar:
        assert sorted(tar.getnames()) == sorted(copies)


def test_what_is_sent_is_capped_and_a_job_without_mm_files_stages(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "infer.py").write_text("print(1)")
    (code / "big.py").write_bytes(b"#" * (2 * 1024 * 1024))
    spec = load_job(
        TINY, [f"entry.workdir={code}", "entry.script=infer.py", "entry.kind=command", "mm=null", "gpt.lr=null"]
    )
    text, copies = staging.staged_job(spec, "s")
    assert "s/workdir/big.py" in copies
    monkeypatch.setenv("HPC_MM_REMOTE_MAX_MB", "1")
    with pytest.raises(UserError, match=r"more than 1 MB \(largest: workdir/big.py \(2 MB\)"):
        staging.check_size(copies)
    fsdp2 = load_job(JOBS / "qwen3vl-30b.yaml", [])
    text, copies = staging.staged_job(fsdp2, "f")
    assert json.dumps(sorted(copies)).count("config-") == 1
