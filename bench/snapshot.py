"""What keeping the submitted code costs at submit: MindSpeed-MM v26.1.0 as a user's checkout (its tracked
files from the stored snapshot of Ascend/MindSpeed-MM, committed, a `megatron` folder copied in and
ignored, one uncommitted change), copied into a run directory by hpc-mm (run/snapshot.py: state, then
take), beside what the peers do for the same purpose, in the same run: NeMo-Run's `git archive HEAD`
extracted into the job folder (its default packager; uncommitted changes are left out) and submitit's
RsyncSnapshot (`rsync -a` of the checkout without .git). And the check every submission into an
existing run directory makes (`state`: is this the run's code?). ROUNDS runs each, alternated; the
page cache is warm for all (the checkout was just written). Prints Markdown.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, spread, table  # noqa: E402

sys.path.insert(0, str(ROOT))
from hpc_mm.run import snapshot  # noqa: E402

ROUNDS = 5
MIRROR = Path("/work/.mirror/Ascend+MindSpeed-MM/repo")
TAG = "v26.1.0"


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout


def checkout(where: Path) -> Path:
    """The release's tree (folder by folder: the snapshot holds no sources/ media) as a user's clone."""
    top = where / "MindSpeed-MM"
    top.mkdir()
    names = subprocess.run(
        ["git", f"--git-dir={MIRROR}", "ls-tree", "--name-only", TAG], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in names:
        archive = subprocess.run(["git", f"--git-dir={MIRROR}", "archive", TAG, name], capture_output=True)
        if archive.returncode == 0:
            subprocess.run(["tar", "-x", "-C", str(top)], input=archive.stdout, check=True)
    git(where, "init", "-q", str(top))
    git(top, "config", "user.email", "bench@example.com")
    git(top, "config", "user.name", "bench")
    git(top, "add", "-A")
    git(top, "commit", "-qm", TAG)
    megatron = top / "megatron" / "core"  # what users copy in (Megatron-LM's megatron/), git ignores it here
    megatron.mkdir(parents=True)
    for i in range(200):
        (megatron / f"module_{i}.py").write_text("x = 1\n" * 200)
    with open(top / ".git" / "info" / "exclude", "a") as f:
        f.write("megatron/\n")
    entry = top / "pretrain_vlm.py"
    entry.write_text(entry.read_text() + "\n# a local change\n")
    return top


def ours(top: Path, run_dir: Path) -> float:
    t = time.perf_counter()
    code = snapshot.state(top)
    snapshot.take(code, run_dir)
    return time.perf_counter() - t


def nemo_run(top: Path, out: Path) -> float:
    t = time.perf_counter()
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(top), "archive", "--format=tar", "HEAD"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return time.perf_counter() - t


def rsync(top: Path, out: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["rsync", "-a", "--exclude", ".git", f"{top}/", f"{out}/"], check=True)
    return time.perf_counter() - t


def check(top: Path) -> float:
    t = time.perf_counter()
    snapshot.state(top)
    return time.perf_counter() - t


def main() -> int:
    times: dict[str, list[float]] = {"hpc-mm": [], "nemo": [], "rsync": [], "check": []}
    with tempfile.TemporaryDirectory(prefix="hpc-mm-bench-snapshot-") as d:
        top = checkout(Path(d))
        code = snapshot.state(top)
        size = sum((top / n).stat().st_size for n in snapshot.tracked(top))
        for i in range(ROUNDS):
            times["hpc-mm"].append(ours(top, Path(d) / f"run-{i}"))
            times["nemo"].append(nemo_run(top, Path(d) / f"nemo-{i}"))
            times["rsync"].append(rsync(top, Path(d) / f"rsync-{i}"))
            times["check"].append(check(top))
            copied = code.folder(Path(d) / f"run-{i}")
            assert (copied / "pretrain_vlm.py").read_text().endswith("# a local change\n")
            assert (copied / "megatron").is_symlink()
            shutil.rmtree(Path(d) / f"run-{i}")
        print(
            f"MindSpeed-MM {TAG} as a checkout: {code.files} tracked files, {size / 2**20:.1f} MiB, "
            f"a `megatron/` folder of 200 files copied in (ignored), one uncommitted change.\n"
        )
        print(
            table(
                ["at submit", f"seconds, median (min-max) of {ROUNDS}", "keeps the uncommitted change", "megatron/"],
                [
                    ["hpc-mm (entry.snapshot): state + copy", spread(times["hpc-mm"]), "yes", "linked"],
                    ["NeMo-Run's packager: git archive HEAD, extracted", spread(times["nemo"]), "no", "missing"],
                    ["submitit's RsyncSnapshot: rsync -a without .git", spread(times["rsync"]), "yes", "copied"],
                    ["hpc-mm: is this the run's code? (a resubmission)", spread(times["check"]), "-", "-"],
                ],
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
