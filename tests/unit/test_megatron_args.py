"""`hpc-mm args` against Megatron's own parser (the shipped core_v0.12.1 option table) and the seed's table."""

import argparse
import json
import shlex

import pytest

from hpc_mm.errors import UserError
from hpc_mm.job.megatron import command_line_backend, resolve_backend
from hpc_mm.job.options import parser as megatron_parser
from hpc_mm.job.options import table

from conftest import JOBS, run_cli


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
    assert (args.micro_batch_size, args.global_batch_size, args.num_workers) == (1, 768, 8)
    assert (args.lr, args.min_lr, args.adam_beta1, args.adam_beta2, args.adam_eps) == (1e-5, 0.0, 0.9, 0.999, 1e-8)
    assert (args.lr_decay_style, args.weight_decay, args.lr_warmup_init, args.lr_warmup_iters) == (
        "cosine",
        0.0,
        0.0,
        0,
    )
    assert (args.clip_grad, args.train_iters, args.seed) == (0.0, 10000, 42)
    # the run's copies of the mm files: what every start of a submitted run reads
    assert args.mm_data == "/tmp/hpc-mm-run/mm/data.json" and args.mm_model == "/tmp/hpc-mm-run/mm/model.json"
    assert args.mm_tool == "/tmp/hpc-mm-run/mm/tool.json"
    assert args.save == args.load == "/tmp/hpc-mm-run/checkpoints" and args.save_interval == 500
    assert args.pretrained_checkpoint.endswith("MindSpeed-MM/ckpt/mm_path/Qwen2-VL-7B-Instruct")
    assert args.distributed_backend == "nccl"  # NPU: MindSpeed maps nccl to hccl
    assert args.bf16 and args.use_distributed_optimizer and args.exit_signal_handler


def test_qwen_args_are_mindspeed_mms_finetune_script(tmp_path):
    """Every argument of MindSpeed-MM 2.2.0's finetune_qwen2vl_7b.sh (GPT_ARGS, MM_ARGS, OUTPUT_ARGS)
    is on the line with the script's value, but the four that break exact resume (and --load,
    which is checkpoint.pretrained here)."""
    args = megatron_parser().parse_args(argv_of(JOBS / "qwen2vl-7b.yaml"))
    script = {
        "context_parallel_algo": "ulysses_cp_algo",
        "tokenizer_type": "NullTokenizer",
        "vocab_size": 152064,
        "seq_length": 1024,
        "make_vocab_size_divisible_by": 1,
        "normalization": "RMSNorm",
        "use_fused_rmsnorm": True,
        "swiglu": True,
        "use_fused_swiglu": True,
        "masked_softmax_fusion": False,
        "lr_warmup_fraction": 0.1,
        "gradient_accumulation_fusion": False,
        "variable_seq_lengths": True,
        "use_flash_attn": True,
        "eval_interval": 10000,
        "eval_iters": 5000,
        "ckpt_format": "torch",
        "log_interval": 1,
    }
    assert {k: getattr(args, k) for k in script} == script
    assert not (args.no_save_optim or args.no_save_rng or args.no_load_optim or args.no_load_rng or args.finetune)


def test_qwen_args_pass_megatron_and_mindspeed_checks():
    """The checks of Megatron core_v0.12.1's validate_args and MindSpeed 2.2.0's that these options
    meet, after MindSpeed-MM fills the model's sizes from text_decoder of --mm-model."""
    args = megatron_parser().parse_args(argv_of(JOBS / "qwen2vl-7b.yaml"))
    decoder = json.loads((JOBS / "qwen2vl-7b" / "model.json").read_text())["text_decoder"]  # what the run copies
    for name in ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings"):
        setattr(args, name, decoder[name])
    megatron_validate(args, world_size=32)
    assert args.max_position_embeddings >= args.seq_length  # Megatron
    assert args.lr_warmup_iters == 0 if args.lr_warmup_fraction is not None else True  # Megatron
    assert args.normalization == "RMSNorm" if args.use_fused_rmsnorm else True  # MindSpeed
    assert args.swiglu if args.use_fused_swiglu else True  # MindSpeed
    assert args.vocab_size is not None if args.tokenizer_type == "NullTokenizer" else True  # Megatron
    assert not (args.bf16 and args.fp16)  # Megatron
    assert len(decoder["pipeline_num_layers"]) == args.pipeline_model_parallel_size  # MindSpeed-MM
    vision = json.loads((JOBS / "qwen2vl-7b" / "model.json").read_text())["image_encoder"]["vision_encoder"]
    assert sum(vision["pipeline_num_layers"]) == vision["num_layers"]  # MindSpeed-MM


