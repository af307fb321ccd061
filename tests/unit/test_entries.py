"""Entry kinds (job/entries/): what each one's command line is, which files go into the run, what
hpc-mm owns of it, and the rules it is checked against; the FSDP2 trainer's YAML and the cases found
by running MindSpeed-MM's own example scripts through hpc-mm."""

import copy
import json
import os
import shlex
from pathlib import Path

import pytest
import yaml
from test_plan import slurm

from hpc_mm.job.entries import contract, recognise
from hpc_mm.job.entries.base import Paths
from hpc_mm.job.jobfile import load_job
from hpc_mm.launch.command import command, msrun_args, write_start_files
from hpc_mm.launch.plan import resolve_plan
from hpc_mm.launch.progress import Progress
from hpc_mm.run.events import Kind, StartKey
from hpc_mm.run.rundir import RunDir

from conftest import JOBS, ROOT, run_cli

TINY = JOBS / "tiny-vlm"
STANDIN = ROOT / "tests" / "fixtures" / "msmm26"
TRAINER = "mindspeed_mm/fsdp/train/trainer.py"


def megatron_job(**changes) -> dict:
    job = {
        "name": "t",
        "entry": {"script": "pretrain_vlm.py", "workdir": str(TINY)},
        "slurm": {"nodes": 2},
        "distributed": {"nproc_per_node": 2},
        "mm": {"data": str(TINY / "data.json"), "model": str(TINY / "model.json"), "tool": str(TINY / "tools.json")},
        "gpt": {"lr": 1.0e-4, "train_iters": 100, "micro_batch_size": 2},
    }
    for key, value in changes.items():
        node = job
        *parts, last = key.split(".")
        for part in parts:
            node = node.setdefault(part, {})
        node[last] = value
    return job


def fsdp2_job(tmp_path, config: dict | None = None, **changes) -> dict:
    trainer = yaml.safe_load((STANDIN / "trainer.yaml").read_text())
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(trainer))
    job = {
        "name": "f",
        "entry": {"script": TRAINER, "workdir": str(STANDIN), "config": str(path)},
        "slurm": {"nodes": 2},
        "distributed": {"nproc_per_node": 2},
        "checkpoint": {"save_interval": 10},
    }
    if config:
        job["config"] = config
    for key, value in changes.items():
        node = job
        *parts, last = key.split(".")
        for part in parts:
            node = node.setdefault(part, {})
        node[last] = value
    return job


def write(tmp_path, job, name="job.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return str(path)


def validate(tmp_path, job, *extra):
    return run_cli("validate", write(tmp_path, job), *extra)


def refused(tmp_path, job, field, words=""):
    result = validate(tmp_path, job)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), result.stderr
    assert any(line.startswith(f"error: {field}") and words in line for line in lines), result.stderr
    return result


