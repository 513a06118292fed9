"""Kubernetes manifests checked the way the API server would check them, without one:
kubernetes-validate's bundled OpenAPI schemas, strict (unknown fields are errors)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information

# The oldest Kubernetes minor the project supports (the chart's kubeVersion) and the
# newest one the validator bundles.
OLDEST_KUBERNETES = "1.29.0"
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, kubernetes_validate.latest_version())


def describe(document: dict[str, Any]) -> str:
    return f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"


def schema_problems(documents: list[dict[str, Any]], version: str) -> list[str]:
    """One line per document that fails its kind's schema at `version` (strict). A kind the
    validator has no schema for is a problem too: nothing may pass unchecked."""
    problems = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{describe(document)}: no schema at {version}: {error}")
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(p) for p in error.path)
            problems.append(f"{describe(document)}: {where}: {error.message}")
    return problems
