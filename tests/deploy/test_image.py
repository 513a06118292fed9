"""service/Dockerfile and .dockerignore. No Docker engine runs on these machines, so the
image is never built here. Instead: hadolint lints the Dockerfile; its structure is read
and checked (two stages on one pinned slim base, a numeric non-root user, no build tools
in the final stage, the entrypoint and command the chart relies on); the wheel is built
from exactly the files .dockerignore lets into the context; and the console scripts the
image runs are run here, from this venv, with the Dockerfile's own command line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import DockerIgnore, Stage, stages
from tests.deploy.tools import ROOT, run, tool
from tests.support.process import Daemon
from tests.support.server import free_port

DOCKERFILE = ROOT / "service" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VENV_BIN = Path(sys.executable).parent
BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")
UID = "10001"
STARTUP_SECONDS = 20.0
DRAIN_DEADLINE_SECONDS = 25.0  # WEBRTC_DRAIN_DEADLINE's default; an idle drain is quicker


@pytest.fixture(scope="module")
def builder() -> Stage:
    return stages(DOCKERFILE.read_text())[0]


@pytest.fixture(scope="module")
def final() -> Stage:
    return stages(DOCKERFILE.read_text())[-1]


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    return DockerIgnore(DOCKERIGNORE.read_text())


# hadolint


def test_hadolint_reports_nothing() -> None:
    """hadolint (every rule, every severity) has nothing to say about the Dockerfile."""
    result = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_flags_a_floating_base(tmp_path: Path) -> None:
    """The lint above is live: the same file on `python:latest` fails with DL3007."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(BASE.sub("python:latest", DOCKERFILE.read_text()))
    result = run(tool("hadolint"), "--no-color", str(broken))
    assert result.returncode != 0 and "DL3007" in result.stdout, result.stdout + result.stderr


# structure


def test_two_stages_on_one_pinned_slim_bookworm_base() -> None:
    """A builder and a runtime stage, both FROM the same fully versioned
    python:3.11.N-slim-bookworm tag, so the copied venv runs on its own interpreter."""
    found = stages(DOCKERFILE.read_text())
    assert len(found) == 2, [s.image for s in found]
    assert found[0].alias == "builder"
    assert BASE.fullmatch(found[0].image), found[0].image
    assert found[1].image == found[0].image


def test_builder_builds_the_wheel_into_opt_venv(builder: Stage) -> None:
    """The builder makes the venv at /opt/venv and installs the wheel it built from the
    context, with no pip cache."""
    commands = " ".join(i.arguments for i in builder.all("RUN"))
    assert "python -m venv /opt/venv" in commands
    assert "pip wheel" in commands and "--no-deps" in commands
    assert "/opt/venv/bin/pip install" in commands
    assert builder.env().get("PIP_NO_CACHE_DIR") == "1"
    assert commands.count("--no-cache-dir") == commands.count("pip ")


def test_final_stage_copies_only_the_venv(final: Stage) -> None:
    """The runtime stage takes the venv from the builder and nothing from the context:
    no source tree, no wheel, no ADD."""
    assert [i.arguments for i in final.all("COPY")] == ["--from=builder /opt/venv /opt/venv"]
    assert not final.all("ADD")


def test_final_stage_has_no_build_tools(final: Stage) -> None:
    """No package manager, compiler or pip runs in the runtime stage: its only RUN creates
    the user."""
    forbidden = re.compile(r"\b(apt|apt-get|dpkg|gcc|cc|make|build-essential|pip|pip3)\b")
    for instruction in final.all("RUN"):
        assert not forbidden.search(instruction.arguments), instruction.arguments
    assert [i.words()[0] for i in final.all("RUN")] == ["groupadd"]


def test_runs_as_numeric_non_root_user(final: Stage) -> None:
    """USER is the numeric 10001:10001 (runAsNonRoot can check a number, not a name), and
    that uid and gid exist in the image."""
    assert final.last("USER").arguments == f"{UID}:{UID}"
    assert final.instructions.index(final.last("USER")) > final.instructions.index(
        final.last("COPY")
    ), "USER must come after the files are in place"
    creates = final.last("RUN").arguments
    assert f"groupadd --system --gid {UID}" in creates
    assert f"useradd --system --uid {UID} --gid {UID}" in creates


def test_entrypoint_and_default_command(final: Stage) -> None:
    """`rendezvous` is the entrypoint, `serve` on 0.0.0.0:8000 the default command, both in
    exec form (PID 1 gets SIGTERM and drains); the sidecar overrides only the args."""
    assert final.last("ENTRYPOINT").exec_form() == ["rendezvous"]
    assert final.last("CMD").exec_form() == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert final.last("EXPOSE").words() == ["8000", "8081"]


def test_runtime_environment(final: Stage) -> None:
    """The venv is first on PATH (the helm test pod's `python` has websockets); Python never
    writes bytecode on the read-only root and never buffers its logs; HOME is /tmp."""
    env = final.env()
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/tmp"


def test_oci_labels_match_the_project(final: Stage) -> None:
    """The OCI labels state the project's own name, version and licence."""
    labels = final.labels()
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == PYPROJECT["project"]["name"]
    assert labels[prefix + "version"] == PYPROJECT["project"]["version"]
    assert labels[prefix + "licenses"] == PYPROJECT["project"]["license"]
    assert labels[prefix + "source"].startswith("https://")
    assert labels[prefix + "description"]


