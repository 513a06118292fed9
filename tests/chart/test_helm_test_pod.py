"""The `helm test` pod. `helm test` itself needs a cluster; here the pod's shape is checked
as rendered, and its script (the `python -c` program the image runs) is run for real
against a Rendezvous server on loopback, with the environment the pod gives it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.chart import support
from tests.support.server import running_server
from tests.support.tokens import TEST_SECRET

SCRIPT_TIMEOUT_SECONDS = 30.0


def test_pod_is_a_test_hook_outside_the_service(defaults: support.Manifests) -> None:
    """A `helm test` hook, never restarted, that mounts the release's JWT key read-only and
    runs the image's Python; its labels keep it out of the Service and the PDB."""
    pod = defaults.one("Pod", "rv-rendezvous-test")
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["image"] == defaults.container("rendezvous")["image"]
    assert container["command"] == ["python", "-c"]
    (jwt,) = [v for v in spec["volumes"] if v["name"] == "jwt"]
    assert jwt["secret"]["secretName"] == "rv-rendezvous-jwt"
    assert jwt["secret"]["items"] == [{"key": "jwt-secret-key", "path": "key"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["JWT_KEY_FILE"].startswith(
        next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "jwt")
    )
    assert env["SERVICE_URL"] == "ws://rv-rendezvous.signaling.svc:80"
    service_selector = defaults.named("Service", "")["spec"]["selector"]
    assert not service_selector.items() <= pod["metadata"]["labels"].items()


async def run_pod_script(
    manifests: support.Manifests, *, service_url: str, key: str, tmp_path: Path
) -> tuple[int, str]:
    """Run the pod's program as the pod would, but against `service_url`."""
    (container,) = manifests.one("Pod")["spec"]["containers"]
    (script,) = container["args"]
    key_file = tmp_path / "key"
    key_file.write_text(key)
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(SERVICE_URL=service_url, JWT_KEY_FILE=str(key_file))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(SCRIPT_TIMEOUT_SECONDS):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_pod_script_joins_a_room_and_sees_room_state(
    defaults: support.Manifests, tmp_path: Path
) -> None:
    """With the server's key the program mints a token, joins `helm-test` over a WebSocket
    (the token as a subprotocol) and finds room_state listing itself: exit 0."""
    async with running_server() as server:
        code, output = await run_pod_script(
            defaults,
            service_url=f"ws://127.0.0.1:{server.port}",
            key=TEST_SECRET,
            tmp_path=tmp_path,
        )
    assert code == 0, output
    assert "OK: joined helm-test" in output


async def test_pod_script_fails_when_the_join_fails(
    defaults: support.Manifests, tmp_path: Path
) -> None:
    """With a key the server does not accept the join is refused, and the program says so
    and exits non-zero: `helm test` would report the release broken."""
    async with running_server() as server:
        code, output = await run_pod_script(
            defaults,
            service_url=f"ws://127.0.0.1:{server.port}",
            key="wrong-key-" + "w" * 40,
            tmp_path=tmp_path,
        )
    assert code != 0
    assert "FAIL: expected room_state" in output
    assert "unauthorized" in output
