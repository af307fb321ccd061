"""Hostile and careless job files, one table per class of defect, each run through the real CLI
(`validate`, `args`, `render`, `submit --dry-run`): exit 2, `error:` lines only, one naming the
field, no traceback; and the valid variants of each class still accepted."""

import contextlib
import copy
import os
import subprocess
import sys
import threading

import pytest
import yaml

from conftest import HPC_MM, JOBS, setting
from conftest import cli_in_process as cli

TINY = JOBS / "tiny-vlm"
COMMANDS = [["validate"], ["args"], ["render", "-o", os.devnull], ["submit", "--dry-run"]]


def base_job() -> dict:
    return {
        "name": "t",
        "slurm": {"nodes": 2},
        "distributed": {"nproc_per_node": 2},
        "mm": {"data": str(TINY / "data.json"), "model": str(TINY / "model.json"), "tool": str(TINY / "tools.json")},
        "gpt": {"lr": 1.0e-4, "train_iters": 100, "micro_batch_size": 2},
    }


def job_file(tmp_path, job, extra_text: str = "") -> str:
    path = tmp_path / "job.yaml"
    path.write_text((job if isinstance(job, str) else yaml.safe_dump(job, sort_keys=False)) + extra_text)
    return str(path)


def refused_everywhere(tmp_path, path, field, words="", extra=()):
    for command in COMMANDS:
        rc, out, err = cli(*command[:1], path, *extra, *command[1:], "--run-dir", tmp_path / "run")
        lines = err.strip().splitlines()
        assert rc == 2, (command, out, err)
        assert lines and all(line.startswith(("error: ", "warning: ")) for line in lines), (command, err)
        assert any(line.startswith("error: ") and field in line and words in line for line in lines), (command, err)
        assert "Traceback" not in err and not (tmp_path / "run").exists()


def accepted_everywhere(tmp_path, path, extra=()):
    for command in COMMANDS:
        rc, out, err = cli(*command[:1], path, *extra, *command[1:], "--run-dir", tmp_path / f"run{command[0]}")
        assert rc == 0, (command, err)


def text_job(lines: str) -> str:
    """A job file written as text, for what yaml.safe_dump cannot produce (unquoted YAML 1.1)."""
    return (
        f"name: t\nslurm:\n  nodes: 2\ndistributed:\n  nproc_per_node: 2\nmm:\n  data: {TINY}/data.json\n"
        f"  model: {TINY}/model.json\n  tool: {TINY}/tools.json\n" + lines
    )


GPT = "gpt:\n  lr: 1.0e-4\n  train_iters: 100\n  micro_batch_size: 2\n"

# ---------------------------------------------------------------- zero where a divisor is expected
ZEROS = [
    ("slurm.nodes", 0),
    ("distributed.nnodes", 0),
    ("distributed.nproc_per_node", 0),
    ("gpt.micro_batch_size", 0),
    ("gpt.tensor_model_parallel_size", 0),
    ("gpt.pipeline_model_parallel_size", 0),
    ("gpt.context_parallel_size", 0),
    ("gpt.gradient_accumulation_steps", 0),
    ("gpt.global_batch_size", 0),
    ("gpt.tensor_model_parallel_size", -2),
]


@pytest.mark.parametrize("key,value", ZEROS, ids=[f"{k}={v}" for k, v in ZEROS])
def test_zero_divisors(tmp_path, key, value):
    job = setting(key, value)(base_job())
    if key == "distributed.nnodes":
        job["slurm"].pop("nodes")
    refused_everywhere(tmp_path, job_file(tmp_path, job), key, "positive")


# ---------------------------------------------------------------- duplicate keys
DUPLICATES = [
    ("second-lr", text_job("gpt:\n  lr: 1.0e-4\n  train_iters: 100\n  lr: 1.0\n"), "gpt.lr", "lines 11 and 13"),
    ("second-gpt-section", text_job(GPT + "gpt:\n  lr: 2.0\n"), "gpt", "lines 10 and 14"),
    ("env-twice", text_job(GPT + "env:\n  A: '1'\n  A: '2'\n"), "env.A", "given twice"),
    ("quoted-and-plain", text_job(GPT + "name: u\n"), "name", "lines 1 and 14"),
]


