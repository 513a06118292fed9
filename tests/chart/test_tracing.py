"""Tracing in the chart (values `tracing`): the OTEL_* variables the signaling container
gets, checked against what the service's own tracing configuration accepts
(rendezvous.telemetry.tracing.read_tracing_config) and what the real OpenTelemetry SDK
makes of the resource attributes, with `$(VAR)` references expanded as the kubelet
does. No pod runs here: the pod's name and namespace are stand-ins."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
from opentelemetry.sdk.resources import OTELResourceDetector

from rendezvous.telemetry import tracing
from tests.chart import support

ENDPOINT = "http://otel-collector.observability.svc:4317"
ON = {"tracing": {"enabled": True, "endpoint": ENDPOINT}}
# The stand-in pod the kubelet would take fieldRef values from.
POD_FIELDS = {"metadata.name": "rv-rendezvous-7d4b9-x2x9z", "metadata.namespace": "signaling"}
DEV_VALUES = support.ROOT / "k8s" / "dev" / "values-dev.yaml"
# `$$` (an escaped `$`) or `$(NAME)`, as Kubernetes reads them in env values.
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def tracing_values(**overrides: Any) -> dict[str, Any]:
    return {"tracing": {**ON["tracing"], **overrides}}


def kubelet_environment(manifests: support.Manifests, container: support.Doc) -> dict[str, str]:
    """The container's variables as the kubelet sets them: ConfigMap keys, then `env` in
    order, a `$(NAME)` expanded only from a variable defined before it (left as written
    otherwise), fieldRefs from the stand-in pod, a secretKeyRef as `<secret:name/key>`."""
    env: dict[str, str] = {}

    def expand(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return env.get(match.group(1), match.group(0))

        return _REFERENCE.sub(one, text)

    for source in container.get("envFrom", []):
        env.update(manifests.one("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = POD_FIELDS[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = f"<secret:{ref['name']}/{ref['key']}>"
    return env


def env_entries(manifests: support.Manifests) -> dict[str, support.Doc]:
    return {e["name"]: e for e in manifests.container("rendezvous")["env"]}


def otel_names(container: support.Doc) -> set[str]:
    return {
        e["name"]
        for e in container.get("env", [])
        if e["name"].startswith("OTEL_") or e["name"] in ("POD_NAME", "POD_NAMESPACE")
    }


def resource_attributes(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the SDK's own detector reads from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    (the service builds its resource over it)."""
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.setenv(name, env[name])
    return dict(OTELResourceDetector().detect().attributes)


def test_tracing_is_off_by_default_with_no_otel_variable(defaults: support.Manifests) -> None:
    """Off, no container of any pod gets an OTEL_* variable (nor the Downward API ones),
    and the service's configuration reads tracing as off."""
    for where, spec in defaults.pod_specs():
        for container in spec["containers"]:
            assert otel_names(container) == set(), (where, container["name"])
    for config_map in defaults.all("ConfigMap"):
        assert not [k for k in config_map.get("data", {}) if k.startswith("OTEL_")]
    env = kubelet_environment(defaults, defaults.container("rendezvous"))
    assert not tracing.read_tracing_config(env).enabled


