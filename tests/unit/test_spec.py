"""The job file: defaults, derived figures, overrides, and a table of bad job files."""

import copy
import json

import pytest
import yaml

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.job.spec import derive

from conftest import JOBS, run_cli, setting

TINY = JOBS / "tiny-vlm"


def base_job() -> dict:
    return {
        "name": "t",
        "slurm": {"nodes": 2},
        "distributed": {"nproc_per_node": 4},
        "mm": {"data": str(TINY / "data.json"), "model": str(TINY / "model.json"), "tool": str(TINY / "tools.json")},
        "gpt": {"lr": 1.0e-4, "train_iters": 100, "micro_batch_size": 2},
    }


def write(tmp_path, job, name="job.yaml"):
    path = tmp_path / name
    path.write_text(job if isinstance(job, str) else yaml.safe_dump(job))
    return path


def test_example_jobs_validate():
    result = run_cli("validate", *sorted(JOBS.glob("*.yaml")), check=True)
    assert "ok" in result.stdout and "qwen2vl-7b" in result.stdout
    assert "world size 32 = 4 nodes x 8, DP 8, global batch 768, gradient accumulation 96" in result.stdout


def test_seed_defaults(tmp_path):
    spec = load_job(write(tmp_path, base_job()))
    g = spec.gpt
    assert (g.tensor_model_parallel_size, g.pipeline_model_parallel_size, g.num_workers) == (1, 1, 1)
    assert (g.adam_beta1, g.adam_beta2, g.adam_eps, g.weight_decay, g.clip_grad) == (0.9, 0.999, 1e-8, 0.1, 1.0)
    assert (g.lr_decay_style, g.lr_warmup_init, g.lr_warmup_iters) == ("linear", 0.0, 0)
    assert spec.nnodes == 2 and spec.distributed.node_rank == 0 and spec.distributed.master_addr == "localhost"
    assert spec.mm.tool == str(TINY / "tools.json")


@pytest.mark.parametrize(
    "nodes,nproc,tp,pp,mbs,acc,expected",
    [
        (2, 4, 1, 1, 2, 1, (8, 8, 16, 1, 8)),  # GBS = MBS x acc x DP
        (2, 4, 2, 1, 2, 3, (8, 4, 24, 3, 12)),
        (4, 8, 1, 4, 1, 8, (32, 8, 64, 8, 64)),
        (1, 8, 2, 2, 4, 2, (8, 2, 16, 2, 4)),
    ],
)
def test_derived_figures(tmp_path, nodes, nproc, tp, pp, mbs, acc, expected):
    job = base_job()
    job["slurm"]["nodes"], job["distributed"]["nproc_per_node"] = nodes, nproc
    job["gpt"].update(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        micro_batch_size=mbs,
        gradient_accumulation_steps=acc,
    )
    if pp > 1:
        model = json.loads((TINY / "model.json").read_text())
        model["text_decoder"].update(num_layers=pp * 2, pipeline_num_layers=[2] * pp)
        (tmp_path / "model.json").write_text(json.dumps(model))
        job["mm"]["model"] = str(tmp_path / "model.json")
    d = derive(load_job(write(tmp_path, job)))
    assert (
        d.world_size,
        d.data_parallel_size,
        d.global_batch_size,
        d.gradient_accumulation_steps,
        d.micro_batches_per_step,
    ) == expected


def test_overrides_and_shortcuts(tmp_path):
    path = write(tmp_path, base_job())
    spec = load_job(path, ["gpt.lr=3e-4", "gpt.lr_decay_style=cosine", "env.FOO=bar baz"], nodes=4, nproc_per_node=2)
    assert spec.gpt.lr == 3e-4 and spec.gpt.lr_decay_style == "cosine" and spec.env["FOO"] == "bar baz"
    assert spec.slurm.nodes == 4 and spec.nnodes == 4 and spec.distributed.nproc_per_node == 2