@pytest.mark.parametrize("text,field,words", [d[1:] for d in DUPLICATES], ids=[d[0] for d in DUPLICATES])
def test_duplicate_keys(tmp_path, text, field, words):
    refused_everywhere(tmp_path, job_file(tmp_path, text), field, words)


# ---------------------------------------------------------------- non-finite numbers
NON_FINITE = [
    ("lr-nan", GPT.replace("lr: 1.0e-4", "lr: .nan"), "gpt.lr", ()),
    ("min-lr-inf", GPT + "  min_lr: .inf\n", "gpt.min_lr", ()),
    ("clip-overflow", GPT + "  clip_grad: 1e400\n", "gpt.clip_grad", ()),
    ("beta-minus-inf", GPT + "  adam_beta1: -.inf\n", "gpt.adam_beta1", ()),
    ("set-lr-nan", GPT, "gpt.lr", ("--set", "gpt.lr=nan")),
    ("set-clip-huge", GPT, "gpt.clip_grad", ("--set", "gpt.clip_grad=1e999")),
    ("extra-float", GPT + "  extra:\n    lr_warmup_fraction: .nan\n", "gpt.extra.lr_warmup_fraction", ()),
    ("extra-list", GPT + "  extra:\n    mrope_section: [16, .inf]\n", "gpt.extra.mrope_section", ()),
]


@pytest.mark.parametrize("gpt,field,extra", [c[1:] for c in NON_FINITE], ids=[c[0] for c in NON_FINITE])
def test_non_finite_numbers(tmp_path, gpt, field, extra):
    refused_everywhere(tmp_path, job_file(tmp_path, text_job(gpt)), field, "finite", extra)


# ---------------------------------------------------------------- YAML 1.1 times and octal numbers
AMBIGUOUS = [
    ("time-sexagesimal", GPT + "slurm:\n  nodes: 2\n  time: 1:00:00\n", "slurm.time", "quote it"),
    ("time-minutes-seconds", GPT + "slurm:\n  nodes: 2\n  time: 30:00\n", "slurm.time", "1800"),
    ("time-out-of-range", GPT + "slurm:\n  nodes: 2\n  time: '1:99:99'\n", "slurm.time", "out of range"),
    ("time-day-hours", GPT + "slurm:\n  nodes: 2\n  time: '1-25'\n", "slurm.time", "25 hours"),
    ("octal-seed", GPT + "  seed: 010\n", "gpt.seed", "octal number 8"),
    ("octal-in-extra", GPT + "  extra:\n    eval_interval: 0100\n", "gpt.extra.eval_interval", "octal"),
    ("sexagesimal-env", GPT + "env:\n  WINDOW: 1:30\n", "env.WINDOW", "quote it"),
]


@pytest.mark.parametrize("lines,field,words", [c[1:] for c in AMBIGUOUS], ids=[c[0] for c in AMBIGUOUS])
def test_yaml_11_numbers(tmp_path, lines, field, words):
    text = (
        text_job(lines).replace("slurm:\n  nodes: 2\n", "", 1)
        if "slurm:\n  nodes: 2\n  time" in lines
        else text_job(lines)
    )
    refused_everywhere(tmp_path, job_file(tmp_path, text), field, words)


