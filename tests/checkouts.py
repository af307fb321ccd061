"""A user's code in a git checkout, for the tests of the submitted-code snapshot: made, changed and
committed with the real git."""

import subprocess
from pathlib import Path


def git(folder: Path, *args: str) -> str:
    """git -C FOLDER ARGS...; its output, stripped."""
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit_new(top: Path, message: str = "one") -> Path:
    """Make the folder `top` (already holding the user's files) a checkout with everything committed."""
    git(top.parent, "init", "-q", str(top))
    git(top, "config", "user.email", "user@example.com")
    git(top, "config", "user.name", "user")
    git(top, "add", "-A")
    git(top, "commit", "-qm", message)
    return top
