"""skaffold.yaml, without skaffold (no binary here): it validates against skaffold's own
v4beta14 JSON Schema (copied into schemas/, since a user's clone has no ../shared), a
broken variant does not, and what it names exists: the Dockerfile, the chart, the values
files, and the Services it port-forwards."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the test extra
import pytest
import yaml

from tests.deploy.tools import ROOT

SKAFFOLD = ROOT / "skaffold.yaml"
SCHEMA = ROOT / "schemas" / "skaffold-v4beta14.schema.json"
SHARED_SCHEMA = ROOT.parent / "shared" / "schemas" / "skaffold-v4beta14.schema.json"
ARTIFACT = "rendezvous"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return loaded


def _errors(validator: jsonschema.Draft7Validator, document: dict[str, Any]) -> list[str]:
    """Every failure as `path: message`. The schema wraps everything in an `anyOf`, so the
    failures that say where the document is wrong are the innermost ones."""
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _leaves(validator.iter_errors(document))
    ]


def _leaves(errors: Iterable[jsonschema.ValidationError]) -> Iterator[jsonschema.ValidationError]:
    for error in errors:
        if error.context:
            yield from _leaves(error.context)
        else:
            yield error


def _release(config: dict[str, Any]) -> dict[str, Any]:
    (release,) = config["deploy"]["helm"]["releases"]
    assert isinstance(release, dict)
    return release


def test_schema_is_the_shared_copy() -> None:
    """The committed schema is the one the project was given (when ../shared is there)."""
    if SHARED_SCHEMA.exists():
        assert SCHEMA.read_bytes() == SHARED_SCHEMA.read_bytes()
    assert json.loads(SCHEMA.read_text())["definitions"]["SkaffoldConfig"]


def test_skaffold_yaml_is_valid_v4beta14(
    validator: jsonschema.Draft7Validator, config: dict[str, Any]
) -> None:
    """skaffold.yaml declares skaffold/v4beta14 (the schema leaves apiVersion a free string)
    and passes that version's schema."""
    assert config["apiVersion"] == "skaffold/v4beta14"
    assert config["kind"] == "Config"
    assert _errors(validator, config) == []


@pytest.mark.parametrize(
    ("break_it", "where"),
    [
        (lambda c: _release(c).update(chart="charts/rendezvous"), "deploy/helm/releases/0"),
        (lambda c: c["portForward"][0].update(port=[80]), "portForward/0/port"),
        (lambda c: c["build"]["local"].update(push="no"), "build/local/push"),
        (lambda c: c.update(deployment=c.pop("deploy")), "'deployment' was unexpected"),
        (lambda c: _release(c).update(wait="yes"), "deploy/helm/releases/0/wait"),
    ],
    ids=["misspelled-key", "port-list", "push-string", "top-level-typo", "wait-string"],
)
def test_broken_variants_are_rejected(
    validator: jsonschema.Draft7Validator, config: dict[str, Any], break_it: Any, where: str
) -> None:
    """The schema is strict where skaffold is: an unknown key, a wrong type or a misspelled
    section fails validation, at the place that is wrong."""
    broken = copy.deepcopy(config)
    break_it(broken)
    errors = _errors(validator, broken)
    assert errors, "the broken variant validated"
    assert any(where in error for error in errors), errors


def test_builds_the_image_from_the_service_dockerfile(config: dict[str, Any]) -> None:
    """One artifact, built from service/Dockerfile with the repository root as context (as
    `docker build -f service/Dockerfile .`), never pushed (kind loads it)."""
    (artifact,) = config["build"]["artifacts"]
    assert artifact["image"] == ARTIFACT
    assert artifact.get("context", ".") == "."
    assert (ROOT / artifact["context"] / artifact["docker"]["dockerfile"]).is_file()
    assert config["build"]["local"]["push"] is False


def test_deploys_the_chart_with_the_dev_values(config: dict[str, Any]) -> None:
    """The helm deployer installs charts/rendezvous with files that exist, into the dev
    namespace, on the kind context only, and hands it the built image the way skaffold's
    helm docs prescribe (repository + tag@digest templates for this artifact's name)."""
    release = _release(config)
    chart = ROOT / release["chartPath"]
    assert (chart / "Chart.yaml").is_file(), chart
    assert release["valuesFiles"], "no values file"
    for values in release["valuesFiles"]:
        assert (ROOT / values).is_file(), values
        assert isinstance(yaml.safe_load((ROOT / values).read_text()), dict), values
    assert release["namespace"] == "rendezvous"
    assert config["deploy"]["kubeContext"] == "kind-rendezvous"
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{ARTIFACT}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{ARTIFACT}}}}}@{{{{.IMAGE_DIGEST_{ARTIFACT}}}}}",
    }
    chart_values = yaml.safe_load((chart / "values.yaml").read_text())
    assert {"repository", "tag"} <= set(chart_values["image"]), "the chart's image keys moved"


def test_port_forwards_the_service_and_jaeger(config: dict[str, Any]) -> None:
    """The service's port and Jaeger's UI are forwarded to fixed local ports, in the dev
    namespace; Jaeger's Service really has that port (k8s/dev/jaeger.yaml)."""
    forwards = {(f["resourceType"], f["resourceName"]): f for f in config["portForward"]}
    service = forwards[("service", "rendezvous")]
    assert (service["port"], service["localPort"]) == (80, 8000)
    jaeger = forwards[("service", "jaeger")]
    assert (jaeger["port"], jaeger["localPort"]) == (16686, 16686)
    assert {f["namespace"] for f in forwards.values()} == {"rendezvous"}
    jaeger_service = next(
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "dev" / "jaeger.yaml").read_text())
        if d["kind"] == "Service"
    )
    assert jaeger_service["metadata"]["name"] == "jaeger"
    assert 16686 in [p["port"] for p in jaeger_service["spec"]["ports"]]
