"""A recorded Slurm for unit tests: what the real test cluster answered (slurm.json, written by
record.py), replayed through `hpc_mm.slurm.query._run`, the one place query.py runs a command.

`RecordedSlurm("running", "failed", ...)` plays a cluster that holds the recorded jobs in those
states (each scenario is one job at one moment). Questions are answered from the recording:
exactly as recorded when the same command line was recorded; squeue, which lists the whole queue,
with the recorded lines of the jobs in play; sacct for several jobs with each job's recorded line.
A job nobody recorded is unknown, as Slurm says it. Orders (requeue, update, scancel, sbatch) are
answered as the real cluster answered them and kept in `orders`, for the test to check.
`with_state(name, STATE)` plays a recorded job in another state, written in the same format.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from hpc_mm.slurm.query import Answer

RECORDING = json.loads(Path(__file__).with_name("slurm.json").read_text())
UNKNOWN = RECORDING["jobs"]["unknown"]


def job_id(name: str) -> str:
    return RECORDING["jobs"][name]["job_id"]


def moment(name: str) -> dt.datetime:
    """When the scenario was recorded (for answers that are about time, such as EndTime)."""
    return dt.datetime.fromisoformat(RECORDING["jobs"][name]["at"])


def _answer(recorded) -> Answer | None:
    return None if recorded is None else Answer(*recorded)


def _restate(cmd: list[str], out: str, jid: str, state: str, reason: str) -> str:
    if cmd[0] == "scontrol":
        return re.sub(r"Reason=\S+", f"Reason={reason}", re.sub(r"JobState=\S+", f"JobState={state}", out))
    lines = []
    for line in out.splitlines():
        fields = line.split("|")
        if fields[0] == jid:
            fields[1] = state
            if cmd[0] == "squeue":
                fields[2] = reason
        lines.append("|".join(fields))
    return "".join(f"{line}\n" for line in lines)


class RecordedSlurm:
    def __init__(self, *scenarios: str, down: bool = False):
        self.jobs: dict[str, dict] = {}  # job id -> {tuple(cmd): answer}
        self.orders: list[list[str]] = []
        self.asked: list[list[str]] = []
        self.down = down  # the controller does not answer
        self.refuse: dict[str, str] = {}  # order name (requeue, update, ...) -> stderr of a refusal
        self.unreachable = 0  # how many of the next questions find no controller (it is restarting)
        for name in scenarios:
            self.play(name)

    def play(self, name: str, answers: list | None = None) -> RecordedSlurm:
        """Add a recorded job (a later scenario of the same job replaces an earlier one)."""
        scenario = RECORDING["jobs"][name]
        self.jobs[scenario["job_id"]] = {tuple(cmd): a for cmd, a in (answers or scenario["answers"])}
        return self

    def with_state(self, name: str, state: str, reason: str = "None") -> RecordedSlurm:
        """The recorded job `name` in another state (and pending reason), written as Slurm writes it:
        base a queued or running state on a queued or running scenario, an ended one on an ended one."""
        jid = job_id(name)
        answers = []
        for cmd, answer in RECORDING["jobs"][name]["answers"]:
            if answer is not None:
                answer = [answer[0], _restate(cmd, answer[1], jid, state, reason), answer[2]]
            answers.append([cmd, answer])
        return self.play(name, answers)

    # -- the seam -----------------------------------------------------------------------------
    def __call__(self, cmd: list[str], timeout: float = 30) -> Answer | None:
        cmd = list(cmd)
        self.asked.append(cmd)
        if self.down:
            return None
        if self.unreachable > 0:
            self.unreachable -= 1
            return Answer(1, "", f"{cmd[0]}: error: Unable to contact slurm controller (connect failure)\n")
        program = cmd[0]
        if (
            program in ("sbatch",)
            or (program == "scontrol" and cmd[1] in ("requeue", "update"))
            or (program == "scancel")
        ):
            return self._order(cmd)
        if program == "squeue" and "-j" not in cmd:  # the whole queue: the lines of the jobs in play
            return self._queue(cmd)
        for answers in self.jobs.values():
            if tuple(cmd) in answers:
                return _answer(answers[tuple(cmd)])
        if program == "sacct":
            return self._sacct(cmd)
        if program == "scontrol" and cmd[1:3] == ["show", "job"]:
            unknown = next(a for c, a in UNKNOWN["answers"] if c[0] == "scontrol")
            return Answer(unknown[0], unknown[1], unknown[2])
        for recorded, answer in RECORDING["cluster"]:
            if recorded[:3] == cmd[:3]:
                return _answer(answer)
        if cmd[:2] == ["scontrol", "ping"]:
            return _answer(next(a for c, a in RECORDING["cluster"] if c[:2] == cmd[:2]))
        raise AssertionError(f"the recording has no answer to {cmd}")

    def _queue(self, cmd: list[str]) -> Answer:
        lines = []
        for jid, answers in self.jobs.items():
            recorded = answers.get(tuple(cmd))
            if recorded is None:
                continue
            lines += [line for line in recorded[1].splitlines() if line.split("|")[0].split()[0] == jid if line.strip()]
        return Answer(0, "".join(f"{line}\n" for line in lines), "")

    def _sacct(self, cmd: list[str]) -> Answer:
        wanted = cmd[cmd.index("-j") + 1].split(",")
        lines = []
        for jid in wanted:
            single = [*cmd[: cmd.index("-j") + 1], jid, *cmd[cmd.index("-j") + 2 :]]
            recorded = self.jobs.get(jid, {}).get(tuple(single))
            if recorded is not None:
                lines.append(recorded[1])
        return Answer(0, "".join(lines), "")

    def _order(self, cmd: list[str]) -> Answer:
        self.orders.append(cmd)
        name = cmd[1] if cmd[0] == "scontrol" else cmd[0]
        if name in self.refuse:
            return Answer(1, "", self.refuse[name])
        if cmd[0] == "sbatch" and "--test-only" in cmd:
            return _answer(RECORDING["orders"]["test-only"][1])
        if cmd[0] == "sbatch":
            return Answer(0, "4242\n" if "--parsable" in cmd else "Submitted batch job 4242\n", "")
        return Answer(0, "", "")
