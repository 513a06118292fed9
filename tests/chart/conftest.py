"""Fixtures of the chart tests: the Redis dependency packaged once per session (this is how
the test command builds charts/rendezvous/charts/redis-*.tgz), the loaded charts, and
every ci/ scenario rendered once."""

from __future__ import annotations

from collections.abc import Iterator

import helm_python as helm
import pytest

from tests.chart import support


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    """charts/rendezvous with its dependency built from Chart.lock (`helm dependency build`:
    offline, file://../redis packaged into charts/). Every test that renders asks for it,
    so the build comes first; renders load their own copy (support.load says why)."""
    helm.dependency_build(support.CHART_DIR)
    with support.load() as loaded:
        yield loaded


@pytest.fixture(scope="session")
def redis_chart() -> Iterator[helm.Chart]:
    with support.load(support.REDIS_CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def defaults(chart: helm.Chart) -> support.Manifests:
    """The chart rendered with its default values."""
    return support.render()


@pytest.fixture(scope="session")
def scenario_renders(chart: helm.Chart) -> dict[str, support.Manifests]:
    """Every charts/rendezvous/ci/*-values.yaml scenario, rendered once."""
    return {name: support.render(support.scenario_values(name)) for name in support.scenarios()}
