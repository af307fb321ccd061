"""Each lr decay style of the built-in trainer against megatron-core's scheduler and the formulas."""

import json
import math
import warnings

import pytest
import torch

from hpc_mm.environments.mpi import free_port

from conftest import JOBS, run_cli

LR, MIN_LR, INIT, WARMUP, DECAY, ITERS, GBS = 1.0e-3, 1.0e-4, 1.0e-5, 5, 25, 30, 4
CHECK_AT = [1, 3, 5, 6, 10, 15, 20, 24, 25, 26, 30]


def formula(style: str, i: int, wsd_style: str = "exponential", wsd_iters: int = 10) -> float:
    """Megatron's documented schedule, in iterations (it counts samples; the ratios are the same)."""
    if i <= WARMUP:
        return INIT + (LR - INIT) * i / WARMUP
    if style == "constant":
        return LR
    if i > DECAY:
        return MIN_LR
    if style == "inverse-square-root":
        return max(MIN_LR, LR * math.sqrt(WARMUP) / math.sqrt(i))
    ratio = (i - WARMUP) / (DECAY - WARMUP)
    if style == "linear":
        coeff = 1 - ratio
    elif style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1)
    else:  # WSD
        start = DECAY - wsd_iters
        if i <= start:
            coeff = 1.0
        else:
            r = (i - start) / wsd_iters
            coeff = {"linear": 1 - r, "cosine": 0.5 * (math.cos(math.pi * r) + 1), "exponential": 2 * 0.5**r - 1}[
                wsd_style
            ]
    return MIN_LR + coeff * (LR - MIN_LR)


def megatron_core(style: str, wsd_style: str, wsd_iters: int) -> dict[int, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = OptimizerParamScheduler(
        opt,
        init_lr=INIT,
        max_lr=LR,
        min_lr=MIN_LR,
        lr_warmup_steps=WARMUP * GBS,
        lr_decay_steps=DECAY * GBS,
        lr_decay_style=style,
        start_wd=0.0,
        end_wd=0.0,
        wd_incr_steps=ITERS * GBS,
        wd_incr_style="constant",
        wsd_decay_steps=wsd_iters * GBS,
        lr_wsd_decay_style=wsd_style,
    )
    out = {}
    for i in range(1, ITERS + 1):
        sched.step(increment=GBS)
        out[i] = opt.param_groups[0]["lr"]
    return out


@pytest.mark.parametrize(
    "style,wsd_style",
    [
        ("constant", "exponential"),
        ("linear", "exponential"),
        ("cosine", "exponential"),
        ("inverse-square-root", "exponential"),
        ("WSD", "exponential"),
        ("WSD", "linear"),
        ("WSD", "cosine"),
    ],
)
def test_schedule_matches_megatron_core(tmp_path, style, wsd_style):
    run_dir = tmp_path / "run"
    result = run_cli(
        "launch",
        JOBS / "tiny-vlm.yaml",
        "--run-dir",
        run_dir,
        "--set",
        "entry.launcher=srun",
        "--set",
        "slurm.nodes=1",
        "--set",
        "distributed.nproc_per_node=1",
        "--set",
        f"distributed.master_port={free_port()}",
        "--set",
        "gpt.micro_batch_size=4",
        "--set",
        f"gpt.global_batch_size={GBS}",
        "--set",
        "gpt.num_workers=0",
        "--set",
        f"gpt.lr={LR}",
        "--set",
        f"gpt.min_lr={MIN_LR}",
        "--set",
        f"gpt.lr_warmup_init={INIT}",
        "--set",
        f"gpt.lr_warmup_iters={WARMUP}",
        "--set",
        f"gpt.lr_decay_iters={DECAY}",
        "--set",
        f"gpt.train_iters={ITERS}",
        "--set",
        f"gpt.lr_decay_style={style}",
        "--set",
        f"gpt.lr_wsd_decay_style={wsd_style}",
        "--set",
        "gpt.lr_wsd_decay_iters=10",
        "--set",
        "checkpoint.save_interval=1000",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    logged = {r["iteration"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    reference = megatron_core(style, wsd_style, 10)
    for i in CHECK_AT:
        assert logged[i] == pytest.approx(reference[i], rel=1e-12, abs=1e-15), (i, logged[i], reference[i])
        assert logged[i] == pytest.approx(formula(style, i, wsd_style), rel=1e-9), (i, logged[i])
