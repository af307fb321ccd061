"""A Slurm command for the unit tests: `python replay.py COMMAND ARGS...`, put first on PATH as
sbatch, scontrol, squeue, sacct, scancel, sinfo, sacctmgr and srun by tests/unit/conftest.py. It
answers as the real test cluster answered (slurm.json) about the cluster (ping, nodes, partitions,
configuration, sbatch --test-only), knows no job, and never submits: a unit test takes the same path
on a machine with Slurm installed as on one without, and never reaches a real cluster."""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from slurm import RecordedSlurm  # noqa: E402

COMMANDS = ("sbatch", "scontrol", "squeue", "sacct", "scancel", "sinfo", "sacctmgr", "srun")


def main(cmd: list[str]) -> int:
    if cmd[0] == "sbatch" and "--test-only" not in cmd or cmd[0] == "srun":
        sys.stderr.write(f"{cmd[0]}: error: the unit tests start no job (a recorded Slurm answers them)\n")
        return 1
    try:
        answer = RecordedSlurm()(cmd)
    except AssertionError:
        sys.stderr.write(f"{cmd[0]}: error: the recording has no answer to this (unit tests)\n")
        return 1
    sys.stdout.write(answer.stdout)
    sys.stderr.write(answer.stderr)
    return answer.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
