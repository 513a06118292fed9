"""k8s/: the dev add-ons and the kind cluster config, without a cluster (no Kubernetes API
server runs here). The add-ons are rendered by the real `kubectl kustomize` and every
object is validated against the Kubernetes API schemas (kubernetes-validate, strict) of
the oldest supported and the newest known version; their wiring is checked against each
other and against the chart's dev values. kind publishes no schema for its config, so
that file is checked field by field against kind's v1alpha4 API instead."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.manifests import KUBERNETES_VERSIONS, describe, schema_problems
from tests.deploy.tools import ROOT, run, tool

DEV = ROOT / "k8s" / "dev"
KIND_CONFIG = ROOT / "k8s" / "kind-config.yaml"
NAMESPACE = "rendezvous"
PINNED_IMAGE = re.compile(r"[a-z0-9./-]+:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?")

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    result = run(tool("kubectl"), "kustomize", str(DEV))
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def dev_values() -> Doc:
    values: Doc = yaml.safe_load((DEV / "values-dev.yaml").read_text())
    return values


def _one(documents: list[Doc], kind: str, name: str) -> Doc:
    found = [
        d
        for d in documents
        if d["kind"] == kind and re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"{kind}/{name}: {[describe(d) for d in documents]}"
    return found[0]


def _container(deployment: Doc) -> Doc:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _deployments(documents: list[Doc]) -> list[Doc]:
    return [d for d in documents if d["kind"] == "Deployment"]


# the rendered add-ons


def test_kustomize_renders_the_three_add_ons(rendered: list[Doc]) -> None:
    """coturn, the OpenTelemetry collector and Jaeger (Deployment + Service each), the
    collector's generated ConfigMap and the namespace; every namespaced object lands in
    the namespace the chart is installed into."""
    kinds = sorted((d["kind"], d["metadata"]["name"].split("-")[0]) for d in rendered)
    assert kinds == sorted(
        [("Namespace", NAMESPACE), ("ConfigMap", "otel")]
        + [(k, n) for n in ("coturn", "otel", "jaeger") for k in ("Deployment", "Service")]
    )
    for document in rendered:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, describe(document)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_the_api_schema(rendered: list[Doc], version: str) -> None:
    """Strict schema validation, as the API server would apply it, at 1.29 and the newest."""
    assert schema_problems(rendered, version) == []


def test_schema_check_catches_a_misplaced_field(rendered: list[Doc]) -> None:
    """The validation above is strict: a field in the wrong place fails it."""
    broken = yaml.safe_load(yaml.safe_dump(_one(rendered, "Deployment", "coturn")))
    broken["spec"]["template"]["spec"]["readOnlyRootFilesystem"] = True
    problems = schema_problems([broken], KUBERNETES_VERSIONS[0])
    assert problems and "readOnlyRootFilesystem" in problems[0], problems


def test_images_are_pinned(rendered: list[Doc]) -> None:
    """Every image names a full version (never `latest`, never a bare major)."""
    for deployment in _deployments(rendered):
        image = _container(deployment)["image"]
        assert PINNED_IMAGE.fullmatch(image), f"{describe(deployment)}: {image}"


def test_pods_are_locked_down(rendered: list[Doc]) -> None:
    """Non-root, RuntimeDefault seccomp, no privilege escalation, read-only root filesystem,
    every capability dropped (coturn keeps NET_BIND_SERVICE, the one `restricted` allows,
    because its binary carries it as a file capability), no service account token,
    requests and limits, both probes."""
    for deployment in _deployments(rendered):
        pod = deployment["spec"]["template"]["spec"]
        name = describe(deployment)
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        container = _container(deployment)
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        allowed_adds = [["NET_BIND_SERVICE"]] if name == "Deployment/coturn" else []
        assert security["capabilities"].get("add", []) in [[], *allowed_adds], name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name
        assert container["readinessProbe"] and container["livenessProbe"], name


def test_services_reach_their_pods(rendered: list[Doc]) -> None:
    """Each Service selects its Deployment's pods, and every target port is a named port
    of that pod's container with the same protocol; probes use declared ports too."""
    for deployment in _deployments(rendered):
        name = deployment["metadata"]["name"]
        service = _one(rendered, "Service", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        container = _container(deployment)
        declared = {(p["name"], p.get("protocol", "TCP")) for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert (port["targetPort"], port.get("protocol", "TCP")) in declared, (name, port)
        names = {n for n, _ in declared}
        for probe in ("readinessProbe", "livenessProbe"):
            action = container[probe].get("httpGet") or container[probe]["tcpSocket"]
            assert action["port"] in names, (name, probe)


# wiring between the add-ons and the chart's dev values


def _service_port(rendered: list[Doc], host: str, port: int, protocol: str = "TCP") -> None:
    """`host` is a dev Service's in-cluster name (short, or <name>.<namespace>.svc...) and
    that Service listens on `port`/`protocol`."""
    name, _, rest = host.partition(".")
    assert rest in ("", f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local"), host
    service = _one(rendered, "Service", name)
    ports = {(p["port"], p.get("protocol", "TCP")) for p in service["spec"]["ports"]}
    assert (port, protocol) in ports, (host, port, protocol, ports)


def test_coturn_and_the_chart_share_one_turn_secret(rendered: list[Doc], dev_values: Doc) -> None:
    """coturn runs in TURN REST mode with its static-auth-secret from the very Secret and
    key the dev values give the chart's TURN sidecar, so the credentials the service
    hands out are ones coturn accepts."""
    coturn = _container(_one(rendered, "Deployment", "coturn"))
    args = coturn["args"]
    assert "--use-auth-secret" in args
    assert "--static-auth-secret=$(TURN_SECRET)" in args
    (variable,) = [e for e in coturn["env"] if e["name"] == "TURN_SECRET"]
    reference = variable["valueFrom"]["secretKeyRef"]
    secret = dev_values["turn"]["secret"]
    assert (reference["name"], reference["key"]) == (secret["existingSecret"], secret["key"])
    assert dev_values["turn"].get("sidecar", {}).get("enabled", True) is not False


def test_dev_turn_urls_point_at_coturn(rendered: list[Doc], dev_values: Doc) -> None:
    """The TURN URLs handed to clients name the coturn Service and the port and transport
    coturn listens on (the --listening-port argument)."""
    coturn = _container(_one(rendered, "Deployment", "coturn"))
    listening = next(a for a in coturn["args"] if a.startswith("--listening-port="))
    transports = set()
    for url in dev_values["turn"]["urls"]:
        match = re.fullmatch(r"turn:([a-z0-9.-]+):(\d+)\?transport=(udp|tcp)", url)
        assert match, url
        host, port, transport = match.groups()
        assert listening == f"--listening-port={port}"
        _service_port(rendered, host, int(port), transport.upper())
        transports.add(transport)
    assert transports == {"udp", "tcp"}


def test_collector_receives_otlp_and_exports_to_jaeger(rendered: list[Doc]) -> None:
    """The collector's config (the generated ConfigMap, mounted where --config points)
    receives OTLP on the ports the container declares, and its traces pipeline ends in an
    OTLP exporter aimed at Jaeger's OTLP port; the health endpoint is the probes' port."""
    deployment = _one(rendered, "Deployment", "otel-collector")
    container = _container(deployment)
    config_map = _one(rendered, "ConfigMap", "otel-collector")
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    (flag,) = container["args"]
    assert flag == f"--config={mount['mountPath']}/config.yaml"
    config = yaml.safe_load(config_map["data"]["config.yaml"])

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == f"0.0.0.0:{ports['otlp-grpc']}"
    assert protocols["http"]["endpoint"] == f"0.0.0.0:{ports['otlp-http']}"
    assert config["extensions"]["health_check"]["endpoint"] == f"0.0.0.0:{ports['health']}"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"

    service = config["service"]
    assert service["extensions"] == ["health_check"]
    traces = service["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    assert traces["processors"][0] == "memory_limiter"
    assert set(traces["processors"]) <= set(config["processors"])
    (exporter,) = traces["exporters"]
    assert exporter.split("/")[0] == "otlp_grpc", exporter
    settings = config["exporters"][exporter]
    host, _, port = settings["endpoint"].partition(":")
    _service_port(rendered, host, int(port))
    jaeger = _container(_one(rendered, "Deployment", "jaeger"))
    assert int(port) in [p["containerPort"] for p in jaeger["ports"]]
    assert settings["tls"]["insecure"] is True


def test_dev_values_send_traces_to_the_collector(rendered: list[Doc], dev_values: Doc) -> None:
    """The service's OTLP endpoint in the dev values (the chart's tracing block) is the
    collector's gRPC Service port."""
    tracing = dev_values["tracing"]
    assert tracing["enabled"] is True
    endpoint = urlsplit(tracing["endpoint"])
    assert endpoint.scheme == "http" and endpoint.hostname and endpoint.port
    assert endpoint.hostname.startswith("otel-collector.")
    _service_port(rendered, endpoint.hostname, endpoint.port)
    assert tracing["protocol"] == "grpc"


def test_jaeger_listens_beyond_loopback(rendered: list[Doc]) -> None:
    """Jaeger's all-in-one listens on localhost unless told otherwise, which no Service
    could reach."""
    jaeger = _container(_one(rendered, "Deployment", "jaeger"))
    env = {e["name"]: e["value"] for e in jaeger["env"]}
    assert env["JAEGER_LISTEN_HOST"] == "0.0.0.0"


# the kind cluster config (no schema published: checked against kind's v1alpha4 fields)

_CLUSTER_FIELDS = {
    "kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
    "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
}  # fmt: skip
_NODE_FIELDS = {
    "role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
}  # fmt: skip
_PORT_MAPPING_FIELDS = {"containerPort", "hostPort", "listenAddress", "protocol"}


@pytest.fixture(scope="module")
def kind_config() -> Doc:
    config: Doc = yaml.safe_load(KIND_CONFIG.read_text())
    return config


def test_kind_config_uses_only_v1alpha4_fields(kind_config: Doc) -> None:
    """A kind.x-k8s.io/v1alpha4 Cluster with only the fields kind knows (a misspelled one
    would be an error there), string label values, and ports that are ports."""
    assert kind_config["kind"] == "Cluster"
    assert kind_config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(kind_config) <= _CLUSTER_FIELDS
    for node in kind_config["nodes"]:
        assert set(node) <= _NODE_FIELDS, node
        assert node["role"] in ("control-plane", "worker"), node
        assert all(isinstance(v, str) for v in node.get("labels", {}).values()), node
        for mapping in node.get("extraPortMappings", []):
            assert set(mapping) <= _PORT_MAPPING_FIELDS, mapping
            assert mapping.get("protocol", "TCP") in ("TCP", "UDP", "SCTP"), mapping
            assert all(0 < mapping[k] < 65536 for k in ("containerPort", "hostPort"))


def test_kind_control_plane_is_ingress_ready(kind_config: Doc) -> None:
    """One control plane, labelled ingress-ready=true (ingress-nginx's kind manifest selects
    it), with the host's 80 and 443 on loopback mapped to it; workers for the pods."""
    roles = [n["role"] for n in kind_config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 2
    (control_plane,) = [n for n in kind_config["nodes"] if n["role"] == "control-plane"]
    assert control_plane["labels"] == {"ingress-ready": "true"}
    mappings = {
        (m["containerPort"], m["hostPort"], m.get("protocol", "TCP"), m.get("listenAddress"))
        for m in control_plane["extraPortMappings"]
    }
    assert mappings == {(80, 80, "TCP", "127.0.0.1"), (443, 443, "TCP", "127.0.0.1")}


def test_kind_cluster_name_is_the_one_the_tools_use(kind_config: Doc) -> None:
    """The cluster is `rendezvous`, so its context is `kind-rendezvous`: the one skaffold.yaml
    pins and k8s/kind-up.sh passes to every kubectl and helm call."""
    assert kind_config["name"] == "rendezvous"
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert skaffold["deploy"]["kubeContext"] == f"kind-{kind_config['name']}"
    script = (ROOT / "k8s" / "kind-up.sh").read_text()
    assert re.search(rf"^CLUSTER={kind_config['name']}\b", script, re.MULTILINE)