def test_scenario_env_enables_the_services_tracing(
    scenario_renders: dict[str, support.Manifests], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ci/tracing-values.yaml: the service accepts the rendered variables and exports over
    OTLP/gRPC with the parent-based ratio sampler at 0.25; every span's resource names the
    pod, its namespace and the Deployment (the kubelet's expansion worked: POD_NAME and
    POD_NAMESPACE come before the variable that refers to them), plus the given attribute."""
    manifests = scenario_renders["tracing"]
    env = kubelet_environment(manifests, manifests.container("rendezvous"))
    config = tracing.read_tracing_config(env)
    assert config == tracing.TracingConfig(
        exporters=("otlp",), protocol="grpc", sampler="parentbased_traceidratio", sampler_ratio=0.25
    )
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == ENDPOINT
    assert resource_attributes(env, monkeypatch) == {
        "service.name": "rendezvous",
        "k8s.namespace.name": "signaling",
        "k8s.pod.name": "rv-rendezvous-7d4b9-x2x9z",
        "k8s.deployment.name": manifests.named("Deployment", "")["metadata"]["name"],
        "deployment.environment.name": "production",
    }


def test_pod_identity_comes_from_the_downward_api(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """POD_NAME and POD_NAMESPACE are fieldRefs, defined before OTEL_RESOURCE_ATTRIBUTES
    (Kubernetes expands `$(VAR)` only from earlier entries)."""
    env = scenario_renders["tracing"].container("rendezvous")["env"]
    names = [e["name"] for e in env]
    entries = {e["name"]: e for e in env}
    assert entries["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert entries["POD_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    attributes = names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert names.index("POD_NAME") < attributes and names.index("POD_NAMESPACE") < attributes
    assert "$(POD_NAME)" in entries["OTEL_RESOURCE_ATTRIBUTES"]["value"]


HTTP, RATIO, PARENT_RATIO = "http/protobuf", "traceidratio", "parentbased_traceidratio"


@pytest.mark.parametrize(
    ("overrides", "protocol", "sampler", "ratio", "sets_arg"),
    [
        ({}, HTTP, PARENT_RATIO, 0.1, True),  # the chart's defaults
        ({"protocol": "grpc", "sampler": "always_on"}, "grpc", "always_on", 1.0, False),
        ({"sampler": RATIO, "samplerArg": ".1"}, HTTP, RATIO, 0.1, True),
        ({"samplerArg": 0}, HTTP, PARENT_RATIO, 0.0, True),
        ({"samplerArg": 1}, HTTP, PARENT_RATIO, 1.0, True),
    ],
)
def test_each_setting_reaches_the_service_as_asked(
    chart: helm.Chart,
    overrides: dict[str, Any],
    protocol: str,
    sampler: str,
    ratio: float,
    sets_arg: bool,
) -> None:
    """Protocol, sampler and ratio (a number or a string) arrive as the service reads
    them; the ratio is set only for the samplers that use one."""
    manifests = support.render(tracing_values(**overrides))
    env = kubelet_environment(manifests, manifests.container("rendezvous"))
    config = tracing.read_tracing_config(env)
    assert (config.enabled, config.protocol, config.sampler) == (True, protocol, sampler)
    assert config.sampler_ratio == ratio
    assert ("OTEL_TRACES_SAMPLER_ARG" in env) is sets_arg


def test_resource_attribute_values_survive_the_encoding(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values with the list's own separators, spaces, `+`, `%` and `$(` reach the SDK as
    written: percent-encoded in the variable, decoded by the SDK, never expanded by the
    kubelet."""
    given = {
        "team": "rtc, core=yes",
        "note": "a+b 100% $(POD_NAME)",
        "replicas": 3,
        "canary": True,
    }
    manifests = support.render(tracing_values(resourceAttributes=given))
    env = kubelet_environment(manifests, manifests.container("rendezvous"))
    attributes = resource_attributes(env, monkeypatch)
    assert {key: attributes[key] for key in given} == {
        "team": "rtc, core=yes",
        "note": "a+b 100% $(POD_NAME)",
        "replicas": "3",
        "canary": "true",
    }


def test_the_sidecar_exports_nothing(scenario_renders: dict[str, support.Manifests]) -> None:
    """The TURN sidecar has no spans: with tracing on it gets no OTEL_* variable, neither
    in `env` nor through its ConfigMap."""
    manifests = scenario_renders["tracing"]
    sidecar = manifests.container("turn-sidecar")
    assert otel_names(sidecar) == set()
    assert not [name for name in manifests.environment(sidecar) if name.startswith("OTEL_")]
    assert otel_names(manifests.container("rendezvous"))


def test_headers_come_from_a_secret_reference(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """OTEL_EXPORTER_OTLP_HEADERS is a secretKeyRef to the named Secret (the chart makes no
    such Secret), and without headersSecret it is not set at all."""
    entry = env_entries(scenario_renders["tracing"])["OTEL_EXPORTER_OTLP_HEADERS"]
    assert entry == {
        "name": "OTEL_EXPORTER_OTLP_HEADERS",
        "valueFrom": {"secretKeyRef": {"name": "otlp-credentials", "key": "headers"}},
    }
    secrets = [s["metadata"]["name"] for s in scenario_renders["tracing"].all("Secret")]
    assert "otlp-credentials" not in secrets
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env_entries(support.render(ON))


def test_schema_has_no_place_for_plain_headers(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(tracing_values(headers="api-key=secret"))
    assert "headers" in str(refused.value)


def test_schema_enums_are_what_the_service_accepts() -> None:
    """The schema's protocol and sampler choices are the service's own lists, so the chart
    neither refuses one the service takes nor passes one that stops it at start."""
    schema = json.loads((support.CHART_DIR / "values.schema.json").read_text())
    block = schema["properties"]["tracing"]["properties"]
    assert set(block["protocol"]["enum"]) == set(tracing.PROTOCOLS)
    assert block["sampler"]["enum"] == list(tracing.SAMPLERS)


@pytest.mark.parametrize(
    ("tracing_block", "mentions"),
    [
        ({"protocol": "http"}, "protocol"),
        ({"sampler": "ratio"}, "sampler"),
        ({"samplerArg": 1.5}, "samplerArg"),
        ({"samplerArg": "1.5"}, "samplerArg"),
        ({"samplerArg": "half"}, "samplerArg"),
        ({"samplerArg": -0.1}, "samplerArg"),
        ({"endpoint": "otel-collector:4317"}, "endpoint"),  # no scheme
        ({"serviceName": ""}, "serviceName"),
        ({"resourceAttributes": {"bad key": "x"}}, "resourceAttributes"),
        ({"resourceAttributes": {"k": {"nested": 1}}}, "resourceAttributes"),
        ({"headersSecret": {"name": "s", "key": ""}}, "key"),
        ({"exporter": "console"}, "exporter"),  # unknown key
    ],
)
def test_schema_refuses_bad_tracing_values(
    chart: helm.Chart, tracing_block: dict[str, Any], mentions: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema({"tracing": tracing_block})
    assert mentions in str(refused.value)


@pytest.mark.parametrize("arg", [0, 0.5, 1, "0", "0.05", "1.0", ".5"])
def test_schema_takes_a_ratio_as_a_number_or_a_string(chart: helm.Chart, arg: Any) -> None:
    chart.validate_schema(tracing_values(samplerArg=arg))
    assert tracing.read_tracing_config(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(arg)}
    ).sampler_ratio == float(arg)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"tracing": {"enabled": True}},
            "tracing.enabled needs tracing.endpoint, the collector's OTLP URL",
        ),
        (
            {**ON, "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "x"}]},
            "extraEnv sets OTEL_SERVICE_NAME, which tracing.enabled sets (or overrides)",
        ),
        (
            {
                **ON,
                "extraEnv": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
            },
            "extraEnv sets POD_NAME, which tracing.enabled sets",
        ),
        (
            tracing_values(resourceAttributes={"k8s.pod.name": "x", "service.name": "y"}),
            "tracing.resourceAttributes sets k8s.pod.name, service.name",
        ),
        (
            {"extraEnv": [{"name": "OTEL_EXPORTER_OTLP_HEADERS", "value": "api-key=secret"}]},
            "extraEnv gives OTEL_EXPORTER_OTLP_HEADERS as a plain value",
        ),
    ],
)
def test_contradictions_fail_the_render_readably(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as failed:
        support.render(values)
    assert "VALUES VALIDATION:" in str(failed.value)
    assert message in str(failed.value)


def test_extra_env_cannot_set_or_override_what_the_block_sets(chart: helm.Chart) -> None:
    """Every variable the service's tracing acts on, the headers and the Downward API
    variables are refused in extraEnv while tracing is on: a duplicate name would leave
    the winner to the tool that applies the pod (kubernetes-validate accepts duplicates;
    the API declares `env` a list map keyed by name, which server-side apply enforces)."""
    owned = sorted({*tracing.VARIABLES, "OTEL_EXPORTER_OTLP_HEADERS", "POD_NAME", "POD_NAMESPACE"})
    extra = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} for name in owned
    ]
    with pytest.raises(helm.HelmRenderError) as failed:
        support.render({**ON, "extraEnv": extra})
    (line,) = [line for line in str(failed.value).splitlines() if "extraEnv sets" in line]
    assert line.split("extraEnv sets ", 1)[1].split(", which")[0].split(", ") == owned


