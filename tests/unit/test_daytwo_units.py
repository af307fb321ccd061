"""Tokens/s and MFU from the log lines, the pipeline's order and its refusals, sweeps' zip and
throttle in the script, the Python API without a cluster (recorded Slurm answers)."""

import pytest

from hpc_mm.errors import UserError
from hpc_mm.job.jobfile import load_job
from hpc_mm.launch.progress import Progress
from hpc_mm.run import layout, throughput
from hpc_mm.run.rundir import RunDir
from hpc_mm.slurm import pipeline, sweep
from hpc_mm.slurm.render import render_script

from conftest import JOBS, cli_in_process

TINY = JOBS / "tiny-vlm.yaml"
LINE = (
    " iteration       {it}/     200 | consumed samples: {c} | elapsed time per iteration (ms): {ms} | "
    "learning rate: 1.0E-03 | global batch size:    32 | lm loss: 2.5E+00 | grad norm: 1.0 |"
)


def test_tokens_per_second_is_samples_per_second_times_seq_length(tmp_path):
    spec = load_job(TINY, ["throughput.seq_length=512", "throughput.peak_tflops=100"])
    layout.create(layout.plan_run(spec, tmp_path / "run"))
    run = RunDir(tmp_path / "run")
    watch = Progress(run)
    for i, ms in enumerate((400.0, 500.0, 250.0), start=1):
        watch.feed(LINE.format(it=i, c=32 * i, ms=ms))
    rows = run.reread().metrics()
    samples = [32 * 1000 / ms for ms in (400.0, 500.0, 250.0)]
    assert [r.samples_per_second for r in rows] == pytest.approx(samples)
    got = throughput.rates(spec, rows, world_size=4)
    assert got.tokens_per_second == pytest.approx(sum(samples) / 3 * 512)
    assert got.tokens_per_second_per_device == pytest.approx(got.tokens_per_second / 4)
    # the tiny model's decoder (model.json): 2 layers, hidden 32, ffn 64, 2 heads, vocab 32
    flops = 12 * 512 * 2 * 32 * 32 * ((1 + 1 + 512 / 32) + 64 / 32 + 32 / (2 * 2 * 32))
    assert got.mfu == pytest.approx(sum(samples) / 3 * flops / (4 * 100e12))


def test_megatrons_formula_for_a_llama_sized_decoder():
    # Llama-2 7B: 32 layers, hidden 4096, ffn 11008 (SwiGLU), 32 heads, vocab 32000, 4096 tokens;
    # 6 x parameters x tokens is the usual rule of thumb, plus attention's s/h term.
    model = throughput.Decoder(32, 4096, 11008, 32, 32, 32000, gated=True)
    per_token = model.flops_per_sample(4096) / 4096
    assert 6 * 6.7e9 < per_token < 6 * 6.7e9 * 1.35


