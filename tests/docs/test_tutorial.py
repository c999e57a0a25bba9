"""The Getting started tutorial (docs/getting-started.md), run as written.

Every ```` ```bash ```` block of the page runs, in page order, as one bash script in an empty
folder: the commands a reader pastes, none left out, none added between them. Two things differ
from a reader's machine, both set from outside the commands: the teacher weights are the stand-in
file (``RDAD_TEACHER_WEIGHTS``, which the page's train command reads: ImageNet weights cannot be
downloaded here), and the page's port 8000 becomes a free port (other servers run on this machine).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, shared_path
from tests.processes import free_port

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

TUTORIAL = REPO / "docs" / "getting-started.md"
PAGE_PORT = "8000"
# The script stops at the first failing command; a server it started goes with it.
PROLOGUE = """\
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
PS4='+ tutorial: '
set -x
"""


def bash_blocks(markdown: str) -> list[str]:
    """The ```` ```bash ```` fenced blocks of a Markdown page, in order."""
    return re.findall(r"^```bash\n(.*?)^```\s*$", markdown, flags=re.M | re.S)


def test_the_page_has_the_whole_flow() -> None:
    """Fast check of what the slow test runs: every step of the flow is a command on the page."""
    script = "\n".join(bash_blocks(TUTORIAL.read_text()))
    for step in ("rdad train", "rdad export", "rdad predict --model", "rdad serve", "/readyz"):
        assert step in script, f"the tutorial lost its {step!r} step"
    assert '--teacher-weights "${RDAD_TEACHER_WEIGHTS:-imagenet}"' in script
    assert PAGE_PORT in script


def test_tutorial_commands_run_as_written(tmp_path: Path) -> None:
    teacher = shared_path("RDAD_TEACHER_WEIGHTS", SHARED / "teachers" / "resnet18_cifar10.pth")
    script = "\n".join(bash_blocks(TUTORIAL.read_text()))
    port = free_port()
    script = script.replace(PAGE_PORT, str(port))

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDAD_")}
    env.update(
        RDAD_TEACHER_WEIGHTS=str(teacher),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        XDG_CACHE_HOME=str(tmp_path / "cache"),  # nothing from the user's rdad cache
        COLUMNS="200",
    )
    proc = subprocess.Popen(
        ["bash", "-c", PROLOGUE + script],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the server too
    )
    try:
        out, err = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the tutorial took over 8 minutes:\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"a tutorial command failed:\n{out[-3000:]}\n{err[-5000:]}"

    # Step 1: the photos. Step 2-3: a trained, exported model.
    assert len(list((work / "parts" / "train" / "good").glob("*.png"))) == 40
    assert (work / "runs" / "parts" / "checkpoint.pt").is_file()
    assert (work / "models" / "parts.onnx").is_file()
    # Step 4 (in-process) and step 5 (through the service): the good part passes, the scratched
    # one is flagged, and the exit status says so.
    verdicts = re.findall(r"^(normal|ANOMALOUS)\s.*?(\S+\.png)$", out, flags=re.M)
    expected = [("normal", "parts/test/good/000.png"), ("ANOMALOUS", "parts/test/scratch/000.png")]
    assert verdicts == expected * 2, out
    assert out.count("exit status 3") == 2, out
    assert re.search(r"^\| image_auroc \| [01]\.\d{4} \|$", out, flags=re.M), out  # rdad eval
    # The curl answer: one JSON result with the verdict.
    assert '"is_anomalous":true' in out.replace(" ", ""), out
    results = work / "results"
    assert (results / "results.csv").is_file()
    assert list(results.rglob("000.overlay.png")), sorted(results.rglob("*"))
    # `kill %1` stopped the server: nothing listens on its port any more.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
