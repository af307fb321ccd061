"""The entries MindSpeed-MM ships that hpc-mm ran lossily or not at all: `accelerate launch`, the
launchers' own options, programs that are not Python, a variable to unset, post lines, an entry that
declares how it resumes (resume:), YAML mm files, a task trainer's own engine under the save-on-signal
adapter; and what `validate` says a preemption costs every kind."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_entries import STANDIN, TRAINER, fsdp2_job, write

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.launch.command import child_env, command, start_paths
from hpc_mm.launch.plan import resolve_plan
from hpc_mm.launch.post import run_post

from conftest import ROOT, run_cli


def job(tmp_path, **sections) -> Path:
    spec = {"name": "acc", "entry": {"script": "train.py", "workdir": str(tmp_path), "launcher": "accelerate",
                                     "extra_args": ["--output_dir", "out"]},
            "distributed": {"nnodes": 2, "nproc_per_node": 2}}  # fmt: skip
    for key, value in sections.items():
        section, _, leaf = key.partition("__")
        spec.setdefault(section, {})
        if leaf:
            spec[section][leaf] = value
        else:
            spec[section] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def node_env(node: int, nnodes: int = 2) -> dict:
    return {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": f"n[1-{nnodes}]", "SLURM_NNODES": str(nnodes),
            "SLURM_JOB_NUM_NODES": str(nnodes), "SLURM_NTASKS": str(nnodes), "SLURM_PROCID": str(node),
            "SLURM_NODEID": str(node), "SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": f"1(x{nnodes})",
            "PATH": "/usr/bin:/bin"}  # fmt: skip


def test_accelerate_launch_gets_the_allocation_and_keeps_the_users_options(tmp_path):
    plan = resolve_plan(str(job(tmp_path, entry__launcher_args=["--mixed_precision", "bf16"])), env=node_env(1))
    argv = command(plan)
    at = argv.index("accelerate.commands.launch")
    assert argv[at + 1 : at + 11] == ["--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "n1",
                                      "--main_process_port", str(plan.master_port), "--num_processes", "4"]  # fmt: skip
    assert argv[at + 11 :] == ["--multi_gpu", "--mixed_precision", "bf16", "train.py", "--output_dir", "out"]
    assert child_env(plan)["ACCELERATE_USE_CPU"] == "1"  # this machine has no accelerator
    with_config = resolve_plan(str(job(tmp_path, entry__launcher_args=["--config_file", "ds.yaml"])), env=node_env(0))
    assert "--multi_gpu" not in command(with_config)  # the config file chooses the mode
    assert load_job(job(tmp_path)).entry.kind == "command"


@pytest.mark.parametrize(
    "launcher, option",
    [("accelerate", "--num_processes=8"), ("torchrun", "--nnodes"), ("msrun", "--worker_num"), ("srun", "--exclusive")],
)
def test_the_launchers_options_hpc_mm_sets_are_refused(tmp_path, launcher, option):
    path = job(tmp_path, entry__launcher=launcher, entry__kind="command", entry__launcher_args=[option, "2"])
    with pytest.raises(UserError) as exc:
        load_job(path)
    fields = [p.field for p in exc.value.problems]
    assert fields[0] == "entry.launcher_args[0]" and all(f.startswith("entry.launcher_args[") for f in fields)


def test_a_program_runs_without_python_and_an_unset_variable_is_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    path = job(tmp_path, entry__launcher="torchrun", entry__script="./bin/train", entry__program=True,
               env={"LOCAL_RANK": None, "KEEP": "x"})  # fmt: skip
    plan = resolve_plan(str(path), env={**node_env(0), "LOCAL_RANK": "3"})
    argv = command(plan)
    assert argv[argv.index("--no-python") + 1 :] == ["./bin/train", "--output_dir", "out"]
    env = child_env(plan)
    assert "LOCAL_RANK" not in env and env["KEEP"] == "x"
    script = run_cli("render", path, "--set", "slurm.partition=low", cwd=tmp_path).stdout
    assert "unset LOCAL_RANK\n" in script and "export KEEP=x\n" in script
    srun = resolve_plan(str(job(tmp_path, entry__launcher="srun", entry__script="/bin/true", entry__program=True)),
                        env={**node_env(0), "SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "2(x2)"})  # fmt: skip
    assert command(srun)[:1] == ["/bin/true"]
    with pytest.raises(UserError):
        load_job(job(tmp_path, entry__launcher="msrun", entry__script="./bin/train", entry__program=True))


def test_an_entry_that_declares_its_checkpoints_resumes_from_them(tmp_path):
    path = job(tmp_path, resume={"dir": "out", "args": ["--resume_from_checkpoint", "{checkpoint}", "--step", "{step}"],
                                 "every": 50})  # fmt: skip
    spec = load_job(path)
    assert spec.resume.dir == str(tmp_path / "out") and spec.requeue.enabled  # requeued like a trainer
    plan = resolve_plan(str(path), env=node_env(0))
    assert command(plan)[-2:] == ["--output_dir", "out"]  # nothing to resume from yet
    for step in (50, 100, 7):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
    (tmp_path / "out" / "logs").mkdir()
    assert start_paths(plan).latest == 100
    assert command(plan)[-4:] == ["--resume_from_checkpoint", str(tmp_path / "out" / "checkpoint-100"), "--step", "100"]
    said = run_cli("validate", path).stdout
    assert "a preemption loses up to 50 steps: it resumes from its own checkpoints in" in said
    assert "resumes from its own checkpoints" in said and "runs once" not in said


def test_validate_says_what_a_preemption_costs_every_entry(tmp_path):
    said = {
        "megatron": run_cli("validate", ROOT / "jobs" / "tiny-vlm.yaml").stdout,
        "fsdp2": run_cli("validate", write(tmp_path, fsdp2_job(tmp_path))).stdout,
        "command once": run_cli("validate", job(tmp_path)).stdout,
        "command requeued": run_cli("validate", job(tmp_path, requeue={"enabled": True})).stdout,
    }
    assert "a preemption loses nothing: it saves on the stop signal" in said["megatron"]
    assert "a preemption loses up to 10 iterations (checkpoint.save_interval)" in said["fsdp2"]
    assert "a preemption loses the whole run: it runs once (declare resume: if it trains)" in said["command once"]
    assert "a preemption starts it again from the beginning" in said["command requeued"]


def test_post_lines_run_in_the_entrys_folder_and_never_change_the_status(tmp_path, capsys):
    spec = load_job(job(tmp_path, post=["echo $HPC_MM_STEP_RC > post.txt", "exit 4"], env={"GONE": None, "X": "1"}))
    assert run_post(spec, returncode=9, status=1) == 1
    assert (tmp_path / "post.txt").read_text() == "9\n"
    assert "the post lines ended with exit code 4; the job keeps its status (1)" in capsys.readouterr().err
    script = run_cli("render", job(tmp_path, post=["true"]), "--set", "slurm.partition=low", cwd=tmp_path).stdout
    assert 'post "$RUN_DIR" --returncode' in script
    with pytest.raises(UserError):
        load_job(job(tmp_path, post=[""]))


def test_yaml_mm_files_are_read_as_yaml(tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text("dataset_param: {basic_parameters: {data_path: x}}\ndataloader_param: {shuffle: true}\n")
    model = tmp_path / "model.yml"
    model.write_text("text_decoder: {num_layers: 2}\n")
    path = Path(write(tmp_path, {"name": "y", "entry": {"script": "pretrain_vlm.py", "workdir": str(tmp_path)},
                                 "mm": {"data": str(data), "model": str(model), "tool": str(data)},
                                 "gpt": {"lr": 1e-5, "train_iters": 10}}))  # fmt: skip
    assert run_cli("validate", path).returncode == 0
    data.write_text("dataset_param: [\n")
    assert "mm.data" in run_cli("validate", path).stderr


def test_save_on_signal_refuses_a_task_trainer_whose_engine_overrides_what_the_adapter_hooks(tmp_path):
    task = tmp_path / "mindspeed_mm" / "fsdp" / "tasks" / "asr"
    task.mkdir(parents=True)
    (task / "train_engine.py").write_text(
        "from mindspeed_mm.fsdp.train.train_engine import TrainEngine\n\n"
        "class AsrEngine(TrainEngine):\n    def train(self):\n        pass\n\n"
        "    def train_step(self, it):\n        pass\n"
    )
    (task / "trainer.py").write_text("")
    spec = fsdp2_job(tmp_path, **{"entry.save_on_signal": True, "entry.workdir": str(tmp_path),
                                  "entry.script": "mindspeed_mm/fsdp/tasks/asr/trainer.py"})  # fmt: skip
    result = run_cli("validate", write(tmp_path, spec))
    assert result.returncode == 2
    assert (
        "entry.save_on_signal: AsrEngine" in result.stderr
        and "overrides TrainEngine.train, train_step" in result.stderr
    )
    assert "entry.save_on_signal" not in run_cli("validate", write(tmp_path, fsdp2_job(tmp_path, **{
        "entry.save_on_signal": True}))).stderr  # the generic trainer: fine  # fmt: skip


def test_the_adapter_refuses_at_start_an_engine_that_overrides_its_hooks(tmp_path):
    """The same refusal on the node, when the engine is defined: one line, exit 2, before training."""
    for package in ("mindspeed_mm", "mindspeed"):
        (tmp_path / package).symlink_to(STANDIN / package)
    task = tmp_path / "tasks"
    task.mkdir()
    (task / "trainer.py").write_text(
        "from mindspeed_mm.fsdp.train.train_engine import TrainEngine\n\n"
        "class Own(TrainEngine):\n    def train_step(self, it):\n        pass\n\nraise SystemExit('must not train')\n"
    )
    adapter = ROOT / "hpc_mm" / "train" / "fsdp2_adapter.py"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(adapter), str(task / "trainer.py"), "c.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 2, result
    assert result.stdout.startswith("error: entry.save_on_signal: __main__.Own overrides TrainEngine.train_step")
    assert TRAINER  # the generic trainer's path, used above through fsdp2_job


def test_a_ray_cluster_forms_across_the_nodes_and_the_driver_runs_once_on_its_head(tmp_path):
    path = job(tmp_path, entry__launcher="ray", entry__script="verl.trainer.main_ppo",
               entry__extra_args=["trainer.save_freq=20"])  # fmt: skip
    head, worker = (command(resolve_plan(str(path), env=node_env(n))) for n in (0, 1))
    assert head[1].endswith("ray_node.py") and head[2] == "head" and worker[2] == "worker"
    assert head[head.index("--address") + 1] == worker[worker.index("--address") + 1]
    assert head[head.index("--num-cpus") + 1] == "2"  # what the node offers Ray: its ranks (CPUs here)
    assert head[head.index("--") + 1 :][-4:] == ["-u", "-m", "verl.trainer.main_ppo", "trainer.save_freq=20"]
    assert worker[-1] == "--"  # no driver on a worker
    with pytest.raises(UserError) as exc:  # the driver under srun on 2 nodes would start twice
        load_job(job(tmp_path, entry__launcher="srun", entry__script="verl.trainer.main_ppo"))
    assert "entry.launcher" in [p.field for p in exc.value.problems]
