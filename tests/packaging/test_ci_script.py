"""``.ci/run`` builds its fresh virtualenv in a folder of its own: ``.venv`` is the environment the
README's commands set up and a developer works in, and CI must never delete it."""

from __future__ import annotations

import re
import subprocess

from .conftest import REPO


def ci_venv_folders() -> dict[str, set[str]]:
    """The folders ``.ci/run`` deletes, creates as a virtualenv and activates (variables as set
    in the script itself)."""
    script = (REPO / ".ci" / "run").read_text()
    variables = dict(re.findall(r"^([A-Z_]+)=([^\s$]+)$", script, flags=re.MULTILINE))

    def expand(word: str) -> str:
        return re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: variables[m.group(1)], word.strip('"'))

    def found(pattern: str) -> set[str]:
        return {expand(w).rstrip("/") for w in re.findall(pattern, script, flags=re.MULTILINE)}

    return {
        "deleted": found(r"^\s*rm -rf (\S+)"),
        "created": found(r"-m venv (\S+)"),
        "activated": {f.removesuffix("/bin/activate") for f in found(r"^\s*\. (\S+)")},
    }


def test_ci_makes_its_own_virtualenv_and_leaves_dot_venv_alone() -> None:
    folders = ci_venv_folders()
    assert folders["created"] == folders["activated"] == folders["deleted"], folders
    (venv,) = folders["created"]
    assert venv != ".venv" and not venv.startswith(".venv/"), venv
    # Out of git, the wheel (built from git's file list) and the Docker build context.
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", f"{venv}/bin/python"], cwd=REPO, timeout=30
    )
    assert ignored.returncode == 0, f"git does not ignore {venv}"
    docker = (REPO / ".dockerignore").read_text().splitlines()
    assert venv in docker, f".dockerignore lets {venv} into the build context"
