"""`helm install --dry-run=client`: the install action itself, which enforces the chart's
kubeVersion and values schema and renders NOTES.txt. A server-side dry run, an upgrade
and `helm test` need an API server, which does not run here."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart import support


@pytest.mark.parametrize("kube_version", ["v1.29.0", f"v{support.KUBE_VERSIONS[-1]}"])
def test_install_succeeds_on_supported_kubernetes(chart: helm.Chart, kube_version: str) -> None:
    release = support.install_dry_run({}, kube_version=kube_version)
    assert release["status"] == "pending-install"
    assert release["chart_name"] == "rendezvous"
    assert "kind: Deployment" in release["manifest"]


def test_public_install_api_dry_run(chart: helm.Chart) -> None:
    """helm_python's own Config.install(dry_run="client"), at the library's default
    Kubernetes version (a current one), installs the chart with its defaults."""
    with helm.Config(namespace=support.NAMESPACE) as config, support.load() as fresh:
        release = config.install(fresh, support.RELEASE, {}, dry_run="client")
    assert release["status"] == "pending-install"
    assert "name: rv-rendezvous" in release["manifest"]


@pytest.mark.parametrize("kube_version", ["v1.28.15", "v1.25.0"])
def test_install_refuses_kubernetes_older_than_the_floor(
    chart: helm.Chart, kube_version: str
) -> None:
    with pytest.raises(helm.HelmReleaseError) as refused:
        support.install_dry_run({}, kube_version=kube_version)
    assert "chart requires kubeVersion: >=1.29.0-0" in str(refused.value)
    assert kube_version in str(refused.value)


def test_install_refuses_values_the_schema_refuses(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError) as refused:
        support.install_dry_run({"replicaCount": "two"}, kube_version="v1.29.0")
    assert "replicaCount" in str(refused.value)


def test_notes_tell_how_to_reach_the_service_and_mint_a_token(chart: helm.Chart) -> None:
    notes = support.install_dry_run({}, kube_version="v1.29.0")["notes"]
    namespace = support.NAMESPACE
    assert f"kubectl -n {namespace} port-forward svc/rv-rendezvous 8000:80" in notes
    assert (
        f"kubectl -n {namespace} exec deploy/rv-rendezvous -c rendezvous -- "
        "rendezvous token --user alice --room demo"
    ) in notes
    assert f"helm test {support.RELEASE}" in notes
    assert "turn.example.org" in notes  # the placeholder TURN URL is called out
