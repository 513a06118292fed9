"""`helm lint --strict` (warnings are failures) of both charts, at the chart's oldest
supported Kubernetes and at the newest, with the default values and every ci/ scenario."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.chart import support

# Helm's only remark on these charts, at level INFO: no icon URL (the project has none).
ACCEPTED_INFO = {"icon is recommended"}
INFO = 1


def problems(report: dict[str, Any]) -> list[str]:
    """Every finding above INFO, every INFO but the accepted one, and any hard error."""
    found = [
        f"{m['path']}: {m['error']}"
        for m in report["messages"]
        if m["severity"] > INFO or m["error"] not in ACCEPTED_INFO
    ]
    return found + list(report["errors"])


@pytest.mark.parametrize("kube_version", support.KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(support.scenarios()))
def test_chart_lints_clean_in_strict_mode(
    chart: helm.Chart, scenario: str, kube_version: str
) -> None:
    """Each scenario passes strict lint, which renders the templates and checks the
    values against values.schema.json."""
    report = helm.lint(
        support.CHART_DIR,
        support.scenario_values(scenario),
        strict=True,
        namespace=support.NAMESPACE,
        kube_version=f"v{kube_version}",
    )
    assert report["total_charts_linted"] == 1
    assert problems(report) == []


@pytest.mark.parametrize("kube_version", support.KUBE_VERSIONS)
def test_redis_chart_lints_clean_in_strict_mode(kube_version: str) -> None:
    report = helm.lint(support.REDIS_CHART_DIR, strict=True, kube_version=f"v{kube_version}")
    assert report["total_charts_linted"] == 1
    assert problems(report) == []


def test_lint_reports_a_broken_scenario(chart: helm.Chart) -> None:
    """The check above can fail: values the schema refuses come back as lint errors."""
    report = helm.lint(support.CHART_DIR, {"replicaCount": "two"}, strict=True)
    assert any("replicaCount" in problem for problem in problems(report))
