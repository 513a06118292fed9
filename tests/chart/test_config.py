"""What the containers are configured with: the settings ConfigMaps (checksummed, so a
change rolls the pods), the live policy ConfigMap (not checksummed: changes apply in
place), and the environment, checked against what the service and the sidecar read."""

from __future__ import annotations

import hashlib
from typing import Any

import helm_python as helm
import pytest

from rendezvous.policy.document import parse_policy
from rendezvous.policy.effective import resolve
from rendezvous.settings import Settings, load_settings
from rendezvous.telemetry import tracing
from rendezvous.turn.sidecar_settings import SidecarSettings, load_sidecar_settings
from tests.chart import support

SCENARIOS = sorted(support.scenarios())
# A fixed key, so two renders differ only by what a test changes (a generated one differs
# every time offline, and so would its checksum).
FIXED_KEY = {"jwt": {"secretKey": "k" * 40}}
# What the tracing block adds beyond Settings: the OTEL_* variables the service's tracing
# reads, the headers the SDK reads itself, and the Downward API variables they expand.
TRACING_VARIABLES = {*tracing.VARIABLES, "OTEL_EXPORTER_OTLP_HEADERS", "POD_NAME", "POD_NAMESPACE"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pod_template(manifests: support.Manifests) -> support.Doc:
    template: support.Doc = manifests.named("Deployment", "")["spec"]["template"]
    return template


def aliases(model: type[Settings] | type[SidecarSettings]) -> set[str]:
    names: set[str] = set()
    for field in model.model_fields.values():
        alias: Any = field.validation_alias
        names.update(str(choice) for choice in alias.choices)
    return names


def test_settings_configmaps_are_checksummed(defaults: support.Manifests) -> None:
    """checksum/config and checksum/turn-sidecar-config are the sha256 of the rendered
    ConfigMaps, as Helm's `include | sha256sum` computes it."""
    annotations = pod_template(defaults)["metadata"]["annotations"]
    assert annotations["checksum/config"] == sha256(defaults.text("configmap.yaml"))
    assert annotations["checksum/turn-sidecar-config"] == sha256(
        defaults.text("configmap-turn-sidecar.yaml")
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_policy_and_turn_secret_are_in_no_checksum(
    scenario_renders: dict[str, support.Manifests], scenario: str
) -> None:
    """Neither the policy ConfigMap nor the TURN Secret is hashed into the pod template:
    both are followed live, and a change must never roll the pods."""
    manifests = scenario_renders[scenario]
    checksums = set(pod_template(manifests)["metadata"]["annotations"].values())
    assert sha256(manifests.text("configmap-policy.yaml")) not in checksums
    assert sha256(manifests.text("secret-turn.yaml")) not in checksums


def test_a_policy_change_leaves_the_pod_template_alone(chart: helm.Chart) -> None:
    """Changing the policy changes its ConfigMap and nothing of the pod template, so
    Kubernetes starts no rollout: the pods reconcile the new file in place."""
    before = support.render(FIXED_KEY)
    after = support.render({**FIXED_KEY, "policy": {"rooms": {"max_participants": 7}}})
    assert before.text("configmap-policy.yaml") != after.text("configmap-policy.yaml")
    assert pod_template(before) == pod_template(after)


def test_a_turn_secret_change_leaves_the_pod_template_alone(chart: helm.Chart) -> None:
    """The sidecar follows a new TURN secret live; the pods are not rolled for it."""
    before = support.render({**FIXED_KEY, "turn": {"secret": {"value": "a" * 40}}})
    after = support.render({**FIXED_KEY, "turn": {"secret": {"value": "b" * 40}}})
    assert before.text("secret-turn.yaml") != after.text("secret-turn.yaml")
    assert pod_template(before) == pod_template(after)


@pytest.mark.parametrize(
    ("values", "annotation"),
    [
        ({"settings": {"maxConnections": 500}}, "checksum/config"),
        ({"turn": {"sidecar": {"user": "edge"}}}, "checksum/turn-sidecar-config"),
        ({"jwt": {"secretKey": "j" * 40}}, "checksum/jwt-secret"),
    ],
)
def test_a_process_setting_change_rolls_the_pods(
    chart: helm.Chart, values: dict[str, Any], annotation: str
) -> None:
    """Settings read once at start change their checksum, hence the pod template."""
    before = pod_template(support.render(FIXED_KEY))["metadata"]["annotations"]
    after = pod_template(support.render({**FIXED_KEY, **values}))["metadata"]["annotations"]
    assert before[annotation] != after[annotation]


def test_policy_is_mounted_as_a_directory(defaults: support.Manifests) -> None:
    """The policy ConfigMap is a volume mounted as a directory (no subPath, which would
    pin the first version), and WEBRTC_POLICY_FILE names its policy.yaml."""
    volume = next(v for v in defaults.pod["volumes"] if v["name"] == "policy")
    assert volume["configMap"] == {"name": "rv-rendezvous-policy"}
    service = defaults.container("rendezvous")
    (mount,) = [m for m in service["volumeMounts"] if m["name"] == "policy"]
    assert "subPath" not in mount and mount["readOnly"] is True
    env = defaults.environment(service)
    assert env["WEBRTC_POLICY_FILE"] == f"{mount['mountPath']}/policy.yaml"
    policy_map = defaults.named("ConfigMap", "-policy")
    assert set(policy_map["data"]) == {"policy.yaml"}
    assert not policy_map.get("immutable", False)  # kubelet stops updating immutable ones


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_service_environment_is_what_the_service_reads(
    scenario_renders: dict[str, support.Manifests], scenario: str
) -> None:
    """Every variable the signaling container gets is one rendezvous.settings.Settings
    reads (by its alias) or its tracing reads, and every one the sidecar gets, one
    SidecarSettings reads."""
    manifests = scenario_renders[scenario]
    service = set(manifests.environment(manifests.container("rendezvous")))
    assert service <= aliases(Settings) | TRACING_VARIABLES
    for container in manifests.pod["containers"][1:]:
        assert container["name"] == "turn-sidecar"
        assert set(manifests.environment(container)) <= aliases(SidecarSettings)


def environment_values(manifests: support.Manifests, container: support.Doc) -> dict[str, str]:
    """The container's variables as the kubelet would set them, secret references resolved
    from the rendered Secrets (or a stand-in for a Secret made outside the chart), pod
    fields from a stand-in pod."""
    secrets = {s["metadata"]["name"]: support.decoded(s) for s in manifests.all("Secret")}
    stand_ins = {
        "REDIS_URL": "redis://:pw@redis.example.internal:6379/0",
        "WEBRTC_TURN_SECRET": "t",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=k",
    }
    pod_fields = {"metadata.name": "rv-rendezvous-0", "metadata.namespace": support.NAMESPACE}
    values = {}
    for name, value in manifests.environment(container).items():
        if isinstance(value, dict) and "fieldRef" in value:
            value = pod_fields[value["fieldRef"]["fieldPath"]]
        elif isinstance(value, dict):
            ref = value["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"]) or stand_ins[name]
        values[name] = value
    return values


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_configuration_starts_the_service_and_the_sidecar(
    scenario_renders: dict[str, support.Manifests],
    scenario: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rendered environment passes the service's and the sidecar's own settings
    validation (what `rendezvous serve` and `turn-sidecar` check at start), and the
    policy.yaml passes the policy parser and applies over those settings."""
    manifests = scenario_renders[scenario]
    service = environment_values(manifests, manifests.container("rendezvous"))
    for name, value in service.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.has_jwt_key
    assert settings.drain_deadline_seconds == 25
    assert settings.resume_grace_seconds == 10
    policy = parse_policy(manifests.named("ConfigMap", "-policy")["data"]["policy.yaml"].encode())
    resolve(settings, policy)  # PolicyError if it conflicts with this environment
    for container in manifests.pod["containers"][1:]:
        for name in service:
            monkeypatch.delenv(name)
        for name, value in environment_values(manifests, container).items():
            monkeypatch.setenv(name, value)
        sidecar = load_sidecar_settings()
        assert sidecar.turn_url_list


def test_default_policy_states_nothing(defaults: support.Manifests) -> None:
    """The default policy is valid and empty: the environment's values stand."""
    text = defaults.named("ConfigMap", "-policy")["data"]["policy.yaml"]
    assert parse_policy(text.encode()) == parse_policy(b"")


def test_scenario_policy_reaches_the_file_whole(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """A policy given in values arrives in policy.yaml as written (ingress-tls states one)."""
    text = scenario_renders["ingress-tls"].named("ConfigMap", "-policy")["data"]["policy.yaml"]
    policy = parse_policy(text.encode())
    assert policy.allowed_origins == ["https://app.example.com"]
    assert [(o.match, o.max_participants) for o in policy.rooms.overrides] == [
        ("1on1-*", 2),
        ("webinar-*", 500),
    ]


SECRET_VALUES = {
    "jwt": {"secretKey": "jwt-" + "s" * 40},
    "turn": {"secret": {"value": "turn-" + "t" * 40}},
    "redis": {"enabled": False},
    "externalRedis": {"url": "rediss://:redis-pass-word-r1@redis.example.internal:6380/0"},
}


def test_no_secret_value_appears_outside_secrets(chart: helm.Chart) -> None:
    """Given secrets end up in Secrets and nowhere else: not in a ConfigMap, not in a plain
    env value, not in an annotation."""
    manifests = support.render(SECRET_VALUES)
    given = ["jwt-" + "s" * 40, "turn-" + "t" * 40, "redis-pass-word-r1"]
    in_secrets = " ".join(v for s in manifests.all("Secret") for v in support.decoded(s).values())
    for value in given:
        assert value in in_secrets
    for doc in manifests:
        if doc["kind"] != "Secret":
            assert not [v for v in given if v in str(doc)], doc["metadata"]["name"]


def test_secrets_reach_containers_by_secret_key_ref(chart: helm.Chart) -> None:
    """JWT_SECRET_KEY and REDIS_URL come from secretKeyRef, never as a value."""
    manifests = support.render(SECRET_VALUES)
    env = manifests.environment(manifests.container("rendezvous"))
    assert env["JWT_SECRET_KEY"] == {
        "secretKeyRef": {"name": "rv-rendezvous-jwt", "key": "jwt-secret-key"}
    }
    assert env["REDIS_URL"] == {
        "secretKeyRef": {"name": "rv-rendezvous-external-redis", "key": "redis-url"}
    }


SECRET_VARIABLES = {
    "JWT_SECRET_KEY", "REDIS_URL", "REDIS_PASSWORD", "REDISCLI_AUTH",
    "WEBRTC_TURN_SECRET", "WEBRTC_TURN_CREDENTIAL",
    "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
}  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secret_variables_only_ever_come_from_secrets(
    scenario_renders: dict[str, support.Manifests], scenario: str
) -> None:
    """In every container of every pod, a secret-carrying variable is a secretKeyRef, and
    no ConfigMap holds one."""
    manifests = scenario_renders[scenario]
    for where, spec in manifests.pod_specs():
        for container in spec["containers"]:
            for entry in container.get("env", []):
                if entry["name"] in SECRET_VARIABLES:
                    assert "value" not in entry, (where, entry["name"])
                    assert "secretKeyRef" in entry["valueFrom"], (where, entry["name"])
    for config_map in manifests.all("ConfigMap"):
        assert not SECRET_VARIABLES & set(config_map["data"]), config_map["metadata"]["name"]
