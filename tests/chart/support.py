"""The chart tests' handle on the real Helm engine (helm-python-sdk: Helm v4's Go SDK in a
shared library, no binary, no cluster) and on the real Kubernetes API schemas
(kubernetes-validate). No API server runs here: what needs one (an upgrade, a server
dry run, `lookup` finding a Secret) is out of reach, and the docstrings say so."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "rendezvous"
REDIS_CHART_DIR = ROOT / "charts" / "redis"
SCENARIO_DIR = CHART_DIR / "ci"
CRD_SCHEMA_DIR = Path(__file__).parent / "schemas"
RELEASE = "rv"
NAMESPACE = "signaling"
# The chart's kubeVersion floor and the newest API schemas kubernetes-validate bundles.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
# Kinds kubernetes-validate has no schema for (CustomResourceDefinitions): each is
# checked against a committed reduction of its CRD's schema, never skipped.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway.networking.k8s.io-v1.json",
}

Doc = dict[str, Any]
# libyaml's safe loader when PyYAML was built with it: the same documents, parsed faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def scenarios() -> dict[str, Path]:
    """charts/rendezvous/ci/<name>-values.yaml by name."""
    return {
        p.name.removesuffix("-values.yaml"): p for p in sorted(SCENARIO_DIR.glob("*-values.yaml"))
    }


def scenario_values(name: str) -> dict[str, Any]:
    return helm.values_from_yaml(scenarios()[name].read_text())


def render(
    values: dict[str, Any] | None = None,
    *,
    kube_version: str | None = None,
    chart_dir: Path = CHART_DIR,
) -> Manifests:
    """`helm template` of the chart as release rv in namespace `signaling`. `kube_version`
    sets .Capabilities.KubeVersion: helm_render takes it, the Python wrapper does not pass
    it. The chart is loaded afresh for every render (see `load`)."""
    opts: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE}
    if kube_version is not None:
        opts["kube_version"] = kube_version
    with load(chart_dir) as chart:
        raw = _native.call_string(
            "helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)
        )
    return Manifests(json.loads(raw))


def load(chart_dir: Path = CHART_DIR) -> helm.Chart:
    """A freshly loaded chart. Never share one between renders: Helm's dependency
    processing prunes a disabled subchart (redis.enabled=false) from the loaded chart
    object itself, so a later render with Redis on would miss its templates."""
    return helm.Chart.load(chart_dir)


def install_dry_run(values: dict[str, Any], *, kube_version: str) -> Doc:
    """`helm install --dry-run=client` against a cluster of `kube_version`: the install
    action checks the chart's kubeVersion and values schema. Config.install has no
    kube_version argument; helm_install's options do."""
    options = {"dry_run": "client", "kube_version": kube_version}
    with helm.Config(namespace=NAMESPACE) as config, load() as chart:
        payload = _native.call_string(
            "helm_install",
            config._raw(),
            _native.HANDLE(0),  # no cancellation context
            chart._raw(),
            None,  # the chart comes as a handle, not a reference
            RELEASE,
            json.dumps(values),
            json.dumps(options),
        )
    release: Doc = json.loads(payload)
    return release


@dataclass(frozen=True)
class Manifests:
    """What one render produced: template path -> rendered text, parsed on demand."""

    texts: dict[str, str]

    @cached_property
    def docs(self) -> list[Doc]:
        """Every object, NOTES.txt aside, parsed once."""
        return [
            doc
            for path, text in sorted(self.texts.items())
            if not path.endswith(".txt")
            for doc in yaml.load_all(text, Loader=_YAML_LOADER)
            if doc
        ]

    def __iter__(self) -> Iterator[Doc]:
        return iter(self.docs)

    def text(self, template: str) -> str:
        """The rendered text of the parent chart's templates/<template>."""
        return self.texts[f"rendezvous/templates/{template}"]

    @property
    def notes(self) -> str:
        return self.text("NOTES.txt")

    def all(self, kind: str) -> list[Doc]:
        return [doc for doc in self if doc["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Doc:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def named(self, kind: str, suffix: str) -> Doc:
        """The one `kind` named `<fullname><suffix>` (the release's fullname is rv-rendezvous)."""
        return self.one(kind, f"{RELEASE}-rendezvous{suffix}")

    @property
    def pod(self) -> Doc:
        """The signaling Deployment's pod spec."""
        spec: Doc = self.named("Deployment", "")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> Doc:
        found: list[Doc] = [c for c in self.pod["containers"] if c["name"] == name]
        assert len(found) == 1, f"no container {name}"
        return found[0]

    def pod_specs(self) -> list[tuple[str, Doc]]:
        """Every pod the release runs, by kind/name: the Deployment's, the Redis
        StatefulSet's and the helm test pod."""
        specs = [
            (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in self
            if d["kind"] in ("Deployment", "StatefulSet")
        ]
        return specs + [(f"Pod/{p['metadata']['name']}", p["spec"]) for p in self.all("Pod")]

    def environment(self, container: Doc) -> dict[str, Any]:
        """A container's variables: ConfigMap keys (envFrom) as values, `env` entries as
        they are (a value or its valueFrom)."""
        env: dict[str, Any] = {}
        for source in container.get("envFrom", []):
            env.update(self.one("ConfigMap", source["configMapRef"]["name"])["data"])
        for entry in container.get("env", []):
            env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
        return env


def validate_api(doc: Doc, kube_version: str) -> None:
    """Validate one object against the Kubernetes API schema of `kube_version`, strictly
    (unknown fields are errors). CRD kinds go against their committed schema instead;
    a kind with neither raises kubernetes-validate's SchemaNotFoundError."""
    crd = CRD_KINDS.get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    else:
        jsonschema.Draft7Validator(crd_schema(crd)).validate(doc)


@cache
def crd_schema(filename: str) -> Doc:
    schema: Doc = json.loads((CRD_SCHEMA_DIR / filename).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def decoded(secret: Doc) -> dict[str, str]:
    """A rendered Secret's data, base64-decoded."""
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
