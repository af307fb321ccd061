"""`hpc-mm args` against Megatron's own parser (the shipped core_v0.12.1 option table) and the seed's table."""

import argparse
import shlex

import pytest

from conftest import JOBS, run_cli
from hpc_mm.errors import UserError
from hpc_mm.job.megatron import command_line_backend, resolve_backend
from hpc_mm.job.options import parser as megatron_parser
from hpc_mm.job.options import table


def megatron_validate(args, world_size: int) -> None:
    """The checks of Megatron's validate_args() that involve these arguments."""
    model_parallel = args.tensor_model_parallel_size * args.pipeline_model_parallel_size * args.context_parallel_size
    assert world_size % model_parallel == 0
    dp = world_size // model_parallel
    assert args.global_batch_size % (args.micro_batch_size * dp) == 0
    assert args.lr_warmup_iters < (args.lr_decay_iters or args.train_iters)
    assert args.min_lr <= args.lr
    if args.lr_decay_style == "WSD":
        assert args.lr_wsd_decay_iters is not None


def argv_of(job, *extra):
    return shlex.split(run_cli("args", job, "--run-dir", "/tmp/hpc-mm-run", *extra, check=True).stdout)


@pytest.mark.parametrize("job,world", [("qwen2vl-7b.yaml", 32), ("tiny-vlm.yaml", 4)])
def test_megatron_parser_accepts_args(job, world):
    argv = argv_of(JOBS / job)
    if job == "tiny-vlm.yaml":  # the built-in trainer's own three options are not Megatron's
        i = argv.index("--run-dir")
        argv = argv[:i]
    args = megatron_parser().parse_args(argv)
    megatron_validate(args, world)


def test_parser_rejects_what_megatron_rejects():
    parser = megatron_parser()
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--distributed-backend", "hccl"])
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--lr-decay-style", "cosin"])


def test_qwen_args_carry_every_seed_flag_with_file_values():
    args = megatron_parser().parse_args(argv_of(JOBS / "qwen2vl-7b.yaml"))
    assert args.deprecated_use_mcore_models  # Megatron stores --use-mcore-models under this name
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (1, 4)
    assert (args.micro_batch_size, args.global_batch_size, args.num_workers) == (1, 64, 8)
    assert (args.lr, args.min_lr, args.adam_beta1, args.adam_beta2, args.adam_eps) == (1e-5, 1e-6, 0.9, 0.999, 1e-8)
    assert (args.lr_decay_style, args.weight_decay, args.lr_warmup_init, args.lr_warmup_iters) == ("cosine", 0.0, 0.0, 100)
    assert (args.clip_grad, args.train_iters, args.seed) == (0.0, 10000, 42)
    assert args.mm_data.endswith("jobs/qwen2vl-7b/data.json") and args.mm_model.endswith("qwen2vl-7b/model.json")
    assert args.mm_tool.endswith("qwen2vl-7b/tools.json")
    assert args.save == args.load == "/tmp/hpc-mm-run/checkpoints" and args.save_interval == 500
    assert args.distributed_backend == "nccl"  # NPU: MindSpeed maps nccl to hccl
    assert args.bf16 and args.use_distributed_optimizer and args.exit_signal_handler


def test_seed_defaults_are_passed_explicitly(tmp_path):
    """Megatron's defaults differ (weight decay 0.01, num-workers 2): the seed's must be on the line."""
    job = tmp_path / "j.yaml"
    job.write_text((JOBS / "tiny-vlm.yaml").read_text().replace("weight_decay: 0.01", "")
                   .replace("tiny-vlm/", str(JOBS / "tiny-vlm") + "/").replace("num_workers: 1", ""))
    argv = argv_of(job)
    assert argv[argv.index("--weight-decay") + 1] == "0.1"
    assert argv[argv.index("--num-workers") + 1] == "1"


@pytest.mark.parametrize("requested,device,runs,on_line", [
    ("auto", "npu", "hccl", "nccl"), ("auto", "cuda", "nccl", "nccl"), ("auto", "cpu", "gloo", "gloo"),
    ("hccl", "npu", "hccl", "nccl"), ("gloo", "cuda", "gloo", "gloo"),
])
def test_backend_translation(requested, device, runs, on_line):
    assert resolve_backend(requested, device) == runs
    assert command_line_backend(runs) == on_line


def test_backend_refusals():
    with pytest.raises(UserError, match="without MPI"):
        resolve_backend("mpi", "cpu", mpi_available=False)
    with pytest.raises(UserError, match="needs a npu device"):
        resolve_backend("hccl", "cpu")


def test_the_table_is_honest_about_where_options_come_from():
    assert table().versions["megatron"] == "core_v0.12.1"
    sources = {flag: table().find(flag).source for flag in
               ("--lr", "--variable-seq-lengths", "--use-fused-rmsnorm", "--mm-data", "--exit-signal-handler")}
    assert sources == {"--lr": "megatron", "--variable-seq-lengths": "mindspeed", "--use-fused-rmsnorm": "mindspeed",
                       "--mm-data": "mindspeed_mm", "--exit-signal-handler": "megatron"}
    assert table().find("--use-mcore-models").dest == "deprecated_use_mcore_models"
    assert table().find("persistent_save_interval").dest == "save_interval"  # an alias
    assert table().find("override_opt_param_scheduler").flag == "--override-opt_param-scheduler"