def test_the_built_in_trainers_tokens_a_sample_come_from_its_mm_files():
    spec = load_job(TINY)
    assert throughput.seq_length(spec) == (16 // 4) ** 2 + 1 + 8
    assert throughput.rates(load_job(TINY), [], 4).tokens_per_second is None


def test_a_pipeline_waits_for_the_stage_before_and_refuses_what_it_cannot_wait_for(tmp_path):
    a, b, c = (load_job(TINY, [f"name={n}"]) for n in ("convert", "train", "evaluate"))
    staged = pipeline.chain([a, b, c], ["123"])
    assert [s.after for s in staged] == [["123"], ["convert"], ["train"]]
    resolved, found = pipeline.resolve(staged[1], {"convert": ("124", "/runs/convert")})
    assert resolved.after == ["124"] and found == {"124": "/runs/convert"}
    script = render_script(resolved, tmp_path / "run")
    assert "#SBATCH --dependency=afterok:124\n" in script and "#SBATCH --kill-on-invalid-dep=yes\n" in script
    with pytest.raises(UserError, match="neither a Slurm job id"):
        pipeline.resolve(load_job(TINY, ["after=[nothing-here]"]))
    with pytest.raises(UserError, match="two stages are both named"):
        pipeline.chain([a, a], [])
    with pytest.raises(UserError, match="which comes later"):
        pipeline.chain([load_job(TINY, ["name=x", "after=[y]"]), load_job(TINY, ["name=y"])], [])


def test_a_stage_after_a_failed_job_is_refused(recorded_slurm):
    from recorded.slurm import job_id

    recorded_slurm("failed")
    with pytest.raises(UserError, match="ended FAILED: a stage after it would never start"):
        pipeline.resolve(load_job(TINY, [f"after=[{job_id('failed')}]"]))


def test_zip_pairs_values_and_the_throttle_is_in_the_array(tmp_path):
    def load(extra):
        return load_job(TINY, extra)

    combos = sweep.tasks(load, ["gpt.lr=1e-3,2e-3,3e-3", "gpt.seed=1,2,3"], zipped=True)
    assert [v for v, _ in combos] == [{"gpt.lr": lr, "gpt.seed": s} for lr, s in zip(("1e-3", "2e-3", "3e-3"), "123")]
    assert len(sweep.tasks(load, ["gpt.lr=1e-3,2e-3,3e-3", "gpt.seed=1,2,3"])) == 9
    with pytest.raises(UserError, match="different numbers of values"):
        sweep.tasks(load, ["gpt.lr=1e-3,2e-3", "gpt.seed=1,2,3"], zipped=True)
    script, _ = sweep.prepare(load([]), combos, tmp_path / "sweep", None, max_parallel=2)
    assert "#SBATCH --array=0-2%2\n" in script
    script, _ = sweep.prepare(load([]), combos, tmp_path / "sweep", None, max_parallel=5)
    assert "#SBATCH --array=0-2\n" in script  # no throttle where every task may run anyway


def test_a_sweep_larger_than_max_array_size_is_refused_with_the_number(monkeypatch):
    from hpc_mm.slurm import query

    monkeypatch.setattr(query, "max_array_size", lambda: 4)
    with pytest.raises(UserError, match="6 tasks, but this cluster's MaxArraySize is 4"):
        sweep.check_size(6)
    sweep.check_size(4)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-parallel", "2"], "--max-parallel: is for sweeps"),
        (["--zip"], "--zip: is for sweeps"),
        (["--max-parallel", "0", "--sweep", "gpt.lr=1,2"], "0 must be at least 1"),
    ],
)
def test_sweep_flags_without_a_sweep_are_one_line(argv, message, recorded_slurm):
    recorded_slurm()
    rc, out, err = cli_in_process("submit", TINY, *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_api_raises_the_clis_problems_and_warns_in_python():
    import hpc_mm

    with pytest.raises(hpc_mm.UserError) as exc:
        hpc_mm.load_job(TINY, set={"gpt.lr": -1, "notify.on": ["complete"]})
    assert {p.field for p in exc.value.problems} >= {"notify.on[0]"}
    with pytest.warns(hpc_mm.HpcMmWarning):
        hpc_mm.load_job(TINY, set={"entry.workdir": "/nowhere"})
    assert hpc_mm.load_job(TINY, nodes=4).nnodes == 4


def test_remote_submit_sends_the_resolved_job_and_the_files_it_names(tmp_path):
    import tarfile
    from io import BytesIO

    import yaml

    from hpc_mm.cli import staging
    from hpc_mm.cli.remote import strip_remote

    assert strip_remote(["--remote", "login", "status", "--remote", "x"], "status") == ["status", "--remote", "x"]
    assert strip_remote(["--remote=login", "logs", "-f", "1"], "logs") == ["logs", "-f", "1"]
    assert strip_remote(["--remote", "status", "status", "1"], "status") == ["status", "1"]  # a host named so
    text, copies = staging.staged_job(load_job(TINY, ["gpt.lr=5e-4"]), "staged/t")
    job = yaml.safe_load(text)
    assert job["gpt"]["lr"] == 5e-4 and job["entry"]["workdir"] == "."  # a module: nothing of the laptop's to run
    assert job["mm"]["data"] == "files/data-data.json" and copies["staged/t/files/data-data.json"].is_file()
    code = tmp_path / "code"
    (code / ".git").mkdir(parents=True)
    (code / ".git" / "HEAD").write_text("x")
    (code / "pretrain_vlm.py").write_text("print('hi')")
    (code / "lib").mkdir()
    (code / "lib" / "util.py").write_text("")
    spec = load_job(TINY, [f"entry.workdir={code}", "entry.script=pretrain_vlm.py", "entry.kind=command"])
    text, copies = staging.staged_job(spec, "s")
    assert yaml.safe_load(text)["entry"]["workdir"] == "workdir"
    assert {k for k in copies if k.startswith("s/workdir/")} == {"s/workdir/pretrain_vlm.py", "s/workdir/lib/util.py"}
    with tarfile.open(fileobj=BytesIO(staging.tar({"a/job.yaml": b"name: x\n", **copies}))) as tar:
        assert "a/job.yaml" in tar.getnames() and "s/workdir/lib/util.py" in tar.getnames()


def test_files_only_the_cluster_has_are_left_to_the_login_node_to_check():
    import yaml

    from hpc_mm.cli import staging
    from hpc_mm.job import yamlfile

    cluster_only = ["mm.data=/scratch/cluster/data.json"]
    with pytest.raises(UserError, match="mm.data: /scratch/cluster/data.json does not exist"):
        load_job(TINY, cluster_only)  # on a login node, a missing file is an error
    token = yamlfile.ELSEWHERE.set(True)
    try:
        spec = load_job(TINY, cluster_only)
        with pytest.raises(UserError, match="gpt.lr"):  # everything else is still checked here
            load_job(TINY, [*cluster_only, "gpt.lr=-1"])
    finally:
        yamlfile.ELSEWHERE.reset(token)
    text, copies = staging.staged_job(spec, "s")
    job = yaml.safe_load(text)
    assert job["mm"]["data"] == "/scratch/cluster/data.json" and job["mm"]["model"] == "files/model-model.json"
    assert "s/files/model-model.json" in copies and not any("data" in k for k in copies)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda api: api.load_job(None), "path"),
        (lambda api: api.load_job(123), "path"),
        (lambda api: api.load_job(TINY, set=123), "set"),
        (lambda api: api.load_job(TINY, set="gpt.lr=1"), "set"),
        (lambda api: api.load_job(TINY, set={1: 2}), "set"),
        (lambda api: api.load_job(TINY, set={"gpt.lr": object()}), "set"),
        (lambda api: api.load_job(TINY, nodes=-1), "nodes"),
        (lambda api: api.load_job(TINY, nproc_per_node="x"), "nproc_per_node"),
        (lambda api: api.submit_sweep(TINY, {"gpt.lr": [1e-4]}, max_parallel=-1), "max_parallel"),
        (lambda api: api.submit_sweep(TINY, {"entry.extra_args": ["a,b", "c"]}), "sweep.entry.extra_args"),
        (lambda api: api.submit_sweep(TINY, {"gpt.lr": "1e-4"}), "sweep.gpt.lr"),
        (lambda api: api.submit_sweep(TINY, []), "sweep"),
    ],
)
def test_the_api_raises_user_error_for_every_bad_argument(call, field):
    import hpc_mm

    with pytest.raises(UserError) as raised:
        call(hpc_mm)
    assert raised.value.problems[0].field == field, raised.value.problems
