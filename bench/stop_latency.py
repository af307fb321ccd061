"""How long a stop takes: signal -> checkpoint committed -> every process gone.

Runs `hpc-mm launch` of jobs/tiny-vlm.yaml (1 node x 4 ranks, torchrun, gloo) with models of
growing size, sends SIGTERM once training runs (what srun delivers when Slurm's --signal
or a preemption arrives), and reads the times from events.jsonl. requeue.grace_seconds must
cover the last column with room to spare. Median (min-max) of REPEATS. Prints a Markdown table.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, spread  # noqa: E402

HIDDEN = [32, 256, 512]
REPEATS = 3


def one(hidden: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as d:
        model = json.loads((ROOT / "jobs/tiny-vlm/model.json").read_text())
        model["text_decoder"].update(hidden_size=hidden, ffn_hidden_size=4 * hidden)
        (Path(d) / "model.json").write_text(json.dumps(model))
        run = Path(d) / "run"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpc_mm",
                "launch",
                str(ROOT / "jobs/tiny-vlm.yaml"),
                "--run-dir",
                str(run),
                "--set",
                "slurm.nodes=1",
                "--set",
                "distributed.nproc_per_node=4",
                "--set",
                f"mm.model={d}/model.json",
                "--set",
                "gpt.train_iters=100000",
                "--set",
                "checkpoint.save_interval=100000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 5:
            time.sleep(0.05)
        sent = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)
        gone = time.time()
        record = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
        saved = next(e for e in record if e["event"] == "checkpoint")
        size = sum(p.stat().st_size for p in (run / "checkpoints").rglob("*.pt")) / 2**20
        return size, saved["time"] - sent, saved["seconds"], gone - sent


def main():
    print(
        "| checkpoint size | signal -> checkpoint committed | of which writing | checkpoint committed -> "
        "all processes gone | signal -> all processes gone |"
    )
    print("|---:|---:|---:|---:|---:|")
    for hidden in HIDDEN:
        runs = [one(hidden) for _ in range(REPEATS)]
        size = runs[0][0]
        committed, writing, gone = ([r[i] for r in runs] for i in (1, 2, 3))
        after = [g - c for g, c in zip(gone, committed)]
        print(
            f"| {size:.1f} MB | {spread(committed)} | {spread(writing)} | {spread(after)} | {spread(gone)} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
