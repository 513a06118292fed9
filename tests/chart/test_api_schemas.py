"""Every object the chart renders, in every scenario, against the real Kubernetes API
schemas (kubernetes-validate --strict: unknown fields are errors) of the oldest supported
Kubernetes and of the newest bundled one. CRD kinds, for which kubernetes-validate has no
schema, are checked against committed reductions of their CRDs, never skipped."""

from __future__ import annotations

import copy

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.chart import support

SCENARIOS = sorted(support.scenarios())


@pytest.mark.parametrize("kube_version", support.KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_for_the_api(
    chart: helm.Chart, scenario: str, kube_version: str
) -> None:
    """Rendered with .Capabilities at that version, each document validates."""
    manifests = support.render(support.scenario_values(scenario), kube_version=kube_version)
    docs = list(manifests)
    assert {"Deployment", "Service", "ConfigMap"} <= {doc["kind"] for doc in docs}
    for doc in docs:
        support.validate_api(doc, kube_version)


def test_scenarios_cover_what_the_chart_can_render(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """Together the scenarios render every kind the chart has, including both CRD kinds,
    so the validation above reaches each template."""
    kinds = {(d["apiVersion"], d["kind"]) for m in scenario_renders.values() for d in m}
    assert set(support.CRD_KINDS) <= kinds
    expected = {
        "Deployment", "Service", "ServiceAccount", "ConfigMap", "Secret", "Pod",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
        "Role", "RoleBinding", "StatefulSet", "ServiceMonitor", "HTTPRoute",
    }  # fmt: skip
    assert {kind for _, kind in kinds} == expected


def test_required_scenarios_exist() -> None:
    """The ci/ scenarios the issue asks for (and the Gateway API one) are all there."""
    assert {
        "defaults", "external-redis", "api-source", "fixed-replicas", "ingress-tls",
        "servicemonitor", "gateway-httproute",
    } <= set(SCENARIOS)  # fmt: skip


def test_crd_kinds_are_not_silently_accepted(defaults: support.Manifests) -> None:
    """kubernetes-validate alone has no schema for a CRD kind, so validate_api routes it to
    its committed schema, which refuses what the CRD would (here an unknown spec field)."""
    for api_version, kind in support.CRD_KINDS:
        spec = {"bogus": True}
        doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": spec}
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, support.KUBE_VERSIONS[0], strict=True)
        with pytest.raises(jsonschema.ValidationError):
            support.validate_api(doc, support.KUBE_VERSIONS[0])


@pytest.mark.parametrize("kube_version", support.KUBE_VERSIONS)
def test_validation_is_strict(defaults: support.Manifests, kube_version: str) -> None:
    """A misspelt field (readinessprobe) fails: the schemas are the strict ones."""
    deployment = copy.deepcopy(defaults.named("Deployment", ""))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kube_version, strict=True)


@pytest.mark.parametrize(
    ("scenario", "kind"),
    [("servicemonitor", "ServiceMonitor"), ("gateway-httproute", "HTTPRoute")],
)
def test_crd_schemas_refuse_unknown_fields_and_bad_values(
    scenario_renders: dict[str, support.Manifests], scenario: str, kind: str
) -> None:
    """The committed CRD schemas have teeth: an unknown spec field and a malformed value
    (a duration, a hostname) are refused."""
    doc = scenario_renders[scenario].one(kind)
    support.validate_api(doc, support.KUBE_VERSIONS[0])
    unknown = copy.deepcopy(doc)
    unknown["spec"]["selectr" if kind == "ServiceMonitor" else "hostname"] = {}
    malformed = copy.deepcopy(doc)
    if kind == "ServiceMonitor":
        malformed["spec"]["endpoints"][0]["interval"] = "15 seconds"
    else:
        malformed["spec"]["hostnames"] = ["Rendezvous.Example.com"]
    for bad in (unknown, malformed):
        with pytest.raises(jsonschema.ValidationError):
            support.validate_api(bad, support.KUBE_VERSIONS[0])
