"""submitit is hpc-mm's submitter; the two members it uses that submitit does not make public
(`SlurmExecutor._make_submission_command`, `SlurmExecutor._get_job_id_from_submission_command`)
are reached in slurm/query.py only. These tests fail the day submitit changes them, and show that
a submission, a dry run (`--test-only`) and a chained start run one sbatch command through the
seam the recorded Slurm answers (`query._run`), differing only in sbatch's options."""

import configparser
from pathlib import Path

import pytest
import submitit

from hpc_mm.slurm import query

from conftest import ROOT


def test_submitit_is_the_pinned_release():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pins = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.startswith("submitit")]
    assert pins == [f"submitit=={submitit.__version__}"], (pins, submitit.__version__)


def test_the_members_hpc_mm_uses_still_behave():
    script = Path("/runs/x/submitit/.submission_file_ab.sh")
    assert submitit.SlurmExecutor._make_submission_command(None, script) == ["sbatch", str(script)]
    read = submitit.SlurmExecutor._get_job_id_from_submission_command
    assert read("Submitted batch job 4242\n") == "4242"
    assert read(b"Submitted batch job 17") == "17"
    with pytest.raises(submitit.core.utils.FailedSubmissionError):
        read("sbatch: error: Batch job submission failed: Invalid partition name specified")
    paths = submitit.core.utils.JobPaths(Path("/runs/x/submitit"), "4242")
    assert paths.submission_file == Path("/runs/x/submitit/4242_submission.sh")


def test_one_sbatch_command_for_a_submission_a_dry_run_and_a_chained_start(tmp_path, monkeypatch):
    asked = []

    def slurm(cmd, timeout=30):
        asked.append(cmd)
        return query.Answer(0, "Submitted batch job 31\n", "")

    monkeypatch.setattr(query, "_run", slurm)
    folder = tmp_path / "submitit"
    assert query.submit(folder, "#!/bin/bash\ntrue\n") == "31"
    assert (folder / "31_submission.sh").read_text() == "#!/bin/bash\ntrue\n"
    assert [p.name for p in folder.iterdir()] == ["31_submission.sh"]
    assert query.test_only("#!/bin/bash\ntrue\n")[0]
    assert query.submit_continuation(str(folder / "31_submission.sh"), "tiny", 2, ["n3"]) == ("31", "")
    submitted, tested, chained = asked
    assert submitted[0] == tested[0] == chained[0] == "sbatch"
    assert tested[1:-1] == ["--test-only"] and submitted[1:-1] == []
    assert chained[1:-1] == [
        "--dependency=singleton",
        "--job-name=tiny",
        "--export=ALL,HPC_MM_RESTART=2",
        "--exclude=n3",
    ]


def test_a_refusal_takes_back_the_submission_file(tmp_path, monkeypatch):
    monkeypatch.setattr(
        query, "_run", lambda cmd, timeout=30: query.Answer(1, "", "sbatch: error: invalid partition name specified")
    )
    with pytest.raises(query.Refused, match="invalid partition"):
        query.submit(tmp_path / "submitit", "#!/bin/bash\n")
    assert list((tmp_path / "submitit").iterdir()) == []