def test_tp_sets_cuda_device_max_connections(tmp_path):
    job = base_job()
    job["gpt"]["tensor_model_parallel_size"] = 2
    assert load_job(write(tmp_path, job)).env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"


def test_every_problem_is_listed(tmp_path):
    job = base_job()
    job["gpt"].update(min_lr=1.0, adam_beta1=1.5)
    job["distributed"]["master_port"] = 80
    with pytest.raises(UserError) as err:
        load_job(write(tmp_path, job))
    fields = {p.field for p in err.value.problems}
    assert {"gpt.min_lr", "gpt.adam_beta1", "distributed.master_port"} <= fields


def _mm_file(key: str, text: str):
    def change(job, tmp_path):
        f = tmp_path / f"{key}.json"
        f.write_text(text)
        job["mm"][key] = str(f)
        return job

    return change


def _pipeline(layers, num_layers, pp):
    def change(job, tmp_path):
        model = json.loads((TINY / "model.json").read_text())
        model["text_decoder"].update(pipeline_num_layers=layers, num_layers=num_layers)
        (tmp_path / "m.json").write_text(json.dumps(model))
        job["mm"]["model"] = str(tmp_path / "m.json")
        job["gpt"]["pipeline_model_parallel_size"] = pp
        return job

    return change


# (id, change to the base job or raw file text, field named in the error, words in the message)
BAD_JOBS = [
    ("yaml-syntax", "name: t\ngpt: [unclosed\n", "job.yaml", "YAML syntax error at line"),
    ("empty-file", "", "job.yaml", "empty"),
    ("list-not-mapping", "- a\n- b\n", "job.yaml", "must be a mapping"),
    ("section-is-list", "name: t\ngpt: [1, 2]\n", "gpt", "expected a mapping"),
    ("unknown-top-key", setting("trainer", {}), "trainer", "unknown key"),
    ("unknown-gpt-key", setting("gpt.learning_rate", 1.0), "gpt.learning_rate", "unknown key"),
    ("missing-lr", lambda j: (j["gpt"].pop("lr"), j)[1], "gpt.lr", "is required"),
    ("missing-train-iters", lambda j: (j["gpt"].pop("train_iters"), j)[1], "gpt.train_iters", "is required"),
    ("missing-mm-data", lambda j: (j["mm"].pop("data"), j)[1], "mm.data", "is required"),
    ("lr-not-number", setting("gpt.lr", "fast"), "gpt.lr", "is not a number"),
    ("mbs-not-int", setting("gpt.micro_batch_size", 1.5), "gpt.micro_batch_size", "not an integer"),
    ("nodes-zero", setting("slurm.nodes", 0), "slurm.nodes", "positive"),
    ("bad-decay-style", setting("gpt.lr_decay_style", "cosin"), "gpt.lr_decay_style", "did you mean 'cosine'"),
    ("bad-backend", setting("distributed.backend", "ncl"), "distributed.backend", "did you mean 'nccl'"),
    ("bad-launcher", setting("entry.launcher", "mpirun"), "entry.launcher", "allowed values"),
    (
        "world-not-divisible",
        setting("gpt.tensor_model_parallel_size", 3),
        "gpt.tensor_model_parallel_size",
        "not divisible",
    ),
    ("gbs-not-multiple", setting("gpt.global_batch_size", 30), "gpt.global_batch_size", "not a multiple"),
    ("min-lr-above-lr", setting("gpt.min_lr", 1.0), "gpt.min_lr", "larger than gpt.lr"),
    ("warmup-init-above-lr", setting("gpt.lr_warmup_init", 1.0), "gpt.lr_warmup_init", "larger than gpt.lr"),
    ("warmup-too-long", setting("gpt.lr_warmup_iters", 100), "gpt.lr_warmup_iters", "not shorter than the decay span"),
    ("wsd-without-iters", setting("gpt.lr_decay_style", "WSD"), "gpt.lr_wsd_decay_iters", "required"),
    (
        "wsd-iters-too-long",
        lambda j: setting("gpt.lr_wsd_decay_iters", 500)(setting("gpt.lr_decay_style", "WSD")(j)),
        "gpt.lr_wsd_decay_iters",
        "longer than train_iters",
    ),
    ("port-privileged", setting("distributed.master_port", 80), "distributed.master_port", "1024-65535"),
    ("port-too-high", setting("distributed.master_port", 70000), "distributed.master_port", "1024-65535"),
    (
        "port-not-int",
        setting("distributed.master_port", "any"),
        "distributed.master_port",
        "is not an integer or 'auto'",
    ),
    ("negative-workers", setting("gpt.num_workers", -1), "gpt.num_workers", "0 or more"),
    ("beta-out-of-range", setting("gpt.adam_beta2", 1.0), "gpt.adam_beta2", "[0, 1)"),
    ("unsafe-name", setting("name", "x; rm -rf ~"), "name", "safe Slurm job name"),
    ("bad-time", setting("slurm.time", "two hours"), "slurm.time", "Slurm time limit"),
    ("bad-gres", setting("slurm.gres", "npu"), "slurm.gres", "gres request"),
    ("partition-injection", setting("slurm.partition", "low$(id)"), "slurm.partition", "characters"),
    ("secret-in-env", setting("env.HF_TOKEN", "abc"), "env.HF_TOKEN", "looks like a secret"),
    ("bad-env-name", setting("env.1BAD", "x"), "env.1BAD", "not a valid environment variable name"),
    (
        "mpi-on-megatron",
        lambda j: setting("entry.script", "pretrain_vlm.py")(setting("distributed.backend", "mpi")(j)),
        "distributed.backend",
        "only nccl or gloo",
    ),
    ("extra-duplicates-field", setting("gpt.extra", {"lr": 1}), "gpt.extra.lr", "set by hpc-mm"),
    ("mm-data-missing-file", setting("mm.data", "/nonexistent/data.json"), "mm.data", "does not exist"),
    (
        "mm-json-syntax",
        _mm_file("data", '{"dataset_param": {},\n "x": ]\n}'),
        "mm.data",
        "JSON syntax error at line 2, column",
    ),
    ("mm-data-no-dataloader", _mm_file("data", '{"dataset_param": {}}'), "mm.data", "dataloader_param"),
    (
        "pipeline-wrong-length",
        _pipeline([1, 1], 2, 4),
        "mm.model",
        "has 2 entries but pipeline_model_parallel_size is 4",
    ),
    ("pipeline-negative-stage", _pipeline([3, -1], 2, 2), "mm.model", "a negative layer count"),
    ("pipeline-wrong-sum", _pipeline([1, 2], 4, 2), "mm.model", "sums to 3, not num_layers = 4"),
    (
        "node-rank-outside",
        lambda j: setting("distributed.nnodes", 2)(setting("distributed.node_rank", 5)(j)),
        "distributed.node_rank",
        "outside",
    ),
]


@pytest.mark.parametrize("case", BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
def test_bad_job_files(tmp_path, case):
    _, change, field, words = case
    if isinstance(change, str):
        path = write(tmp_path, change)
    else:
        job = copy.deepcopy(base_job())
        try:
            job = change(job, tmp_path)
        except TypeError:
            job = change(job)
        path = write(tmp_path, job)
    result = run_cli("validate", path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert any(field in line and words in line for line in lines), result.stderr


def test_bad_flags_are_one_line(tmp_path):
    for args in (
        ["validate", JOBS / "tiny-vlm.yaml", "--nodes", "zero"],
        ["args", JOBS / "tiny-vlm.yaml", "--set", "novalue"],
        ["validate", tmp_path / "missing.yaml"],
        ["frobnicate"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: "), result.stderr


def test_table_has_at_least_25_cases():
    assert len(BAD_JOBS) >= 25