def test_seed_defaults_are_passed_explicitly(tmp_path):
    """Megatron's defaults differ (weight decay 0.01, num-workers 2): the seed's must be on the line."""
    job = tmp_path / "j.yaml"
    job.write_text(
        (JOBS / "tiny-vlm.yaml")
        .read_text()
        .replace("weight_decay: 0.01", "")
        .replace("tiny-vlm/", str(JOBS / "tiny-vlm") + "/")
        .replace("num_workers: 1", "")
    )
    argv = argv_of(job)
    assert argv[argv.index("--weight-decay") + 1] == "0.1"
    assert argv[argv.index("--num-workers") + 1] == "1"


@pytest.mark.parametrize(
    "requested,device,runs,on_line",
    [
        ("auto", "npu", "hccl", "nccl"),
        ("auto", "cuda", "nccl", "nccl"),
        ("auto", "cpu", "gloo", "gloo"),
        ("hccl", "npu", "hccl", "nccl"),
        ("gloo", "cuda", "gloo", "gloo"),
    ],
)
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
    sources = {
        flag: table().find(flag).source
        for flag in ("--lr", "--variable-seq-lengths", "--use-fused-rmsnorm", "--mm-data", "--exit-signal-handler")
    }
    assert sources == {
        "--lr": "megatron",
        "--variable-seq-lengths": "mindspeed",
        "--use-fused-rmsnorm": "mindspeed",
        "--mm-data": "mindspeed_mm",
        "--exit-signal-handler": "megatron",
    }
    assert table().find("--use-mcore-models").dest == "deprecated_use_mcore_models"
    assert table().find("persistent_save_interval").dest == "save_interval"  # an alias
    assert table().find("override_opt_param_scheduler").flag == "--override-opt_param-scheduler"


def test_async_save_reaches_megatron_and_needs_torch_dist(tmp_path):
    from hpc_mm.errors import UserError
    from hpc_mm.job.entries import contract
    from hpc_mm.job.jobfile import load_job
    from hpc_mm.job.megatron import training_argv

    job = JOBS / "qwen2vl-7b.yaml"
    spec = load_job(job, ["checkpoint.async_save=true", "gpt.extra={ckpt_format: torch_dist}"])
    argv = training_argv(spec, run_dir=tmp_path, checkpoint_dir=tmp_path, backend="hccl", world_size=32)
    assert "--async-save" in argv
    assert "in the background (Megatron's --async-save" in contract(spec).saves(spec)
    with pytest.raises(UserError, match="checkpoint.async_save: Megatron's --async-save writes only"):
        load_job(job, ["checkpoint.async_save=true", "entry.extra_args=['--ckpt-format', 'torch']"])
    sync = load_job(job, ["gpt.extra={ckpt_format: torch_dist}"])
    assert "--async-save" not in training_argv(sync, run_dir=tmp_path, checkpoint_dir=tmp_path, backend="hccl")
    assert contract(sync).saves(sync).startswith("synchronous")


def test_a_nodes_command_in_a_given_run_directory(tmp_path):
    """`args --node N --run-dir DIR`: node N's command with that run's paths (--save, --run-dir, HPC_MM_RUN_DIR)."""
    import json

    run_dir = tmp_path / "my run"
    said = json.loads(
        run_cli("args", JOBS / "tiny-vlm.yaml", "--node", "1", "--nodes", "2", "--run-dir", run_dir, "--json",
                check=True).stdout
    )  # fmt: skip
    assert said["argv"][said["argv"].index("--save") + 1] == str(run_dir / "checkpoints")
    assert said["env"]["HPC_MM_RUN_DIR"] == str(run_dir) and said["node"] == 1
