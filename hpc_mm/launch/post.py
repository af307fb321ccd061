"""`hpc-mm post`: the job's post lines (`post:`), once, on the first node, after the step, whatever
its exit status: a launch script's speed summary, the `chmod` of its logs and checkpoints. They run
in bash, in the entry's folder, with the job's environment and the step's exit status in
HPC_MM_STEP_RC; what they return is said, and never changes the job's own status."""

from __future__ import annotations

import os
import subprocess
import sys

from hpc_mm.job.spec import JobSpec

POST_TIMEOUT = 600  # seconds: a post line that hangs must not hold the allocation


def run_post(spec: JobSpec, returncode: int, status: int) -> int:
    """Run the post lines; `status` is what the job ends with, and what this returns."""
    if not spec.post:
        return status
    env = {**os.environ, **{k: v for k, v in spec.env.items() if v is not None}, "HPC_MM_STEP_RC": str(returncode)}
    for name in [k for k, v in spec.env.items() if v is None]:
        env.pop(name, None)
    script = "\n".join(spec.post) + "\n"
    try:
        done = subprocess.run(
            ["bash", "-c", script], cwd=spec.entry.workdir, env=env, stdin=subprocess.DEVNULL, timeout=POST_TIMEOUT
        )
        said = None if done.returncode == 0 else f"ended with exit code {done.returncode}"
    except subprocess.TimeoutExpired:
        said = f"did not end within {POST_TIMEOUT} s and were stopped"
    except OSError as exc:
        said = f"could not run in {spec.entry.workdir} ({exc.strerror})"
    if said:
        print(f"hpc-mm: the post lines {said}; the job keeps its status ({status})", file=sys.stderr, flush=True)
    return status
