"""The browser tests run only in a loopback-only network namespace (scripts/lib.sh's
rv_run_pytest puts the whole pytest run in one; ../shared/TESTING.md): Chromium, the
servers and the peers then cannot reach anything but 127.0.0.1 and ::1, whatever a page
or a default configuration asks for. Under CI=true a run that is not isolated fails;
elsewhere these tests skip, saying why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.coturn import coturn  # noqa: F401
from tests.support.redis import redis_server  # noqa: F401

# The kernel's list for this process's own network namespace. /sys/class/net would show
# the namespace of whoever mounted /sys (`unshare -n` keeps the host's mount), so it lists
# the host's interfaces even inside an isolated run.
NET_DEV = Path("/proc/self/net/dev")
ISOLATION_HINT = (
    "run them through ./scripts/test, or as root: "
    "unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m pytest tests/browser'"
)


def network_interfaces() -> list[str]:
    """The names of this process's network interfaces (two header lines, then one each)."""
    lines = NET_DEV.read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


@pytest.fixture(autouse=True, scope="session")
def loopback_only_network() -> None:
    """Fail (under CI) or skip (elsewhere) unless the only interface is `lo`."""
    interfaces = network_interfaces()
    if interfaces == ["lo"]:
        return
    reason = (
        f"not in a loopback-only network namespace (interfaces: {', '.join(interfaces)}): "
        f"{ISOLATION_HINT}"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)
