"""k8s/dev/values-dev.yaml against the chart it configures, with the real Helm engine
(helm-python-sdk; no cluster): the values pass the chart's schema, the release renders
into objects that pass the Kubernetes API schemas, and it is wired to what the kind loop
provides: the image kind-up.sh builds (and the one skaffold sets), the dev add-ons' TURN
Secret, the Service and container names skaffold.yaml and kind-up.sh's banner use."""

from __future__ import annotations

import copy
import re
import shutil
from typing import Any

import helm_python
import pytest
import yaml

from tests.deploy.manifests import KUBERNETES_VERSIONS, describe, schema_problems
from tests.deploy.tools import ROOT

NAMESPACE = "rendezvous"
RELEASE = "rendezvous"
DEV_VALUES: dict[str, Any] = yaml.safe_load((ROOT / "k8s" / "dev" / "values-dev.yaml").read_text())
# What skaffold's setValueTemplates yield for a local build with the inputDigest tagger:
# a 64-hex tag, then @ and the image's digest.
SKAFFOLD_TAG = "a" * 64 + "@sha256:" + "b" * 64
# Kubernetes label values: at most 63 characters, alphanumerics with - _ . inside.
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> helm_python.Chart:
    """The chart, its file:// Redis dependency built into a private copy (the checkout's
    charts/rendezvous/charts/ is left alone)."""
    copy = tmp_path_factory.mktemp("charts")
    for name in ("rendezvous", "redis"):
        shutil.copytree(ROOT / "charts" / name, copy / name)
    shutil.rmtree(copy / "rendezvous" / "charts", ignore_errors=True)
    helm_python.dependency_build(copy / "rendezvous")
    return helm_python.Chart.load(copy / "rendezvous")


def _render(chart: helm_python.Chart, values: dict[str, Any]) -> list[Doc]:
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        document
        for path, text in sorted(rendered.items())
        if path.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]


def _one(documents: list[Doc], kind: str) -> Doc:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == RELEASE]
    assert len(found) == 1, [describe(d) for d in documents]
    return found[0]


def _with_skaffold_image(values: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = copy.deepcopy(values)
    merged["image"].update(repository="rendezvous", tag=SKAFFOLD_TAG)
    return merged


@pytest.fixture(scope="module")
def documents(chart: helm_python.Chart) -> list[Doc]:
    return _render(chart, DEV_VALUES)


def test_dev_values_pass_the_chart_schema(chart: helm_python.Chart) -> None:
    chart.validate_schema(DEV_VALUES)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_dev_release_passes_the_api_schema(documents: list[Doc], version: str) -> None:
    """Every object the dev release renders (no CRD kinds in it) passes strict validation."""
    assert schema_problems(documents, version) == []


def test_runs_the_image_kind_up_builds(documents: list[Doc]) -> None:
    """Both containers run `rendezvous:dev`, the image k8s/kind-up.sh builds and loads,
    never pulled."""
    script = (ROOT / "k8s" / "kind-up.sh").read_text()
    (image,) = re.findall(r"^IMAGE=(\S+)", script, re.MULTILINE)
    pod = _one(documents, "Deployment")["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"]} == {image}
    assert {c["imagePullPolicy"] for c in pod["containers"]} == {"IfNotPresent"}


def test_the_image_skaffold_sets_renders_valid_objects(chart: helm_python.Chart) -> None:
    """With the image values skaffold passes (repository + `<tag>@sha256:<digest>`), the
    containers run exactly that image and every label value is still a valid one (an image
    tag is not: it may be too long or carry `@` and `:`)."""
    documents = _render(chart, _with_skaffold_image(DEV_VALUES))
    pod = _one(documents, "Deployment")["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"]} == {f"rendezvous:{SKAFFOLD_TAG}"}
    for document in documents:
        for section in (document, document.get("spec", {}).get("template", {})):
            for key, value in section.get("metadata", {}).get("labels", {}).items():
                valid = len(value) <= 63 and LABEL_VALUE.fullmatch(value)
                assert valid, f"{describe(document)}: label {key}={value!r}"


def test_sidecar_reads_the_dev_turn_secret(documents: list[Doc]) -> None:
    """The TURN sidecar mounts the Secret the dev coturn reads (k8s/dev/coturn.yaml) and
    takes the same key from it; the chart generates no TURN Secret of its own."""
    coturn = next(
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "dev" / "coturn.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    (variable,) = coturn["spec"]["template"]["spec"]["containers"][0]["env"]
    reference = variable["valueFrom"]["secretKeyRef"]
    pod = _one(documents, "Deployment")["spec"]["template"]["spec"]
    mounted = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert [m["secretName"] for m in mounted] == [reference["name"]]
    assert [i["key"] for m in mounted for i in m.get("items", [])] in ([], [reference["key"]])
    sidecar_settings = next(
        d["data"]
        for d in documents
        if d["kind"] == "ConfigMap" and "WEBRTC_TURN_SECRET_DIR" in d.get("data", {})
    )
    assert sidecar_settings["WEBRTC_TURN_SECRET_KEY"] == reference["key"]
    secrets = [d["metadata"]["name"] for d in documents if d["kind"] == "Secret"]
    assert reference["name"] not in secrets


def test_names_the_loop_relies_on(documents: list[Doc]) -> None:
    """skaffold port-forwards Service `rendezvous` port 80 in `rendezvous`; kind-up.sh's
    banner execs into container `rendezvous` of Deployment `rendezvous`; the Ingress is
    nginx's, for http://localhost/."""
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    forward = next(f for f in skaffold["portForward"] if f["resourceName"] == RELEASE)
    service = _one(documents, "Service")
    assert service["metadata"]["namespace"] == forward["namespace"]
    assert forward["port"] in [p["port"] for p in service["spec"]["ports"]]
    containers = _one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "rendezvous" in [c["name"] for c in containers]
    ingress = _one(documents, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert [r["host"] for r in ingress["rules"]] == ["localhost"]
