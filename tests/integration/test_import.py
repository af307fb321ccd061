"""`hpc-mm import` of launch scripts in every shape MindSpeed-MM's examples take (tests/fixtures/checkout:
scripts written for these tests), and `hpc-mm args --node N --diff SCRIPT`: each node runs what the
script runs but for the differences hpc-mm's table gives a reason for."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

CHECKOUT = ROOT / "tests" / "fixtures" / "checkout"
# script -> the arguments a user gives it
SCRIPTS = {
    "examples/vlm/finetune_vlm.sh": [],
    "examples/msrun/finetune_ms.sh": [],
    "examples/fsdp2/train.sh": [],
    "examples/yamlfirst/train.sh": [],
    "examples/accel/train.sh": ["--max_train_steps=400"],
    "examples/verl/grpo.sh": ["--data_path=/data/geo3k", "--model_path=/models/qwen"],
    "examples/stages/preprocess.sh": [],
    "examples/infer/infer.sh": [],
    "examples/hostfile/train.sh": [],
    "examples/ownargs/train.sh": [],
}


def hpc_mm(*args, cwd=CHECKOUT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hpc_mm", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def imported(tmp_path, script, args=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "job.yaml"
    done = hpc_mm("import", "-o", out, script, *args)
    assert done.returncode == 0, done.stderr
    files = [out] if out.exists() else sorted(tmp_path.glob("job-*.yaml"))
    return files, done


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_each_node_runs_the_scripts_command_but_for_documented_differences(tmp_path, script):
    files, _ = imported(tmp_path, script, SCRIPTS[script])
    for job in files:
        assert hpc_mm("validate", job).returncode == 0
        for node in (0, 1):
            done = hpc_mm("args", job, "--node", node, "--nodes", 2, "--device", "npu", "--json", "--diff", script,
                          *SCRIPTS[script])  # fmt: skip
            said = json.loads(done.stdout)
            unexplained = [d["what"] for d in said.get("differences", []) if d["reason"] is None]
            assert not unexplained and done.returncode == 0, (job.name, node, unexplained, done.stderr)
            assert said["node"] == node and said["nnodes"] == 2


def test_what_import_carries_from_each_shape(tmp_path):
    def job(script, *args):
        files, done = imported(tmp_path / Path(script).parent.name, script, args)
        return [yaml.safe_load(f.read_text()) for f in files], done, files

    (vlm,), done, files = job("examples/vlm/finetune_vlm.sh")
    assert vlm["entry"]["launcher"] == "torchrun" and vlm["entry"]["kind"] == "megatron"
    assert vlm["distributed"] == {"nnodes": 1, "nproc_per_node": 8}
    assert vlm["gpt"]["tensor_model_parallel_size"] == 2 and vlm["gpt"]["global_batch_size"] == 16
    assert vlm["checkpoint"]["pretrained"] == str(CHECKOUT / "ckpt/pretrained")
    assert vlm["checkpoint"]["dir"] == str(CHECKOUT / "save_dir") and vlm["checkpoint"]["save_interval"] == 500
    assert "no_load_optim" not in vlm["gpt"].get("extra", {}) and "--no-load-optim: dropped" in done.stderr
    assert vlm["setup"] == ["source /usr/local/Ascend/ascend-toolkit/set_env.sh"]
    assert vlm["env"]["HCCL_CONNECT_TIMEOUT"] == "1200"  # the user's value, kept
    assert vlm["post"] == ["chmod -R 750 save_dir"]
    text = files[0].read_text()
    assert "# from " in text and "finetune_vlm.sh:" in text and "What hpc-mm runs differently" in text

    (ms,), _, _ = job("examples/msrun/finetune_ms.sh")
    assert ms["entry"]["launcher"] == "msrun" and ms["entry"]["launcher_args"] == [
        "--bind_core=True",
        "--cluster_time_out",
        "7200",
    ]
    assert ms["distributed"] == {"nnodes": 1, "nproc_per_node": 8}

    (acc,), _, _ = job("examples/accel/train.sh", "--max_train_steps=400")
    assert acc["entry"]["launcher"] == "accelerate" and acc["entry"]["kind"] == "command"
    assert acc["entry"]["launcher_args"] == ["--config_file", "examples/accel/accelerate_config.yaml"]
    assert '[\n  "models/transformer.safetensors",\n  "models/vae.safetensors"\n]' in acc["entry"]["extra_args"]
    assert acc["distributed"] == {"nnodes": 1, "nproc_per_node": 8}  # num_processes from the config file
    assert acc["resume"] == {
        "dir": str(CHECKOUT / "output/lora"),
        "pattern": r"checkpoint-(\d+)",
        "args": ["--resume_from_checkpoint", "latest"],
        "every": 50,
        "steps": 400,
    }

    (verl,), _, _ = job("examples/verl/grpo.sh", "--data_path=/data/geo3k", "--model_path=/models/qwen")
    assert verl["entry"]["script"] == "verl.trainer.main_ppo" and verl["entry"]["launcher"] == "ray"
    assert verl["resume"]["pattern"] == r"global_step_(\d+)" and verl["resume"]["args"] == ["trainer.resume_mode=auto"]
    assert verl["resume"]["every"] == 20 and verl["env"] == {"VLLM_USE_V1": "1"}
    assert verl["resume"]["dir"] == str(CHECKOUT / "checkpoints/grpo_example/geo3k")  # verl's default folder

    (infer,), done, files = job("examples/infer/infer.sh")
    assert infer["env"]["LOCAL_RANK"] is None and "WANDB_API_KEY" not in infer["env"]
    assert "0123456789abcdef" not in files[0].read_text() and "WANDB_API_KEY: looks like a secret" in done.stderr
    assert infer["setup"] == ["ulimit -n 65535"] and infer["entry"]["kind"] == "command"
    assert infer["entry"]["extra_args"] == ["--prompt", "a cat on a mat", "--seed", "7"]

    stages, done, files = job("examples/stages/preprocess.sh")
    assert [s["entry"]["script"] for s in stages] == ["examples/stages/prepare_data.py"] * 2 + [
        "examples/stages/make_list.py"
    ]
    assert [s.get("after") for s in stages] == [None, [stages[0]["name"]], [stages[1]["name"]]]
    assert stages[0]["entry"]["extra_args"] == ["--src", "raw/train", "--dst", "data/train"]

    (own,), done, _ = job("examples/ownargs/train.sh")  # options hpc-mm's tables do not know: a command
    assert own["entry"]["kind"] == "command" and "--lr-warmup-steps" in own["entry"]["extra_args"]
    assert own["resume"] == {"dir": str(CHECKOUT / "ckpt/grpo"), "pattern": r"iter_(\d+)",
                             "args": ["--load", "ckpt/grpo"], "every": 50, "steps": 300}  # fmt: skip
    assert "run as a command, its arguments as written" in done.stderr

    (first,), _, _ = job("examples/yamlfirst/train.sh")
    assert first["entry"]["kind"] == "command" and first["entry"]["extra_args"][0] == "examples/yamlfirst/cfg.yaml"
    (fsdp2,), _, _ = job("examples/fsdp2/train.sh")
    assert fsdp2["entry"]["kind"] == "fsdp2" and fsdp2["entry"]["config"] == str(
        CHECKOUT / "examples/fsdp2/config.yaml"
    )
    assert fsdp2["checkpoint"] == {"save_interval": 150}  # the YAML's own interval, not hpc-mm's default


def test_what_import_refuses_is_one_line(tmp_path):
    needs = hpc_mm("import", "-o", tmp_path / "a.yaml", "examples/needs/needs_arg.sh")
    assert needs.returncode == 2 and needs.stderr.count("error:") == 1 and "needs its argument $1" in needs.stderr
    helper = hpc_mm("import", "-o", tmp_path / "b.yaml", "examples/helper/patch.sh")
    assert (
        helper.returncode == 2
        and "launches nothing hpc-mm can run" in helper.stderr
        and "Traceback" not in helper.stderr
    )
    verl = hpc_mm("import", "-o", tmp_path / "c.yaml", "examples/verl/grpo.sh")
    assert verl.returncode == 2 and 'para "data_path" must be config' in verl.stderr
    assert not list(tmp_path.glob("*.yaml"))


def test_the_script_runs_in_a_copy_without_network_and_a_time_limit(tmp_path):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "keep.txt").write_text("precious\n")
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    (work / "evil.sh").write_text(
        "#!/bin/bash\nrm -rf data\necho gone > data/keep.txt\nmkdir -p data && echo overwritten > data/keep.txt\n"
        "curl -s http://example.com/x -o data/x\ngit clone https://example.com/r.git\n"
        f"/bin/rm -f {work}/data/keep.txt\n/bin/cp /etc/hostname {work}/data/copied\n"
        f"if exec 3<>/dev/tcp/127.0.0.1/{port}; then entry=reached.py; else entry=cut_off.py; fi\n"
        "torchrun --nproc_per_node 1 $entry --lr 1\n"
    )
    before = tree_digest(work)
    done = hpc_mm("import", "-o", tmp_path / "evil.yaml", "evil.sh", cwd=work)
    listening.close()
    assert done.returncode == 0, done.stderr
    assert tree_digest(work) == before  # nothing outside the copy was written, even by /bin/rm
    assert yaml.safe_load((tmp_path / "evil.yaml").read_text())["entry"]["script"] == "cut_off.py"  # no network
    (work / "loop.sh").write_text("#!/bin/bash\nwhile true; do sleep 1; done\n")
    slow = hpc_mm("import", "--timeout", "2", "-o", tmp_path / "loop.yaml", "loop.sh", cwd=work)
    assert slow.returncode == 2 and "did not end within 2 s" in slow.stderr