# .dockerignore and the build context


def test_dockerignore_keeps_machine_state_and_tests_out(ignore: DockerIgnore) -> None:
    """A local venv, git's history, tests, caches and egg-info never enter the context; the
    package, pyproject.toml and README.md do."""
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_cli.py",
        "loadtest/locustfile.py",
        "charts/rendezvous/values.yaml",
        "service/Dockerfile",
        "service/rendezvous/__pycache__/cli.cpython-311.pyc",
        "service/rendezvous.egg-info/PKG-INFO",
        "build/lib/rendezvous/cli.py",
        ".env",
    ):
        assert ignore.excluded(path), path
    for path in ("pyproject.toml", "README.md", "service/rendezvous/cli.py"):
        assert not ignore.excluded(path), path


def test_context_holds_the_package_and_nothing_else(ignore: DockerIgnore) -> None:
    """Walking this checkout as BuildKit would: the context is pyproject.toml, README.md and
    the package's files (sources and package data), and every file the Dockerfile COPYs
    from the context is in it."""
    context = ignore.context(ROOT)
    package = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "service" / "rendezvous").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert context == {"pyproject.toml", "README.md"} | package
    assert "service/rendezvous/py.typed" in context
    for stage in stages(DOCKERFILE.read_text()):
        for copy in stage.all("COPY"):
            *sources, _ = copy.words()
            for source in sources:
                if source.startswith("--from="):
                    break
                prefix = source.rstrip("/")
                assert any(f == prefix or f.startswith(prefix + "/") for f in context), source


def test_wheel_builds_from_the_context_alone(ignore: DockerIgnore, tmp_path: Path) -> None:
    """`pip wheel --no-deps`, as the builder stage runs it, over a copy of exactly the files
    the context holds: the wheel has every module, the py.typed marker and the
    `rendezvous` console script (so a subpackage without __init__.py or a file the
    .dockerignore drops would show here)."""
    source = tmp_path / "context"
    for relative in ignore.context(ROOT):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, source / relative)
    result = run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
        "--disable-pip-version-check", "--wheel-dir", str(tmp_path / "wheels"), str(source),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("rendezvous-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    package = ROOT / "service"
    modules = {p.relative_to(package).as_posix() for p in package.glob("rendezvous/**/*.py")}
    assert modules <= names, sorted(modules - names)
    assert "rendezvous/py.typed" in names
    assert re.search(r"^rendezvous = rendezvous\.cli:main$", scripts, re.MULTILINE), scripts


# the console scripts the image runs


def _image_command(final: Stage, port: int) -> list[str]:
    """ENTRYPOINT + CMD, the entrypoint resolved in this venv (as PATH resolves it to
    /opt/venv/bin in the image), listening on loopback and `port` instead."""
    (entrypoint,) = final.last("ENTRYPOINT").exec_form()
    command = final.last("CMD").exec_form()
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    return [str(VENV_BIN / entrypoint), *command]


def test_default_command_serves_health_and_drains_on_sigterm(final: Stage, tmp_path: Path) -> None:
    """The image's default command, run from this venv with the environment the image and
    the chart give it (a JWT key, PYTHONDONTWRITEBYTECODE, HOME=/tmp's stand-in), answers
    /healthz and /readyz, drains and exits on SIGTERM as the kubelet stops it, and writes
    nothing to its working directory or HOME: what a read-only root filesystem needs."""
    port = free_port()
    home, workdir = tmp_path / "home", tmp_path / "workdir"
    home.mkdir()
    workdir.mkdir()
    env = {
        **os.environ,
        **final.env(),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "HOME": str(home),
        "JWT_SECRET_KEY": "k" * 48,
        "WEBRTC_STUN_URLS": "",
    }
    env.pop("XDG_STATE_HOME", None)
    daemon = Daemon(
        _image_command(final, port), log_path=tmp_path / "serve.log", cwd=workdir, env=env
    )
    daemon.start()
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", daemon)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        status = daemon.stop(signal.SIGTERM, timeout=DRAIN_DEADLINE_SECONDS)
    finally:
        if daemon.running:
            daemon.kill()
    # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly: either exit
    # status is a clean stop; the log says the drain finished.
    assert status in (0, -signal.SIGTERM), daemon.log_tail()
    assert '"drained"' in daemon.log(), daemon.log_tail()
    assert not list(home.iterdir()) and not list(workdir.iterdir())


def _wait_for(url: str, daemon: Daemon) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert daemon.running, f"exited early:\n{daemon.log_tail()}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered:\n{daemon.log_tail()}"
        time.sleep(0.1)


@pytest.mark.parametrize(("command", "option"), [("turn-sidecar", "--port"), ("token", "--user")])
def test_other_console_commands_run(command: str, option: str) -> None:
    """The sidecar container's command and the token minting NOTES.txt points at start
    from the venv's console script (imports resolve, the parser builds)."""
    result = run(str(VENV_BIN / "rendezvous"), command, "--help")
    assert result.returncode == 0, result.stderr
    assert option in result.stdout
