"""The README's job-file reference is checked against the schema, and its commands against CI."""

import dataclasses
import re
import typing

from hpc_mm.job.coerce import field_names
from hpc_mm.job.spec import JobSpec

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def schema_keys(cls=JobSpec, prefix=""):
    hints = typing.get_type_hints(cls)
    for name in field_names(cls):
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            yield from schema_keys(tp, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_job_key_is_documented():
    documented = set(re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)?)`", README))
    missing = [k for k in schema_keys() if k not in documented]
    assert not missing, f"README's job file reference lacks {missing}"


def test_ci_runs_the_readme_test_command():
    assert "scripts/test" in README and "scripts/demo" in README
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_difference_hpc_mm_makes_is_in_the_readmes_table():
    """One table of what hpc-mm runs differently from a launch script, in the code and in the README."""
    from hpc_mm.importer.differences import DIFFERENCES

    readme = (ROOT / "README.md").read_text()
    missing = [key for key, why in DIFFERENCES.items() if f"| `{key}` | {why} |" not in readme]
    assert not missing, missing