@pytest.mark.parametrize(
    "value,extra",
    [
        ('"1:00:00"', ()),
        ("'2-12'", ()),
        ("90", ()),
        ('"1-00:30:00"', ()),
        ('"00:20:00"', ("--set", "slurm.time=1:00:00")),
    ],
)
def test_slurm_times_written_as_text_are_accepted(tmp_path, value, extra):
    path = job_file(
        tmp_path, text_job(GPT + f"slurm:\n  nodes: 2\n  time: {value}\n").replace("slurm:\n  nodes: 2\n", "", 1)
    )
    accepted_everywhere(tmp_path, path, extra)
    rc, out, _ = cli("render", path, "--run-dir", tmp_path / "r", *extra)
    expected = "1:00:00" if extra else value.strip("'\"")
    assert f"#SBATCH --time={expected}\n" in out


# ---------------------------------------------------------------- flags hpc-mm owns
OWNED = [
    (
        "extra-args-save",
        {"entry": {"script": "pretrain_vlm.py", "extra_args": ["--save", "/elsewhere"]}},
        "entry.extra_args[0]",
        "checkpoint.dir",
    ),
    (
        "extra-args-lr-equals",
        {"entry": {"script": "pretrain_vlm.py", "extra_args": ["--bf16", "--lr=1e-3"]}},
        "entry.extra_args[1]",
        "gpt.lr",
    ),
    (
        "extra-args-backend",
        {"entry": {"script": "pretrain_vlm.py", "extra_args": ["--distributed-backend", "gloo"]}},
        "entry.extra_args[0]",
        "distributed.backend",
    ),
    (
        "extra-args-alias",
        {"entry": {"script": "pretrain_vlm.py", "extra_args": ["--persistent-save-interval", "5"]}},
        "entry.extra_args[0]",
        "checkpoint.save_interval",
    ),
    # `--load` is where a run resumes; converted weights are checkpoint.pretrained (checkpoint.dir
    # there would overwrite their tracker)
    ("gpt-extra-load", {"gpt": {"extra": {"load": "/elsewhere"}}}, "gpt.extra.load", "checkpoint.pretrained"),
    ("gpt-extra-dashes", {"gpt": {"extra": {"train-iters": 5}}}, "gpt.extra.train-iters", "gpt.train_iters"),
    (
        "gpt-extra-value-is-a-flag",
        {"gpt": {"extra": {"mrope_section": [16, "--save", "/x"]}}},
        "gpt.extra.mrope_section",
        "option of its own",
    ),
]


@pytest.mark.parametrize("change,field,words", [c[1:] for c in OWNED], ids=[c[0] for c in OWNED])
def test_flags_hpc_mm_owns(tmp_path, change, field, words):
    job = base_job()
    for section, values in change.items():
        job.setdefault(section, {}).update(copy.deepcopy(values))
    refused_everywhere(tmp_path, job_file(tmp_path, job), field, words)


# ---------------------------------------------------------------- ranges, agreement, the field the user wrote
RANGES = [
    ("node-rank-vs-slurm-nodes", {"distributed": {"nproc_per_node": 2, "node_rank": 2}}, "distributed.node_rank", ()),
    (
        "node-rank-vs-flag",
        {"distributed": {"nproc_per_node": 2, "node_rank": 3}},
        "distributed.node_rank",
        ("--nodes", "3"),
    ),
    ("nodes-disagree", {"slurm": {"nodes": 1}, "distributed": {"nproc_per_node": 2, "nnodes": 4}}, "slurm.nodes", ()),
    (
        "backend-for-another-device",
        {"slurm": {"gres": "npu:2"}, "distributed": {"nproc_per_node": 2, "backend": "nccl"}},
        "distributed.backend",
        (),
    ),
    (
        "backend-for-declared-cpu",
        {"distributed": {"nproc_per_node": 2, "device": "cpu", "backend": "hccl"}},
        "distributed.backend",
        (),
    ),
    (
        "srun-auto-without-gres",
        {"entry": {"launcher": "srun"}, "distributed": {"nproc_per_node": "auto"}},
        "distributed.nproc_per_node",
        (),
    ),
    ("pp-breaks-the-world", {"gpt": {"pipeline_model_parallel_size": 3}}, "gpt.pipeline_model_parallel_size", ()),
    ("cp-breaks-the-world", {"gpt": {"context_parallel_size": 3}}, "gpt.context_parallel_size", ()),
    ("tp-breaks-the-world", {"gpt": {"tensor_model_parallel_size": 3}}, "gpt.tensor_model_parallel_size", ()),
]


