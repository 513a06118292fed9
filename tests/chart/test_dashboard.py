"""The Grafana dashboard ConfigMap (metrics.grafanaDashboard): rendered only when enabled,
labelled for Grafana's dashboard sidecar, valid for the Kubernetes API, and a dashboard
whose every PromQL expression names only metric families a real server exports (scraped
from /metrics of an in-process server, not copied from the README)."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chart import support
from tests.support.server import running_server

ENABLED = {"metrics": {"grafanaDashboard": {"enabled": True}}}
CONFIGMAP_SUFFIX = "-dashboard"
DATA_KEY = "rendezvous.json"
# A rendezvous_* identifier in PromQL (a metric name, never a label: labels are
# lowercase words without the prefix).
METRIC_NAME = re.compile(r"\brendezvous_[a-zA-Z0-9_:]+")
# Sample-name suffixes Prometheus adds to a family's name.
SAMPLE_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def dashboard_configmap(manifests: support.Manifests) -> support.Doc:
    return manifests.named("ConfigMap", CONFIGMAP_SUFFIX)


def dashboard(manifests: support.Manifests) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(dashboard_configmap(manifests)["data"][DATA_KEY])
    return parsed


def expressions(dash: dict[str, Any]) -> dict[str, list[str]]:
    """Every panel's PromQL expressions, by panel title."""
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dash["panels"]}


def family_of(sample: str, families: set[str]) -> str:
    """The metric family a PromQL name refers to: itself, or with a sample suffix removed
    (rendezvous_messages_total -> rendezvous_messages)."""
    if sample in families:
        return sample
    for suffix in SAMPLE_SUFFIXES:
        if sample.endswith(suffix) and sample.removesuffix(suffix) in families:
            return sample.removesuffix(suffix)
    return sample


@pytest.fixture(scope="module")
def enabled(chart: helm.Chart) -> support.Manifests:
    return support.render(ENABLED)


def test_not_rendered_by_default(defaults: support.Manifests) -> None:
    names = {d["metadata"]["name"] for d in defaults.all("ConfigMap")}
    assert f"{support.RELEASE}-rendezvous{CONFIGMAP_SUFFIX}" not in names


def test_rendered_when_enabled_with_the_sidecar_label(enabled: support.Manifests) -> None:
    configmap = dashboard_configmap(enabled)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["labels"]["app.kubernetes.io/instance"] == support.RELEASE
    assert configmap["metadata"]["namespace"] == support.NAMESPACE
    assert "annotations" not in configmap["metadata"]
    assert set(configmap["data"]) == {DATA_KEY}
    # The template passes the file through unchanged.
    file = (support.CHART_DIR / "dashboards" / "rendezvous.json").read_text()
    assert json.loads(configmap["data"][DATA_KEY]) == json.loads(file)


@pytest.mark.parametrize("kube_version", support.KUBE_VERSIONS)
def test_valid_for_the_api(enabled: support.Manifests, kube_version: str) -> None:
    """The ci/ scenarios leave the dashboard off, so its ConfigMap is validated here."""
    support.validate_api(dashboard_configmap(enabled), kube_version)


def test_labels_annotations_and_namespace_are_configurable(chart: helm.Chart) -> None:
    values = {
        "metrics": {
            "grafanaDashboard": {
                "enabled": True,
                "labels": {"dashboards": "signaling"},
                "annotations": {"grafana_folder": "Rendezvous"},
                "namespace": "monitoring",
            }
        }
    }
    metadata = dashboard_configmap(support.render(values))["metadata"]
    assert metadata["labels"]["dashboards"] == "signaling"
    # Helm merges maps: the sidecar's default label stays beside the added one.
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["annotations"] == {"grafana_folder": "Rendezvous"}
    assert metadata["namespace"] == "monitoring"


@pytest.mark.parametrize(
    "bad",
    [{"unknown": True}, {"enabled": "yes"}, {"labels": {"a": 1}}, {"namespace": "Not_A_NS"}],
)
def test_schema_refuses_bad_values(chart: helm.Chart, bad: dict[str, Any]) -> None:
    """The schema is closed and typed (a valid set installs: the control)."""
    good = {"enabled": True, "namespace": "monitoring", "annotations": {"a": "b"}}
    release = support.install_dry_run(
        {"metrics": {"grafanaDashboard": good}}, kube_version=support.KUBE_VERSIONS[0]
    )
    assert f"{support.RELEASE}-rendezvous{CONFIGMAP_SUFFIX}" in release["manifest"]
    with pytest.raises(helm.HelmError, match=r"(?s)schema.*/metrics/grafanaDashboard"):
        support.install_dry_run(
            {"metrics": {"grafanaDashboard": {"enabled": True, **bad}}},
            kube_version=support.KUBE_VERSIONS[0],
        )


def test_datasource_variable_is_prometheus(enabled: support.Manifests) -> None:
    dash = dashboard(enabled)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_panel_has_a_target(enabled: support.Manifests) -> None:
    dash = dashboard(enabled)
    assert dash["panels"]
    for title, exprs in expressions(dash).items():
        assert exprs and all(e.strip() for e in exprs), title
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


async def exported_families() -> set[str]:
    """The metric families a real server exports, from its own /metrics."""
    async with running_server() as server, httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.http}/metrics")
    assert response.status_code == 200
    return {family.name for family in text_string_to_metric_families(response.text)}


async def test_expressions_name_only_exported_metrics(enabled: support.Manifests) -> None:
    families = await exported_families()
    # prometheus_client strips _total from a counter's family name.
    assert {"rendezvous_connections", "rendezvous_messages"} <= families
    used: set[str] = set()
    for title, exprs in expressions(dashboard(enabled)).items():
        for expr in exprs:
            names = METRIC_NAME.findall(expr)
            assert names, f"{title}: {expr} names no rendezvous metric"
            for name in names:
                assert family_of(name, families) in families, f"{title}: {name} not exported"
                used.add(family_of(name, families))
    # The sanity check of the check: a made-up name is refused.
    assert family_of("rendezvous_made_up_total", families) not in families
    assert "rendezvous_relay_latency_seconds" in used
    # Exported with the default, in-process backend too (no Redis behind this server).
    assert "rendezvous_backend_publish_seconds" in used


def test_panels_cover_what_operators_need(enabled: support.Manifests) -> None:
    exprs = [e for es in expressions(dashboard(enabled)).values() for e in es]

    def some(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert some(r"\brendezvous_connections\b")
    assert some(r"\brendezvous_rooms\b") and some(r"\brendezvous_participants\b")
    assert some(r"by \(type\) \(rate\(rendezvous_messages_total\b")
    assert some(r"by \(type\) \(rate\(rendezvous_messages_relayed_total\b")
    for histogram in ("rendezvous_relay_latency_seconds", "rendezvous_backend_publish_seconds"):
        for quantile in ("0.5", "0.99"):
            assert some(
                rf"histogram_quantile\({quantile}, sum by \(le\) "
                rf"\(rate\({histogram}_bucket\{{[^}}]*\}}\[5m\]\)\)\)"
            ), (histogram, quantile)
    assert some(r"by \(code\) \(rate\(rendezvous_errors_total\b")
    assert some(r"by \(reason\) \(rate\(rendezvous_messages_dropped_total\b")
    assert some(r"\brendezvous_backend_up\b")
    assert some(r"rate\(rendezvous_backend_reconnects_total\b")
    assert some(r"\brendezvous_policy_generation\b")
