"""Secrets never reach a file hpc-mm writes nor a line it prints: a variable named like one, or whose
value looks like one, is refused in `env`; a webhook URL that carries a credential must come from the
environment (env:NAME), and an error about a webhook never echoes it."""

import pytest

from conftest import JOBS, cli_in_process

TOKEN = "hf_Zk3pQ9vX2mL7nR4tY8wB1cD6"
TINY = JOBS / "tiny-vlm.yaml"


@pytest.mark.parametrize(
    "name, value",
    [
        (name, "x1")
        for name in (
            "DB_PWD",
            "PASSPHRASE",
            "AUTH",
            "BEARER",
            "COOKIE",
            "HF_AUTH",
            "WEBHOOK_URL",
            "CREDS",
            "DATABASE_URL",
        )
    ]
    + [
        ("HELPER", TOKEN),
        ("HELPER", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2ln"),
        ("HELPER", "postgres://me:hunter2@db.example.org/runs"),
        ("HELPER", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE"),
        ("HELPER", "https://example.org/in?token=abc"),
    ],
)
def test_a_secret_in_env_is_refused_by_its_name_or_its_value_and_never_echoed(tmp_path, name, value):
    rc, out, err = cli_in_process("render", TINY, "--set", f"env.{name}={value}", "--run-dir", tmp_path / "run")
    assert rc == 2 and f"error: env.{name}: looks like a secret" in err, err
    assert value not in err and value not in out and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name, value",
    [("HCCL_CONNECT_TIMEOUT", "1200"), ("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True"),
     ("TOKENIZERS_PARALLELISM", "'false'"), ("LD_LIBRARY_PATH", "/usr/local/Ascend/ascend-toolkit/latest/lib64/plugin"),
     ("CPU_AFFINITY_CONF", "1"), ("NCCL_SOCKET_IFNAME", "^docker0,lo")],
)  # fmt: skip
def test_ordinary_settings_are_not_taken_for_secrets(tmp_path, name, value):
    rc, out, err = cli_in_process("validate", TINY, "--set", f"env.{name}={value}")
    assert rc == 0, err


@pytest.mark.parametrize(
    "url, said",
    [
        (f"https://hooks.example.org/services/T0/B0/{TOKEN}", "looks like a credential"),
        ("https://me:hunter2@hooks.example.org/x", "looks like a credential"),
        ("https://ntfy.sh/alerts?auth=hunter2", "looks like a credential"),
        ("https://hooks.example.org:99999/x", "valid port"),
        ("https://hooks.example.org/a b/hunter2", "blank"),
        ("hooks.example.org/hunter2", "is not an http(s) URL"),
    ],
)
def test_a_webhook_that_holds_a_credential_or_is_not_a_url_is_refused_without_echoing_it(url, said):
    rc, out, err = cli_in_process("validate", TINY, "--set", f"notify.webhook={url}")
    assert rc == 2 and said in err and len(err.splitlines()) == 1, err
    assert "hunter2" not in err and TOKEN not in err


def test_nothing_hpc_mm_writes_holds_a_secret_named_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_HOOK", f"https://hooks.example.org/services/{TOKEN}")
    run = tmp_path / "run"
    rc, out, err = cli_in_process("render", TINY, "--set", "notify.webhook=env:MY_HOOK", "--run-dir", run)
    assert rc == 0, err
    for path in [p for p in run.rglob("*") if p.is_file()]:
        assert TOKEN not in path.read_text(errors="replace"), path
    assert TOKEN not in out + err