def accepted(tmp_path, job, *extra):
    result = validate(tmp_path, job, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# ---------------------------------------------------------------- kinds
@pytest.mark.parametrize(
    "script,kind",
    [
        ("pretrain_vlm.py", "megatron"),
        ("pretrain_sora.py", "megatron"),
        ("pretrain_transformers.py", "megatron"),
        ("posttrain_qwen2vl_dpo.py", "megatron"),
        ("pretrain_omni.py", "megatron"),
        ("hpc_mm.train", "megatron"),
        ("mindspeed_mm/fsdp/train/trainer.py", "fsdp2"),
        ("/opt/MindSpeed-MM/mindspeed_mm/fsdp/tasks/funasr/trainer.py", "fsdp2"),
        ("inference_sora.py", "command"),
        ("inference_vlm.py", "command"),
        ("evaluate_vlm.py", "command"),
        ("examples/qwen2vl/qwen2vl_convert_to_mm_ckpt.py", "command"),
    ],
)
def test_kind_is_recognised_from_the_script(script, kind):
    assert recognise(script) == kind


def test_a_command_needs_no_training_keys_and_is_not_requeued(tmp_path):
    job = {
        "name": "infer",
        "entry": {"script": "inference_sora.py", "workdir": str(TINY), "extra_args": ["--prompt", "a cat"]},
        "slurm": {"nodes": 1},
    }
    accepted(tmp_path, job)
    spec = load_job(write(tmp_path, job))
    assert spec.entry.kind == "command" and spec.requeue.enabled is False
    argv = contract(spec).argv(spec, Paths(tmp_path, tmp_path / "ck"), "gloo", 1, 30)
    assert argv == ["--prompt", "a cat"]  # no --save/--load, no Megatron flags
    assert contract(spec).train_iters(spec) is None


def test_training_keys_are_required_for_megatron_entries(tmp_path):
    job = megatron_job()
    del job["gpt"]["lr"]
    refused(tmp_path, job, "gpt.lr", "required")


# ---------------------------------------------------------------- the FSDP2 trainer
def test_fsdp2_job_validates_and_shows_the_trainers_figures(tmp_path):
    result = accepted(tmp_path, fsdp2_job(tmp_path))
    # the stand-in's YAML: micro batch 2, accumulation 2, DP = world 4
    assert "world size 4 = 2 nodes x 2, DP 4, global batch 16, gradient accumulation 2" in result.stdout
    assert "does not save" in result.stderr or "not on a stop signal" in result.stdout
    assert "a preemption loses up to 10 iterations (checkpoint.save_interval)" in result.stdout


@pytest.mark.parametrize(
    "config,field,words",
    [
        ({"training": {"lr": "fast"}}, "config.training.lr", "not a number"),
        ({"training": {"optimizer": "adam"}}, "config.training.optimizer", "not one of"),
        (
            {"training": {"quantization_plan": {"recipe_nam": "mxfp8"}}},
            "config.training.quantization_plan.recipe_nam",
            "refuses unknown keys",
        ),
        ({"training": {"save": "/elsewhere"}}, "config.training.save", "checkpoint.dir"),
        ({"training": {"train_iters": 5}}, "config.training.train_iters", "gpt.train_iters"),
        ({"parallel": {"ulysses_parallel_size": 3}}, "config.parallel", "not divisible"),
        ({"parallel": {"data_parallel_size": 2}}, "config.parallel.data_parallel_size", "world size / "),
        ({"parallel": {"fully_shard_parallel_size": 3}}, "config.parallel.fully_shard_parallel_size", "divide"),
        ({"parallel": {"tensor_parallel_size": 2}}, "config.parallel.tensor_parallel_size", "supports only 1"),
        ({"parallel": {"ring_attention_size": 2}}, "config.parallel.ring_attention_size", "NPUs"),
    ],
)
def test_fsdp2_config_errors(tmp_path, config, field, words):
    refused(tmp_path, fsdp2_job(tmp_path, config), field, words)


def test_unknown_trainer_key_is_a_warning_with_a_did_you_mean(tmp_path):
    result = accepted(tmp_path, fsdp2_job(tmp_path, {"training": {"lr_decay_stlye": "cosine"}}))
    assert "warning: config.training.lr_decay_stlye" in result.stderr and "lr_decay_style" in result.stderr


def test_set_overrides_a_trainer_key(tmp_path):
    path = write(tmp_path, fsdp2_job(tmp_path))
    spec = load_job(path, ["config.training.lr=2.0e-5"])
    resolved = contract(spec).resolved(spec, Paths(tmp_path / "run", tmp_path / "run" / "checkpoints"))
    assert resolved["training"]["lr"] == 2.0e-5
    assert run_cli("validate", path, "--set", "config.training.lr=abc").returncode == 2


def test_fsdp2_resolved_yaml_owns_save_load_interval_and_iterations(tmp_path):
    release = tmp_path / "release-weights"
    job = fsdp2_job(tmp_path, **{"checkpoint.pretrained": str(release), "gpt.train_iters": 40})
    spec = load_job(write(tmp_path, job))
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
    entry = contract(spec)
    first = entry.resolved(spec, Paths(run, ckpt, None))["training"]
    assert (first["save"], first["load"], first["save_interval"], first["train_iters"]) == (
        str(ckpt),
        str(release),
        10,
        40,
    )
    again = entry.resolved(spec, Paths(run, ckpt, 20))["training"]  # the run has its own checkpoint now
    assert again["load"] == str(ckpt) and again["no_load_optim"] is False and again["no_load_rng"] is False
    assert entry.argv(spec, Paths(run, ckpt), "gloo", 4, 30) == [str(run / "config" / "trainer.yaml")]


def test_fsdp2_saves_in_the_background_with_its_own_save_async(tmp_path):
    spec = load_job(write(tmp_path, fsdp2_job(tmp_path, **{"checkpoint.async_save": True})))
    entry, run = contract(spec), tmp_path / "run"
    assert entry.resolved(spec, Paths(run, run / "checkpoints", None))["training"]["save_async"] is True
    assert "training.save_async" in entry.saves(spec)
    sync = load_job(write(tmp_path, fsdp2_job(tmp_path)))
    assert "save_async" not in contract(sync).resolved(sync, Paths(run, run / "checkpoints", None))["training"]


def test_start_files_are_written_into_the_run(tmp_path):
    path = write(tmp_path, fsdp2_job(tmp_path, **{"gpt.train_iters": 30}))
    run = tmp_path / "run"
    plan = resolve_plan(path, [], run, env=slurm(0))
    write_start_files(plan)
    written = yaml.safe_load((run / "config" / "trainer.yaml").read_text())
    assert written["training"]["train_iters"] == 30 and written["training"]["save"] == str(plan.checkpoint_dir)
    cmd = command(plan, 30)
    assert cmd[-2:] == [TRAINER, str(run / "config" / "trainer.yaml")] or cmd[-1] == str(run / "config/trainer.yaml")


def test_save_on_signal_runs_the_adapter_and_is_pinned(tmp_path):
    spec = load_job(write(tmp_path, fsdp2_job(tmp_path, **{"entry.save_on_signal": True})))
    target = contract(spec).target(spec)
    assert target[0].endswith("hpc_mm/train/fsdp2_adapter.py") and target[1] == TRAINER
    refused(tmp_path, fsdp2_job(tmp_path, **{"entry.mindspeed_mm": "2.3.0"}), "entry.mindspeed_mm", "no FSDP2 trainer")
    refused(tmp_path, megatron_job(**{"entry.save_on_signal": True}), "entry.save_on_signal", "FSDP2")


def test_shipped_jobs_validate_against_the_shipped_tables():
    for job in ("qwen3vl-30b.yaml", "wan2.1-t2v-14b.yaml", "qwen2vl-7b.yaml"):
        result = run_cli("validate", JOBS / job)
        assert result.returncode == 0, result.stdout + result.stderr
        assert not [line for line in result.stderr.splitlines() if "config." in line], result.stderr


# ---------------------------------------------------------------- args is what launch runs
@pytest.mark.parametrize(
    "overrides",
    [[], ["fault.hang_detection=false"], ["fault.collective_timeout_minutes=600"]],
    ids=["default", "no-hang-detection", "timeout-set"],
)
def test_args_is_exactly_what_launch_runs(tmp_path, overrides):
    path = write(tmp_path, megatron_job())
    run = tmp_path / "run"
    sets = [a for o in overrides for a in ("--set", o)]
    printed = run_cli("args", path, "--run-dir", run, *sets)
    assert printed.returncode == 0, printed.stderr
    run_cli("render", path, "--run-dir", run, *sets, "-o", os.devnull, check=True)  # as submit writes it
    plan = resolve_plan(str(run), [], None, env={**slurm(1, nodes=2), "HPC_MM_DEVICE": "cpu"})
    from hpc_mm.launch.watchdog import collective_timeout

    launched = command(plan, collective_timeout(plan.spec.fault, plan.run))
    assert launched[-len(shlex.split(printed.stdout)) :] == shlex.split(printed.stdout)
    if "600" in str(overrides):
        assert "--distributed-timeout-minutes 600" in printed.stdout


# ---------------------------------------------------------------- found by running MindSpeed-MM 2.2.0's examples
def model_file(tmp_path, **parts) -> str:
    model = json.loads((TINY / "model.json").read_text())
    for dotted, values in parts.items():
        node = model
        for key in dotted.split("."):
            node = node.setdefault(key, {})
        node.update(values)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    return str(path)


def test_internvl2_vpp_layout_is_accepted(tmp_path):
    """InternVL2 8B's VPP example: model_8B_vpp.json with PP 4 and VPP 3."""
    model = model_file(
        tmp_path,
        text_decoder={"num_layers": 32, "pipeline_num_layers": [[0, 0, 0, 1], [4, 4, 4, 4], [4, 4, 4, 3]]},
        **{"image_encoder.vision_encoder": {"num_layers": 24, "pipeline_num_layers": [[6, 7, 7, 4], [0] * 4, [0] * 4]}},
    )
    job = megatron_job(
        **{
            "mm.model": model,
            "gpt.pipeline_model_parallel_size": 4,
            "slurm.nodes": 4,
            "gpt.extra": {"virtual_pipeline_model_parallel_size": 3},
        }
    )
    accepted(tmp_path, job)
    job["gpt"]["extra"]["virtual_pipeline_model_parallel_size"] = 2
    refused(tmp_path, job, "mm.model", "3 virtual stages")


def test_decoder_stages_with_no_layers_are_accepted(tmp_path):
    """InternVL2 76B: text_decoder [0, 0, 0, 1, 5, 6, 7, ...] over 16 stages."""
    layers = [0, 0, 0, 1, 5, 6, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6]
    model = model_file(tmp_path, text_decoder={"num_layers": 80, "pipeline_num_layers": layers})
    job = megatron_job(**{"mm.model": model, "gpt.pipeline_model_parallel_size": 16, "slurm.nodes": 8})
    accepted(tmp_path, job)


def test_sora_predictor_and_omni_audio_layouts_are_checked(tmp_path):
    predictor = model_file(tmp_path, predictor={"num_layers": 40, "pipeline_num_layers": [10, 10, 10]})
    job = megatron_job(**{"mm.model": predictor, "gpt.pipeline_model_parallel_size": 4, "slurm.nodes": 4})
    refused(tmp_path, job, "mm.model", "predictor.pipeline_num_layers")
    (tmp_path / "model.json").unlink()
    empty = model_file(tmp_path, predictor={"num_layers": 30, "pipeline_num_layers": [10, 10, 10, 0]})
    job["mm"]["model"] = empty
    refused(tmp_path, job, "mm.model", "no layers")
    (tmp_path / "model.json").unlink()
    audio = model_file(tmp_path, **{"audio_encoder.audio_encoder": {"num_layers": 32, "pipeline_num_layers": [32]}})
    job["mm"]["model"] = audio
    refused(tmp_path, job, "mm.model", "audio_encoder.audio_encoder.pipeline_num_layers")
    # wan2.1's own example: four predictor stages, PP 1: MindSpeed-MM reads the layout only with PP > 1
    (tmp_path / "model.json").unlink()
    job["mm"]["model"] = model_file(tmp_path, predictor={"num_layers": 40, "pipeline_num_layers": [10] * 4})
    job["gpt"]["pipeline_model_parallel_size"], job["slurm"]["nodes"] = 1, 2
    accepted(tmp_path, job)


@pytest.mark.parametrize(
    "extra,field,words",
    [
        ({"expert_model_parallel_size": 3}, "gpt.extra.expert_model_parallel_size", "not divisible by expert TP"),
        ({"expert_model_parallel_size": 2, "num_experts": 5}, "gpt.extra.num_experts", "not divisible"),
    ],
)
def test_expert_parallelism_is_in_the_arithmetic(tmp_path, extra, field, words):
    job = megatron_job(**{"slurm.nodes": 8, "distributed.nproc_per_node": 4, "gpt.extra": extra})  # 32 ranks
    refused(tmp_path, job, field, words)


def test_multi_value_option_given_as_one_string_is_several_words(tmp_path):
    job = megatron_job(**{"gpt.extra": {"lora_target_modules": "linear_qkv linear_proj"}})
    out = run_cli("args", write(tmp_path, job)).stdout
    assert "--lora-target-modules linear_qkv linear_proj" in out
    assert "'linear_qkv linear_proj'" not in out


def test_missing_checkout_with_the_default_tool_is_a_warning(tmp_path):
    job = megatron_job(**{"entry.workdir": str(tmp_path / "on-the-compute-nodes-only")})
    del job["mm"]["tool"]
    result = accepted(tmp_path, job)
    assert "warning: entry.workdir" in result.stderr


def test_load_in_gpt_extra_points_at_checkpoint_pretrained(tmp_path):
    result = refused(tmp_path, megatron_job(**{"gpt.extra": {"load": "/ckpt/converted"}}), "gpt.extra.load")
    assert "checkpoint.pretrained" in result.stderr and "set checkpoint.dir" not in result.stderr


def test_msrun_is_a_launcher(tmp_path):
    path = write(tmp_path, megatron_job(**{"entry.launcher": "msrun"}))
    result = run_cli("validate", path)
    assert result.returncode == 0 and "did you mean" not in result.stderr, result.stderr
    plan = resolve_plan(path, [], tmp_path / "run", env=slurm(1, nodes=2))
    args = msrun_args(plan)
    assert args[:10] == [
        "--worker_num",
        "4",
        "--local_worker_num",
        "2",
        "--master_addr",
        "n1",
        "--master_port",
        str(plan.master_port),
        "--node_rank",
        "1",
    ]
    assert "--join=True" in args and any(a.startswith("--log_dir=") for a in args)
    assert command(plan)[0] == "msrun" and plan.mode == "agent"


def test_pretrain_transformers_fsdp2_config_is_copied_into_the_run(tmp_path):
    settings = tmp_path / "fsdp2_config.yaml"
    settings.write_text("sharding_size: auto\n")
    job = megatron_job(**{"entry.script": "pretrain_transformers.py", "entry.config": str(settings)})
    run = tmp_path / "run"
    result = run_cli("render", write(tmp_path, job), "--run-dir", run)
    assert result.returncode == 0, result.stderr
    assert (run / "config" / "fsdp2_config.yaml").read_text() == "sharding_size: auto\n"
    assert f"--fsdp2-config-path {run / 'config' / 'fsdp2_config.yaml'}" in run_cli("args", run / "job.yaml").stdout


# ---------------------------------------------------------------- progress from the trainer's log lines
def test_fsdp2_log_lines_are_progress(tmp_path):
    run = RunDir(tmp_path)
    key = StartKey("7", 0)
    clock = iter(range(100, 200))
    p = Progress(run, key, tmp_path / "ck", "/weights", clock=lambda: float(next(clock)), save_interval=5)
    p.feed("Loaded checkpoint from /weights/release")
    line = (
        " [2026-08-01 10:00:0{i}] iteration        {i}/      10 | consumed samples:           {s} | elapsed time "
        "per iteration (ms): 812.5 | learning rate: 1.000000E-05 | global batch size:    16 | loss: 2.5E+00 | "
        "grad norm: 1.000 |"
    )
    for i in range(1, 6):
        p.feed(line.format(i=i, s=16 * i))
    assert p.saving == {5: 105.0}  # the save follows iteration 5's line
    p.feed(f"Saved checkpoint to {tmp_path}/ck/iter_0000005")
    events = run.reread().events()
    assert [(e.kind, e.iteration) for e in events] == [(Kind.RESUMED, 0), (Kind.CHECKPOINT, 5)]
    assert events[0].get("source") == "pretrained" and events[1].get("reason") == "interval"
    rows = run.metrics()
    assert [r.iteration for r in rows] == [1, 2, 3, 4, 5] and rows[0].loss == 2.5 and rows[0].global_batch_size == 16


def test_a_tracker_written_in_place_is_repaired(tmp_path):
    from hpc_mm.run import checkpoints

    for it in (10, 20):
        folder = tmp_path / f"iter_{it:07d}"
        folder.mkdir()
        (folder / "__0_0.distcp").write_bytes(b"x" * 10)
        (folder / ".metadata").write_bytes(b"m")
    (tmp_path / "iter_0000030").mkdir()
    (tmp_path / "iter_0000030" / "__0_0.distcp").write_bytes(b"x")  # cut short: no .metadata
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("")  # truncated by the stop
    assert checkpoints.latest_whole(tmp_path) == 20
    said = checkpoints.repair_tracker(tmp_path)
    assert "names 20" in said and (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "20"
    assert checkpoints.repair_tracker(tmp_path) is None


def test_the_lost_iterations_are_counted(tmp_path):
    from hpc_mm.run.events import lost_iterations

    assert lost_iterations(47, 40) == 7 and lost_iterations(5, None) == 5 and lost_iterations(None, 3) == 0
    assert lost_iterations(40, 40) == 0


def test_copy_of_config_is_in_the_run_and_the_job_points_at_it(tmp_path):
    path = write(tmp_path, fsdp2_job(tmp_path))
    run = tmp_path / "run"
    assert run_cli("render", path, "--run-dir", run).returncode == 0
    recorded = yaml.safe_load((run / "job.yaml").read_text())
    assert recorded["entry"]["config"] == str(run / "config" / "trainer-source.yaml")
    assert (run / "config" / "trainer-source.yaml").is_file()
    # the original may change or go: the run reads its copy
    Path(tmp_path / "trainer.yaml").unlink()
    assert run_cli("validate", run / "job.yaml").returncode == 0
    assert copy.deepcopy(recorded)["entry"]["kind"] == "fsdp2"


def test_the_adapter_refuses_a_trainer_it_was_not_written_for(tmp_path):
    """A TrainEngine whose loop is not 26.0.0/26.1.0's: one line, exit 2, before anything runs."""
    import subprocess
    import sys

    engine = tmp_path / "mindspeed_mm" / "fsdp" / "train"
    engine.mkdir(parents=True)
    for folder in (tmp_path / "mindspeed_mm", tmp_path / "mindspeed_mm" / "fsdp", engine):
        (folder / "__init__.py").write_text("")
    (engine / "train_engine.py").write_text(
        "class TrainEngine:\n    def train_step(self, it):\n        pass\n\n"
        "    def train(self):\n"
        "        for step in range(self.args.training.max_steps):\n"
        "            self.train_step(None)\n"
    )
    (engine / "trainer.py").write_text("raise SystemExit('the trainer must not start')\n")
    adapter = ROOT / "hpc_mm" / "train" / "fsdp2_adapter.py"
    result = subprocess.run(
        [sys.executable, str(adapter), str(engine / "trainer.py"), "c.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result
    assert result.stdout.startswith("error: entry.save_on_signal: TrainEngine.train is not the loop")
    assert len(result.stdout.strip().splitlines()) == 1 and "Traceback" not in result.stderr