@pytest.mark.parametrize("change,field,extra", [c[1:] for c in RANGES], ids=[c[0] for c in RANGES])
def test_ranges_and_agreement(tmp_path, change, field, extra):
    job = base_job()
    for section, values in change.items():
        job.setdefault(section, {}).update(values)
    if change.get("gpt", {}).get("pipeline_model_parallel_size"):
        job["mm"]["model"] = str(_model_with_stages(tmp_path, 3))
    refused_everywhere(tmp_path, job_file(tmp_path, job), field, "", extra)


def test_validate_agrees_with_args_on_the_ascend_job(tmp_path):
    rc, _, err = cli("validate", JOBS / "qwen2vl-7b.yaml", "--set", "distributed.backend=nccl")
    assert rc == 2 and err.startswith(
        "error: distributed.backend: nccl needs a cuda device, but the job runs on npu"
    ), err


def _model_with_stages(tmp_path, stages: int):
    import json

    model = json.loads((TINY / "model.json").read_text())
    model["text_decoder"].update(num_layers=stages, pipeline_num_layers=[1] * stages)
    path = tmp_path / "model-pp.json"
    path.write_text(json.dumps(model))
    return path


# ---------------------------------------------------------------- Megatron's option table
TABLE = [
    ("misspelt-option", {"use_flash_atn": True}, "gpt.extra.use_flash_atn", "did you mean 'use_flash_attn'"),
    ("wrong-type", {"seq_length": "long"}, "gpt.extra.seq_length", "not an integer"),
    ("not-a-choice", {"normalization": "RMSNorms"}, "gpt.extra.normalization", "choices"),
    ("switch-with-a-number", {"bf16": 1}, "gpt.extra.bf16", "switch"),
    ("one-value-not-a-list", {"seq_length": [1, 2]}, "gpt.extra.seq_length", "one value"),
]


@pytest.mark.parametrize("extra,field,words", [c[1:] for c in TABLE], ids=[c[0] for c in TABLE])
def test_gpt_extra_against_megatrons_table(tmp_path, extra, field, words):
    job = base_job()
    job["entry"] = {"script": "pretrain_vlm.py"}
    job["gpt"]["extra"] = extra
    refused_everywhere(tmp_path, job_file(tmp_path, job), field, words)


def test_unknown_option_far_from_any_is_a_warning(tmp_path):
    job = base_job()
    job["entry"] = {"script": "pretrain_vlm.py"}
    job["gpt"]["extra"] = {"my_site_flag": 3, "use_flash_attn": True, "mrope_section": [16, 24, 24]}
    rc, out, err = cli("args", job_file(tmp_path, job))
    assert rc == 0 and err.startswith("warning: gpt.extra.my_site_flag: is not an option of megatron core_v0.12.1")
    assert "--my-site-flag 3" in out and "--use-flash-attn" in out and "--mrope-section 16 24 24" in out


