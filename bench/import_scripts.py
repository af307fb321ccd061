"""`hpc-mm import` over every launch script of a MindSpeed-MM checkout, as a new user would bring them.

    python bench/import_scripts.py /path/to/MindSpeed-MM [--jobs N]

For each examples/**/*.sh (run from the checkout's root, as its README says): does it import into a job
file that validates, or what is the one error line; then, for each imported launch, what its first and
last node run (`hpc-mm args --node N --device npu --diff SCRIPT`, on the nodes the script asks for)
against what the script runs, every difference classified by hpc-mm's table of reasons; a difference
with no reason is counted as unexplained. Scripts that stop on a missing argument of their own (verl's --data_path,
--model_path) are given one, as their README tells a user to. Prints Markdown.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HPC_MM = [sys.executable, "-m", "hpc_mm"]
# What a user gives a script that refuses to run without (its own parameter check says so).
GIVEN = {"data_path": "--data_path=/data/dataset", "model_path": "--model_path=/models/model"}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def one(root: Path, script: Path, out: Path) -> dict:
    rel = script.relative_to(root)
    target = out / (str(rel).replace("/", "__") + ".yaml")
    args: list[str] = []
    began = time.monotonic()
    done = run([*HPC_MM, "import", "--force", "-o", str(target), str(rel)], root)
    for _ in GIVEN:  # the script names one missing argument at a time
        needs = [v for k, v in GIVEN.items() if k in done.stderr and "must be config" in done.stderr]
        if not done.returncode or not needs or set(needs) <= set(args):
            break
        args = sorted(set(args) | set(needs))
        done = run([*HPC_MM, "import", "--force", "-o", str(target), str(rel), *args], root)
    result = {"script": str(rel), "args": args, "seconds": time.monotonic() - began, "rc": done.returncode}
    if done.returncode:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        result["error"] = errors[0] if errors else done.stderr.strip().splitlines()[-1:]
        return result
    stages = sorted(out.glob(target.stem + "*.yaml")) if not target.exists() else [target]
    result["stages"] = []
    for stage in stages:
        text = stage.read_text()
        entry = {"file": stage.name, "launcher": _value(text, "launcher"), "kind": _value(text, "kind"),
                 "resumable": "\nresume:" in text, "differences": collections.Counter()}  # fmt: skip
        nnodes = int(_value(text, "nnodes") or 1)
        for node in sorted({0, nnodes - 1}):
            diff = run([*HPC_MM, "args", str(stage), "--node", str(node), "--device", "npu",
                        "--json", "--diff", str(rel), *args], root)  # fmt: skip
            try:
                said = json.loads(diff.stdout)
            except ValueError:
                entry["differences"]["(args failed: " + (diff.stderr.strip().splitlines() or ["?"])[-1] + ")"] += 1
                continue
            for d in said.get("differences", []):
                entry["differences"][d["reason"] or "UNEXPLAINED: " + d["what"]] += 1
        result["stages"].append(entry)
    return result


def _value(text: str, key: str) -> str:
    line = next((line for line in text.splitlines() if line.strip().startswith(f"{key}:")), "")
    return line.split(":", 1)[1].strip() if line else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    root = args.checkout.resolve()
    scripts = sorted(root.glob("examples/**/*.sh"))
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda s: one(root, s, Path(tmp)), scripts))
    ok = [r for r in results if not r["rc"]]
    stages = [s for r in ok for s in r["stages"]]
    reasons = collections.Counter()
    for s in stages:
        reasons.update(s["differences"])
    unexplained = {k: v for k, v in reasons.items() if k.startswith(("UNEXPLAINED", "(args failed"))}
    print(f"## `hpc-mm import` over {root.name} ({len(scripts)} launch scripts, {time.monotonic() - began:.0f} s)\n")
    print("| | scripts |\n|---|---|")
    print(f"| imported, every job file validates | {len(ok)} |")
    print(f"| of them given an argument the script asks for | {sum(1 for r in ok if r['args'])} |")
    print(f"| refused with one error line | {len(results) - len(ok)} |")
    print(f"| launches (job files) | {len(stages)} |")
    launchers = collections.Counter(s["launcher"] for s in stages)
    kinds = collections.Counter(s["kind"] for s in stages)
    print(f"| launchers | {', '.join(f'{k} {v}' for k, v in launchers.most_common())} |")
    print(f"| entry kinds | {', '.join(f'{k} {v}' for k, v in kinds.most_common())} |")
    trains = [s for s in stages if s["kind"] in ("megatron", "fsdp2") or s["resumable"]]
    print(f"| launches a preemption does not send back to zero (megatron, fsdp2, resume:) | {len(trains)} |")
    print(f"| differences with no reason in hpc-mm's table (first and last node) | {sum(unexplained.values())} |")
    print("\nDifferences by reason (the first and the last node of every launch):\n")
    print("| reason | count |\n|---|---|")
    for k, v in reasons.most_common():
        print(f"| {k} | {v} |")
    print("\nRefused:\n")
    for r in results:
        if r["rc"]:
            print(f"- `{r['script']}`: {str(r['error'])[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