@pytest.mark.parametrize(
    "extra_env",
    [
        [{"name": "OTEL_EXPORTER_OTLP_TIMEOUT", "value": "5000"}],  # not the block's
        [{"name": "OTEL_BSP_MAX_QUEUE_SIZE", "value": "4096"}],
    ],
)
def test_extra_env_keeps_the_variables_the_block_does_not_set(
    chart: helm.Chart, extra_env: list[dict[str, Any]]
) -> None:
    manifests = support.render({**ON, "extraEnv": extra_env})
    assert extra_env[0] in manifests.container("rendezvous")["env"]


def test_extra_env_otel_still_works_with_tracing_off(chart: helm.Chart) -> None:
    """The way before the block (OTEL_* in extraEnv, headers by secretKeyRef) still renders
    and still turns the service's tracing on."""
    extra = [
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": ENDPOINT},
        {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "grpc"},
        {
            "name": "OTEL_EXPORTER_OTLP_HEADERS",
            "valueFrom": {"secretKeyRef": {"name": "otlp", "key": "headers"}},
        },
    ]
    manifests = support.render({"extraEnv": extra})
    env = kubelet_environment(manifests, manifests.container("rendezvous"))
    assert tracing.read_tracing_config(env).protocol == "grpc"
    assert "POD_NAME" not in env and "OTEL_RESOURCE_ATTRIBUTES" not in env


def test_env_names_are_unique_in_every_scenario(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """`env` is a list map keyed by name in the Kubernetes API; kubernetes-validate does
    not check that, so this does."""
    for name, manifests in scenario_renders.items():
        for where, spec in manifests.pod_specs():
            for container in spec["containers"]:
                names = [e["name"] for e in container.get("env", [])]
                assert len(names) == len(set(names)), (name, where, container["name"])


def test_dev_values_trace_through_the_block(chart: helm.Chart) -> None:
    """k8s/dev/values-dev.yaml uses the block, not extraEnv, and its render turns the
    service's tracing on over gRPC to the dev collector."""
    values = helm.values_from_yaml(DEV_VALUES.read_text())
    assert not [e for e in values.get("extraEnv", []) if e["name"].startswith("OTEL_")]
    manifests = support.render(values)
    env = kubelet_environment(manifests, manifests.container("rendezvous"))
    config = tracing.read_tracing_config(env)
    assert (config.enabled, config.protocol) == (True, "grpc")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector.")
    assert "k8s.pod.name=rv-rendezvous-7d4b9-x2x9z" in env["OTEL_RESOURCE_ATTRIBUTES"]
