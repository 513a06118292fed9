"""The chart's metadata and its Redis dependency: declared as file://../redis with a
condition, locked, packaged once, and loaded exactly once."""

from __future__ import annotations

import subprocess

import helm_python as helm
import yaml

from tests.chart import support


def test_chart_metadata_states_api_v2_kube_floor_and_app_version(chart: helm.Chart) -> None:
    """Chart.yaml is a v2 chart for Kubernetes 1.29 and later, running Rendezvous 0.1.0."""
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["kubeVersion"] == ">=1.29.0-0"
    assert meta["appVersion"] == "0.1.0"


def test_redis_is_a_conditional_file_dependency(chart: helm.Chart) -> None:
    """The only dependency is our own Redis chart, beside this one, switched by redis.enabled."""
    (dependency,) = chart.metadata["dependencies"]
    assert dependency["name"] == "redis"
    assert dependency["repository"] == "file://../redis"
    assert dependency["condition"] == "redis.enabled"
    redis_version = yaml.safe_load((support.REDIS_CHART_DIR / "Chart.yaml").read_text())["version"]
    assert dependency["version"] == redis_version


def test_chart_lock_is_committed_and_in_sync(chart: helm.Chart) -> None:
    """Chart.lock pins what Chart.yaml declares; dependency build (the session fixture) used
    it, and Helm reports the packaged dependency as ok (not missing, stale or unpacked)."""
    lock = yaml.safe_load((support.CHART_DIR / "Chart.lock").read_text())
    assert [(d["name"], d["version"], d["repository"]) for d in lock["dependencies"]] == [
        ("redis", "0.1.0", "file://../redis")
    ]
    assert [(d["name"], d["status"]) for d in helm.dependency_list(support.CHART_DIR)] == [
        ("redis", "ok")
    ]


def test_exactly_one_copy_of_the_redis_chart_loads(chart: helm.Chart) -> None:
    """charts/ holds the packaged .tgz and nothing else: an unpacked folder beside it would
    load the Redis chart twice."""
    entries = sorted(p.name for p in (support.CHART_DIR / "charts").iterdir())
    assert entries == ["redis-0.1.0.tgz"]
    assert [d["name"] for d in chart.dependencies] == ["redis"]


def test_packaged_dependency_is_git_ignored(chart: helm.Chart) -> None:
    """The .tgz is a build product (dependency build makes it); git ignores it."""
    archive = support.CHART_DIR / "charts" / "redis-0.1.0.tgz"
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", str(archive)],
        cwd=support.ROOT,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, f"{archive} is not git-ignored"
