"""charts/redis on its own: the password from a Secret, restricted pods, probes, optional
persistence; and its container command run for real (redis-server from the Debian package,
on a loopback port) to show the password reaches Redis on stdin and the probe works."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.chart import support
from tests.support.process import require_program, unused_port

STARTUP_DEADLINE_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 10.0
PASSWORD = "p@ss/w+rd%1"  # characters a URL or a shell would mangle if not handled


def render_redis(values: dict[str, Any] | None = None) -> support.Manifests:
    return support.render(values, chart_dir=support.REDIS_CHART_DIR)


def redis_pod(manifests: support.Manifests) -> support.Doc:
    spec: support.Doc = manifests.one("StatefulSet")["spec"]["template"]["spec"]
    return spec


def test_password_comes_from_the_charts_own_secret(redis_chart: helm.Chart) -> None:
    """Without auth values the chart makes a Secret (generated password, ready URL), and
    the container reads the password from it by secretKeyRef."""
    manifests = render_redis()
    secret = support.decoded(manifests.one("Secret", "rv-redis"))
    assert len(secret["redis-password"]) == 32
    assert secret["redis-url"] == (
        f"redis://:{secret['redis-password']}@rv-redis.signaling.svc:6379/0"
    )
    (container,) = redis_pod(manifests)["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs == {
        "REDIS_PASSWORD": {"name": "rv-redis", "key": "redis-password"},
        "REDISCLI_AUTH": {"name": "rv-redis", "key": "redis-password"},
    }
    assert image_tag(container) == redis_chart.metadata["appVersion"]
    assert re.fullmatch(r"7\.\d+\.\d+", image_tag(container))  # a pinned Redis 7 release


def image_tag(container: support.Doc) -> str:
    return str(container["image"]).rpartition(":")[2]


def test_existing_secret_is_used_and_none_is_made() -> None:
    manifests = render_redis(
        {"auth": {"existingSecret": "ops-redis", "existingSecretPasswordKey": "pw"}}
    )
    assert manifests.all("Secret") == []
    (container,) = redis_pod(manifests)["containers"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {"ops-redis"}
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]} == {"pw"}


def test_no_password_in_config_or_command() -> None:
    """The given password is in the Secret only: not in redis.conf, not in the command."""
    manifests = render_redis({"auth": {"password": "Sekrit-Pass-1"}})
    assert "Sekrit-Pass-1" in support.decoded(manifests.one("Secret"))["redis-password"]
    assert "Sekrit-Pass-1" not in str(manifests.one("ConfigMap"))
    assert "Sekrit-Pass-1" not in str(manifests.one("StatefulSet"))


def test_restricted_pod_with_probes_and_resources() -> None:
    manifests = render_redis()
    spec = redis_pod(manifests)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "redis"}
    assert "redis-cli" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert "memory" in container["resources"]["limits"]
    for version in support.KUBE_VERSIONS:
        for doc in manifests:
            support.validate_api(doc, version)


def test_default_storage_is_an_empty_dir_without_snapshots() -> None:
    manifests = render_redis()
    volumes = {v["name"]: v for v in redis_pod(manifests)["volumes"]}
    assert "emptyDir" in volumes["data"]
    conf = manifests.one("ConfigMap")["data"]["redis.conf"]
    assert 'save ""' in conf and "appendonly no" in conf
    assert "volumeClaimTemplates" not in manifests.one("StatefulSet")["spec"]


def test_persistence_uses_a_claim_and_the_append_only_file() -> None:
    manifests = render_redis({"persistence": {"enabled": True, "size": "5Gi"}})
    statefulset = manifests.one("StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "data" not in {v["name"] for v in redis_pod(manifests)["volumes"]}
    assert "appendonly yes" in manifests.one("ConfigMap")["data"]["redis.conf"]
    for doc in manifests:
        support.validate_api(doc, support.KUBE_VERSIONS[0])


def test_the_rendered_command_starts_redis_with_the_password(tmp_path: Path) -> None:
    """The container's own command and config, run with redis-server: the password given
    on stdin is enforced, the readiness probe's command passes with REDISCLI_AUTH and fails
    without, and SIGTERM reaches redis-server (the shell exec'd it) so it exits at once."""
    server = require_program("redis-server", package="redis-server")
    require_program("redis-cli", package="redis-server")  # the probe's program
    port = unused_port()
    manifests = render_redis({"service": {"port": port}})
    conf = manifests.one("ConfigMap")["data"]["redis.conf"]
    # Only what a laptop lacks changes: /data and the config path; listen on loopback.
    conf = conf.replace("dir /data", f"dir {tmp_path}").replace("bind * -::*", "bind 127.0.0.1")
    (tmp_path / "redis.conf").write_text(conf)
    (container,) = redis_pod(manifests)["containers"]
    (script,) = container["args"]
    script = script.replace("/etc/redis/redis.conf", str(tmp_path / "redis.conf"))
    assert container["command"] == ["sh", "-c"]
    bin_dir = str(Path(server).parent)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_PASSWORD": PASSWORD}
    probe = container["readinessProbe"]["exec"]["command"]
    with subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL) as redis:
        try:
            assert wait_ready(probe, env={**env, "REDISCLI_AUTH": PASSWORD})
            unauthenticated = subprocess.run(probe, env=env, capture_output=True, timeout=10)
            assert unauthenticated.returncode != 0
            redis.send_signal(signal.SIGTERM)
            assert redis.wait(timeout=STOP_DEADLINE_SECONDS) == 0
        finally:
            if redis.poll() is None:
                redis.kill()


def wait_ready(probe: list[str], *, env: dict[str, str]) -> bool:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if subprocess.run(probe, env=env, capture_output=True, timeout=10).returncode == 0:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("password", ["has space", 'quote"d', "back\\slash"])
def test_schema_refuses_passwords_redis_conf_cannot_hold(password: str) -> None:
    with pytest.raises(helm.HelmValuesError), support.load(support.REDIS_CHART_DIR) as chart:
        chart.validate_schema({"auth": {"password": password}})
