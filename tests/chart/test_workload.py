"""The Deployment's pod: the signaling container and the TURN sidecar, their shared volume,
probes, drain timing, security, spread and resources, as rendered."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart import support

IMAGE = "ghcr.io/rendezvous-signaling/rendezvous:0.1.0"
TURN_DIR = "/run/rendezvous-turn"


def mounts(container: support.Doc) -> dict[str, support.Doc]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def volumes(manifests: support.Manifests) -> dict[str, support.Doc]:
    return {v["name"]: v for v in manifests.pod["volumes"]}


def test_both_containers_run_the_one_image(defaults: support.Manifests) -> None:
    """The service (`serve` on 8000) and the sidecar (`turn-sidecar` on 8081) share the
    image, tagged with the chart's appVersion."""
    service, sidecar = defaults.pod["containers"]
    assert (service["name"], sidecar["name"]) == ("rendezvous", "turn-sidecar")
    assert service["image"] == sidecar["image"] == IMAGE
    assert service["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert sidecar["args"] == ["turn-sidecar", "--host", "0.0.0.0", "--port", "8081"]


def test_sidecar_writes_where_the_service_reads(defaults: support.Manifests) -> None:
    """One in-memory emptyDir: writable in the sidecar, read-only in the service, and both
    name the same credentials file on it."""
    volume = volumes(defaults)["turn-credentials"]
    assert volume["emptyDir"]["medium"] == "Memory"
    service, sidecar = (defaults.container(n) for n in ("rendezvous", "turn-sidecar"))
    assert mounts(service)["turn-credentials"] == {
        "name": "turn-credentials",
        "mountPath": TURN_DIR,
        "readOnly": True,
    }
    assert mounts(sidecar)["turn-credentials"]["mountPath"] == TURN_DIR
    assert not mounts(sidecar)["turn-credentials"].get("readOnly", False)
    file = f"{TURN_DIR}/credentials.json"
    assert defaults.environment(service)["WEBRTC_TURN_CREDENTIALS_FILE"] == file
    assert defaults.environment(sidecar)["WEBRTC_TURN_CREDENTIALS_FILE"] == file


def test_turn_secret_is_mounted_into_the_sidecar_alone(defaults: support.Manifests) -> None:
    """The default source is the mounted Secret; only the sidecar mounts it (one key, group
    readable), and the service gets no TURN secret in any form."""
    volume = volumes(defaults)["turn-secret"]["secret"]
    assert volume["secretName"] == "rv-rendezvous-turn"
    assert volume["items"] == [{"key": "static-auth-secret", "path": "static-auth-secret"}]
    assert volume["defaultMode"] == 0o440
    mounted_by = [c["name"] for c in defaults.pod["containers"] if "turn-secret" in mounts(c)]
    assert mounted_by == ["turn-sidecar"]
    sidecar_env = defaults.environment(defaults.container("turn-sidecar"))
    assert (
        sidecar_env["WEBRTC_TURN_SECRET_DIR"]
        == mounts(defaults.container("turn-sidecar"))["turn-secret"]["mountPath"]
    )
    assert "WEBRTC_TURN_SECRET_NAME" not in sidecar_env
    assert "WEBRTC_TURN_SECRET" not in defaults.environment(defaults.container("rendezvous"))


@pytest.mark.parametrize("scenario", sorted(support.scenarios()))
def test_turn_secret_never_reaches_the_service_beside_a_sidecar(
    scenario_renders: dict[str, support.Manifests], scenario: str
) -> None:
    """In every scenario with the sidecar, no volume or variable of the signaling container
    refers to the TURN Secret."""
    manifests = scenario_renders[scenario]
    if not any(c["name"] == "turn-sidecar" for c in manifests.pod["containers"]):
        return
    service = manifests.container("rendezvous")
    turn_secret = manifests.environment(manifests.container("turn-sidecar")).get(
        "WEBRTC_TURN_SECRET_NAME", "rv-rendezvous-turn"
    )
    secret_volumes = {
        name for name, v in volumes(manifests).items() if "secret" in v or "projected" in v
    }
    assert not secret_volumes & set(mounts(service))
    refs = [
        v["valueFrom"]["secretKeyRef"]
        for v in service.get("env", [])
        if "valueFrom" in v and "secretKeyRef" in v["valueFrom"]
    ]
    assert all(ref["name"] != turn_secret for ref in refs)


def test_pod_fsgroup_matches_the_image_user(defaults: support.Manifests) -> None:
    """The sidecar writes its file 0640; the pod's fsGroup (the image's gid 10001) owns the
    volumes, so the service can read it."""
    context = defaults.pod["securityContext"]
    assert context["fsGroup"] == context["runAsGroup"] == 10001
    assert context["runAsUser"] == 10001


@pytest.mark.parametrize("scenario", sorted(support.scenarios()))
def test_every_pod_runs_restricted(
    scenario_renders: dict[str, support.Manifests], scenario: str
) -> None:
    """Pod Security Standard "restricted" in every pod and container: non-root, seccomp
    RuntimeDefault, read-only root, no privilege escalation, every capability dropped."""
    for where, spec in scenario_renders[scenario].pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context.get("privileged") is not True, where


def test_probes_are_separate_for_both_containers(defaults: support.Manifests) -> None:
    """Liveness asks /healthz and readiness /readyz, each container on its own port."""
    for name, port in (("rendezvous", "http"), ("turn-sidecar", "turn-http")):
        container = defaults.container(name)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert [p["name"] for p in container["ports"]] == [port]


@pytest.mark.parametrize(("pre_stop", "window", "deadline"), [(5, 5, 25), (0, 1, 2), (15, 10, 120)])
def test_grace_period_outlasts_pre_stop_and_drain_deadline(
    chart: helm.Chart, pre_stop: int, window: int, deadline: int
) -> None:
    """terminationGracePeriodSeconds is derived from the same values as the preStop wait
    and WEBRTC_DRAIN_DEADLINE, and always exceeds their sum: Kubernetes never kills a
    drain in progress."""
    drain = {"preStopSeconds": pre_stop, "windowSeconds": window, "deadlineSeconds": deadline}
    manifests = support.render({"drain": drain})
    service = manifests.container("rendezvous")
    assert service["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre_stop)]
    env = manifests.environment(service)
    assert float(env["WEBRTC_DRAIN_DEADLINE"]) == deadline
    assert float(env["WEBRTC_DRAIN_WINDOW"]) == window
    assert manifests.pod["terminationGracePeriodSeconds"] > pre_stop + deadline


def test_pods_spread_over_nodes_and_zones(defaults: support.Manifests) -> None:
    """Topology spread by hostname and zone, selecting this release's signaling pods."""
    selector = defaults.named("Deployment", "")["spec"]["selector"]["matchLabels"]
    constraints = defaults.pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"] == selector
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"


def test_both_containers_have_requests_and_a_memory_limit(defaults: support.Manifests) -> None:
    for container in defaults.pod["containers"]:
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]


def test_replicas_are_left_to_the_hpa_when_it_is_on(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """With the HPA the Deployment states no replica count (an upgrade would reset the
    HPA's choice); without it, replicaCount."""
    assert "replicas" not in scenario_renders["defaults"].named("Deployment", "")["spec"]
    fixed = scenario_renders["fixed-replicas"]
    assert fixed.named("Deployment", "")["spec"]["replicas"] == 3
    assert fixed.all("HorizontalPodAutoscaler") == []


def test_without_sidecar_the_service_mints_from_a_secret_ref(chart: helm.Chart) -> None:
    """Sidecar off but TURN URLs given: the service itself gets WEBRTC_TURN_SECRET, by
    secretKeyRef, and the pod has no sidecar or credentials volume."""
    manifests = support.render({"turn": {"sidecar": {"enabled": False}}})
    assert [c["name"] for c in manifests.pod["containers"]] == ["rendezvous"]
    assert "turn-credentials" not in volumes(manifests)
    env = manifests.environment(manifests.container("rendezvous"))
    assert env["WEBRTC_TURN_SECRET"] == {
        "secretKeyRef": {"name": "rv-rendezvous-turn", "key": "static-auth-secret"}
    }
    assert env["WEBRTC_TURN_URLS"].startswith("turn:")
    assert "WEBRTC_TURN_CREDENTIALS_FILE" not in env


def test_single_instance_has_no_turn_and_no_redis(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """The smallest install: one pod, memory backend, no TURN Secret at all."""
    manifests = scenario_renders["single-instance"]
    assert manifests.named("Deployment", "")["spec"]["replicas"] == 1
    env = manifests.environment(manifests.container("rendezvous"))
    assert not {"REDIS_URL", "WEBRTC_TURN_SECRET", "WEBRTC_TURN_URLS"} & set(env)
    assert [s["metadata"]["name"] for s in manifests.all("Secret")] == ["rv-rendezvous-jwt"]
    assert manifests.all("StatefulSet") == []
