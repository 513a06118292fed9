"""How the pods are reached, scaled and protected: Service, Ingress (ingress-nginx),
HTTPRoute (Gateway API), NetworkPolicy, ServiceMonitor, HPA, PDB and the labels that tie
them to the pods."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

from tests.chart import support

NGINX = "nginx.ingress.kubernetes.io/"


def selector(manifests: support.Manifests) -> dict[str, str]:
    labels: dict[str, str] = manifests.named("Deployment", "")["spec"]["selector"]["matchLabels"]
    return labels


@pytest.mark.parametrize("scenario", sorted(support.scenarios()))
def test_every_object_carries_the_standard_labels(
    scenario_renders: dict[str, support.Manifests], scenario: str
) -> None:
    """app.kubernetes.io/* and helm.sh/chart on everything; pods carry their selector."""
    manifests = scenario_renders[scenario]
    for doc in manifests:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], key)
        assert labels["app.kubernetes.io/instance"] == support.RELEASE
        assert labels["helm.sh/chart"] in ("rendezvous-0.1.0", "redis-0.1.0")
    for kind in ("Deployment", "StatefulSet"):
        for workload in manifests.all(kind):
            pod_labels = workload["spec"]["template"]["metadata"]["labels"]
            assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_selects_the_signaling_pods_only(defaults: support.Manifests) -> None:
    """The Service selects the Deployment's pods; the helm test pod, same release, is not
    one of them (its component differs)."""
    service = defaults.named("Service", "")
    assert service["spec"]["selector"] == selector(defaults)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    test_pod_labels = defaults.one("Pod")["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= test_pod_labels.items()


def test_ingress_is_sticky_and_websocket_friendly(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """ingress-nginx: cookie affinity, hour-long proxy timeouts, a retry elsewhere on a
    draining pod's 503, TLS for the host, and the user's own annotations kept."""
    ingress = scenario_renders["ingress-tls"].named("Ingress", "")
    annotations = ingress["metadata"]["annotations"]
    assert annotations[NGINX + "affinity"] == "cookie"
    assert annotations[NGINX + "session-cookie-name"] == "rendezvous-affinity"
    assert annotations[NGINX + "session-cookie-max-age"] == "172800"
    assert annotations[NGINX + "proxy-read-timeout"] == "3600"
    assert annotations[NGINX + "proxy-send-timeout"] == "3600"
    assert "http_503" in annotations[NGINX + "proxy-next-upstream"]
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [
        {"hosts": ["rendezvous.example.com"], "secretName": "rendezvous-example-com-tls"}
    ]
    (rule,) = spec["rules"]
    assert rule["host"] == "rendezvous.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "rv-rendezvous", "port": {"name": "http"}}
    assert "wss://rendezvous.example.com/webrtc/ws/" in scenario_renders["ingress-tls"].notes


def test_ingress_annotations_given_win_over_the_charts(chart: helm.Chart) -> None:
    manifests = support.render(
        {
            "ingress": {
                "enabled": True,
                "annotations": {NGINX + "proxy-read-timeout": "7200"},
                "cookieAffinity": {"enabled": False},
            }
        }
    )
    annotations = manifests.named("Ingress", "")["metadata"]["annotations"]
    assert annotations[NGINX + "proxy-read-timeout"] == "7200"
    assert NGINX + "affinity" not in annotations


def test_httproute_routes_to_the_service(scenario_renders: dict[str, support.Manifests]) -> None:
    """Structural checks the Gateway API CRD makes with CEL or a controller makes at
    attach time: a parent, the Service as backend on its port, a PathPrefix from /."""
    manifests = scenario_renders["gateway-httproute"]
    route = manifests.named("HTTPRoute", "")
    spec = route["spec"]
    assert spec["parentRefs"] == [
        {"name": "public", "namespace": "gateway-system", "sectionName": "https"}
    ]
    assert spec["hostnames"] == ["rendezvous.example.com"]
    (rule,) = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    service = manifests.named("Service", "")
    assert rule["backendRefs"] == [
        {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
    ]
    assert rule["timeouts"] == {"request": "0s"}
    assert manifests.all("Ingress") == []
    assert "wss://rendezvous.example.com/webrtc/ws/" in manifests.notes


def test_network_policy_by_default_admits_clients_only_to_http(
    defaults: support.Manifests,
) -> None:
    """Ingress-only policy on the signaling pods: the http port from anywhere, nothing
    else (the sidecar's port has no rule unless metricsFrom names scrapers)."""
    policy = defaults.named("NetworkPolicy", "")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector(defaults)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_network_policy_restricted_sources_still_admit_the_test_pod(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """With allowFrom (the gateway's namespace) only those peers, plus the helm test pod."""
    manifests = scenario_renders["gateway-httproute"]
    (rule,) = manifests.named("NetworkPolicy", "")["spec"]["ingress"]
    test_pod_labels = manifests.one("Pod")["metadata"]["labels"]
    gateway, test_pod = rule["from"]
    assert gateway["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "gateway-system"
    }
    assert test_pod["podSelector"]["matchLabels"].items() <= test_pod_labels.items()


def test_service_monitor_scrapes_both_containers(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """The ServiceMonitor selects the Service and names ports the Service has (the
    sidecar's metrics port appears only for it); the NetworkPolicy lets the monitoring
    namespace reach the sidecar's port; the scrape timeout fits in the interval."""
    manifests = scenario_renders["servicemonitor"]
    monitor = manifests.named("ServiceMonitor", "")
    service = manifests.named("Service", "")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http", "turn-metrics"]
    assert service_ports == {"http": "http", "turn-metrics": "turn-http"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
    rules = manifests.named("NetworkPolicy", "")["spec"]["ingress"]
    assert rules[1] == {
        "ports": [{"port": "turn-http", "protocol": "TCP"}],
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    }


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, duration
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def test_hpa_scales_the_deployment_on_the_service_cpu(defaults: support.Manifests) -> None:
    """autoscaling/v2 on the signaling container's CPU (a container the pod has), with a
    slow scale-down (each removed pod drains its clients)."""
    hpa = defaults.named("HorizontalPodAutoscaler", "")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rv-rendezvous",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    (metric,) = spec["metrics"]
    assert metric["type"] == "ContainerResource"
    assert metric["containerResource"]["name"] == "cpu"
    assert metric["containerResource"]["container"] == defaults.pod["containers"][0]["name"]
    assert metric["containerResource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 70,
    }
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_hpa_takes_extra_metrics(chart: helm.Chart) -> None:
    extra = {
        "type": "Pods",
        "pods": {
            "metric": {"name": "rendezvous_connections"},
            "target": {"type": "AverageValue", "averageValue": "5000"},
        },
    }
    manifests = support.render({"autoscaling": {"extraMetrics": [extra]}})
    metrics = manifests.named("HorizontalPodAutoscaler", "")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["ContainerResource", "Pods"]
    assert metrics[1] == extra
    support.validate_api(manifests.named("HorizontalPodAutoscaler", ""), support.KUBE_VERSIONS[0])


def test_pdb_protects_the_signaling_pods(scenario_renders: dict[str, support.Manifests]) -> None:
    defaults = scenario_renders["defaults"]
    pdb = defaults.named("PodDisruptionBudget", "")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": selector(defaults)}}
    fixed = scenario_renders["fixed-replicas"].named("PodDisruptionBudget", "")["spec"]
    assert fixed["minAvailable"] == 2 and "maxUnavailable" not in fixed
