"""k8s/kind-up.sh without kind, Docker or a cluster. shellcheck lints it; its dry run must
print the expected commands in order and run none of them (the tools are replaced by spies
that record any call, and the dry run must also work with no such tool on PATH at all);
a real run against those spies must run exactly what the dry run printed; and a missing
tool stops a real run with one line naming it, before anything runs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.tools import ROOT, run, tool

SCRIPT = ROOT / "k8s" / "kind-up.sh"
TOOLS = ("kind", "kubectl", "helm", "docker")
# The only programs the script (and the spies) may use besides TOOLS. The machine's own
# /usr/bin may hold a kubectl (cloud SDKs install one), so tests build a PATH of these.
BASE_PROGRAMS = (
    "bash",
    "env",
    "dirname",
    "basename",
    "grep",
    "mktemp",
    "od",
    "tr",
    "rm",
    "cat",
    "cp",
)
DEV_VALUES = yaml.safe_load((ROOT / "k8s" / "dev" / "values-dev.yaml").read_text())
IMAGE = f"{DEV_VALUES['image']['repository']}:{DEV_VALUES['image']['tag']}"
TURN = DEV_VALUES["turn"]["secret"]
SECRET_FILE = re.compile(r"(--from-file=static-auth-secret=)\S+")

# What a first run does, in order (each line a prefix of the printed command).
EXPECTED = [
    "kind create cluster --config k8s/kind-config.yaml",
    "kubectl --context kind-rendezvous apply -f https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-v",
    "kubectl --context kind-rendezvous --namespace ingress-nginx wait pod --for=condition=Ready",
    "kubectl --context kind-rendezvous apply -f k8s/dev/namespace.yaml",
    f"kubectl --context kind-rendezvous --namespace rendezvous create secret generic "
    f"{TURN['existingSecret']} --from-file={TURN['key']}=",
    "kubectl --context kind-rendezvous apply -k k8s/dev",
    "helm dependency build charts/rendezvous",
    f"docker build -f service/Dockerfile -t {IMAGE} .",
    f"kind load docker-image {IMAGE} --name rendezvous",
    "helm --kube-context kind-rendezvous upgrade --install rendezvous charts/rendezvous "
    "--namespace rendezvous --values k8s/dev/values-dev.yaml --wait",
    "kubectl --context kind-rendezvous --namespace rendezvous wait deployment --all",
]  # fmt: skip

# Stands in for a tool: records its name and arguments (quoted as the script quotes
# them), keeps the content of a --from-file secret, and answers every `get` with
# "not there" so the script takes its first-run path.
SPY = r"""#!/usr/bin/env bash
{ printf '%s' "$(basename "$0")"; printf ' %q' "$@"; printf '\n'; } >>"$SPY_LOG"
for argument in "$@"; do
    case "$argument" in
        get) exit 1 ;;
        --from-file=*) cp "${argument##*=}" "$SPY_LOG.secret" ;;
    esac
done
exit 0
"""


def _spies(directory: Path, tools: tuple[str, ...] = TOOLS) -> Path:
    directory.mkdir(exist_ok=True)
    for name in tools:
        path = directory / name
        path.write_text(SPY)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return directory


def _run_script(*args: str, path: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the script from an unrelated directory (it must find the repository itself)."""
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "SPY_LOG": str(tmp_path / "calls.log"),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def base(tmp_path: Path) -> str:
    """A PATH entry holding BASE_PROGRAMS and nothing else."""
    directory = tmp_path / "base"
    directory.mkdir()
    for name in BASE_PROGRAMS:
        found = shutil.which(name, path="/usr/bin:/bin")
        assert found, name
        (directory / name).symlink_to(found)
    return str(directory)


def test_script_passes_shellcheck() -> None:
    result = run(tool("shellcheck"), str(SCRIPT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_is_an_executable_strict_bash_script() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK)


def test_dry_run_prints_the_commands_in_order_and_runs_none(tmp_path: Path, base: str) -> None:
    """With spies standing in for every tool, --dry-run exits 0, prints the first-run
    sequence (cluster, ingress-nginx, namespace, TURN Secret, add-ons, chart
    dependencies, image build and load, chart install, wait) and calls no tool at all."""
    spies = _spies(tmp_path / "bin")
    result = _run_script("--dry-run", path=f"{spies}:{base}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    commands = _commands(result.stdout)
    assert len(commands) == len(EXPECTED), "\n".join(commands)
    for command, expected in zip(commands, EXPECTED, strict=True):
        assert command.startswith(expected), f"{command!r} does not start with {expected!r}"
    assert _calls(tmp_path) == []
    assert "dry run" in result.stdout.splitlines()[-1]


def test_dry_run_pins_the_ingress_nginx_manifest(tmp_path: Path, base: str) -> None:
    """ingress-nginx comes from a fixed release's manifest for kind, never from a branch."""
    result = _run_script("--dry-run", path=base, tmp_path=tmp_path)
    (url,) = re.findall(r"https://\S+", "\n".join(_commands(result.stdout)))
    pinned = r"https://raw\.githubusercontent\.com/kubernetes/ingress-nginx/"
    pinned += r"controller-v\d+\.\d+\.\d+/deploy/static/provider/kind/deploy\.yaml"
    assert re.fullmatch(pinned, url), url


def test_dry_run_needs_none_of_the_tools(tmp_path: Path, base: str) -> None:
    """A dry run works on a machine without kind, kubectl, helm or docker."""
    result = _run_script("--dry-run", path=base, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(_commands(result.stdout)) == len(EXPECTED)
    assert result.stderr == ""


def test_real_run_runs_what_the_dry_run_printed(tmp_path: Path, base: str) -> None:
    """Against the spies (every lookup answering "not there"), a real run calls exactly the
    commands the dry run printed, in the same order, with the same arguments; the TURN
    secret it creates is 64 random hex characters from a temporary file it removes."""
    spies = _spies(tmp_path / "bin")
    dry = _run_script("--dry-run", path=f"{spies}:{base}", tmp_path=tmp_path)
    real = _run_script(path=f"{spies}:{base}", tmp_path=tmp_path)
    assert real.returncode == 0, real.stderr
    lookups = [c for c in _calls(tmp_path) if " get " in f" {c} "]
    assert lookups, "a re-run must look for the cluster and the Secret first"
    calls = [c for c in _calls(tmp_path) if c not in lookups]
    printed = _commands(dry.stdout)
    assert [SECRET_FILE.sub(r"\1FILE", c) for c in calls] == [
        SECRET_FILE.sub(r"\1FILE", c) for c in printed
    ]
    assert _commands(real.stdout) == calls
    assert re.fullmatch(r"[0-9a-f]{64}", (tmp_path / "calls.log.secret").read_text())
    assert not list(tmp_path.glob("tmp.*")), "the secret's temporary file was left behind"
    assert "http://localhost/" in real.stdout


@pytest.mark.parametrize("missing", TOOLS)
def test_a_missing_tool_stops_a_real_run_first(tmp_path: Path, base: str, missing: str) -> None:
    """Without one of the tools, a real run fails with one line naming it and runs none."""
    spies = _spies(tmp_path / "bin", tuple(t for t in TOOLS if t != missing))
    result = _run_script(path=f"{spies}:{base}", tmp_path=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"kind-up.sh: {missing} not found"), line
    assert result.stdout == ""
    assert _calls(tmp_path) == []


def test_unknown_argument_is_a_usage_error(tmp_path: Path, base: str) -> None:
    result = _run_script("--dryrun", path=base, tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: kind-up.sh [--dry-run]")
    assert result.stdout == ""