# ---------------------------------------------------------------- valid variants stay valid
def test_anchors_merge_keys_strings_and_spaces_are_accepted(tmp_path):
    folder = tmp_path / "my jobs (v2)"
    folder.mkdir()
    for name in ("data", "model", "tools"):
        (folder / f"{name}.json").write_text((TINY / f"{name}.json").read_text())
    text = (
        f'name: t\nslurm: {{nodes: 2, time: "0:30:00"}}\ndistributed: {{nproc_per_node: "2"}}\n'
        f"mm: {{data: '{folder}/data.json', model: '{folder}/model.json', tool: '{folder}/tools.json'}}\n"
        'defaults: &defaults\n  lr: "1.0e-4"\n  train_iters: "100"\n'
        "gpt:\n  <<: *defaults\n  micro_batch_size: 2\n  min_lr: 1e-6\n"
    )
    text = text.replace("defaults: &defaults\n  lr", "x-defaults: &defaults\n  lr")
    path = job_file(tmp_path, text)
    rc, _, err = cli("validate", path)
    assert rc == 2 and "x-defaults: unknown key" in err  # extra top-level keys are still unknown keys
    path = job_file(
        tmp_path,
        text.replace('x-defaults: &defaults\n  lr: "1.0e-4"\n  train_iters: "100"\n', "").replace(
            "gpt:\n  <<: *defaults\n", 'gpt:\n  <<: {lr: "1.0e-4", train_iters: "100"}\n'
        ),
    )
    accepted_everywhere(tmp_path, path)
    anchored = text_job(
        "gpt: &g\n  lr: 1.0e-4\n  train_iters: 100\n  micro_batch_size: 2\n"
        "checkpoint:\n  save_interval: 10\nrequeue: {max_restarts: 1}\n"
    )
    accepted_everywhere(tmp_path, job_file(tmp_path, anchored))


# ---------------------------------------------------------------- pathological YAML
def bomb(levels: int = 9, width: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines)


PATHOLOGICAL = [
    ("deep-nesting", text_job(GPT) + "env: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    (
        "deep-in-extra",
        text_job(GPT) + "  extra:\n    x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
        "nested more than",
    ),
    ("alias-bomb", text_job(GPT) + bomb() + "\n", "expands to more than"),
    (
        "alias-bomb-in-extra",
        text_job(GPT) + "  extra:\n    " + bomb().replace("\n", "\n    ") + "\n",
        "expands to more than",
    ),
    ("alias-cycle", text_job(GPT) + "  extra:\n    loop: &a [*a]\n", "refers to a value that contains it"),
    ("huge-file", text_job(GPT) + "# " + "x" * 300_000 + "\n", "larger than"),
    ("control-character", text_job(GPT).replace("name: t", "name: a\x07b"), "a control character (#x0007) at line 1"),
    ("control-in-comment", text_job(GPT) + "# \x1b[31m\n", "a control character (#x001b)"),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in PATHOLOGICAL], ids=[c[0] for c in PATHOLOGICAL])
def test_pathological_yaml(tmp_path, text, words):
    refused_everywhere(tmp_path, job_file(tmp_path, text), "job.yaml", words)


def peak_rss_mb(argv, stdin=None) -> tuple[float, subprocess.CompletedProcess]:
    """Run the CLI as its own process; its peak resident memory, measured by a parent of its own."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True, "
        "timeout=60); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.stderr.write(r.stderr); sys.exit(r.returncode)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *HPC_MM, *argv], capture_output=True, text=True, timeout=120)
    return int(result.stdout.split()[-1]) / 1024, result


def test_bombs_and_endless_files_stay_small(tmp_path):
    path = job_file(tmp_path, text_job(GPT) + bomb(levels=12) + "\n")
    for argv in (["validate", path], ["validate", "/dev/zero"], ["validate", "/dev/urandom"]):
        rss, result = peak_rss_mb(argv)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr and rss < 200, (argv, rss)


def test_fifos_never_hang(tmp_path):
    fifo = tmp_path / "job.fifo"
    os.mkfifo(fifo)
    rc, _, err = cli("validate", fifo)  # no writer at all
    assert rc == 2 and "did not end within" in err
    stop = threading.Event()

    def endless_writer():
        with contextlib.suppress(OSError), open(fifo, "wb") as f:
            while not stop.is_set():
                f.write(b"a: b\n" * 1000)

    writer = threading.Thread(target=endless_writer, daemon=True)
    writer.start()
    try:
        rss, result = peak_rss_mb(["validate", str(fifo)])
    finally:
        stop.set()
    assert result.returncode == 2 and "larger than" in result.stderr and rss < 200, result.stderr
