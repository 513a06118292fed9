"""RBAC exists only for the TURN sidecar's API source, and then grants get/list/watch on
the one TURN Secret by resourceNames. Whether an API server enforces it as intended
cannot be run here (no cluster); tests/turn exercise the sidecar's requests (always with
the metadata.name field selector) against a stand-in API server."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart import support


@pytest.mark.parametrize("scenario", sorted(support.scenarios()))
def test_role_exists_only_in_api_mode(
    scenario_renders: dict[str, support.Manifests], scenario: str
) -> None:
    manifests = scenario_renders[scenario]
    api_mode = "WEBRTC_TURN_SECRET_NAME" in str(manifests.all("ConfigMap"))
    assert bool(manifests.all("Role")) == bool(manifests.all("RoleBinding")) == api_mode
    assert scenario != "api-source" or api_mode


def test_role_reads_only_the_turn_secret(scenario_renders: dict[str, support.Manifests]) -> None:
    """One rule: get, list, watch on secrets, limited by resourceNames to the Secret the
    sidecar is told to watch, bound to the pods' own ServiceAccount."""
    manifests = scenario_renders["api-source"]
    role = manifests.one("Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["coturn-shared-secret"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    sidecar_env = manifests.environment(manifests.container("turn-sidecar"))
    assert sidecar_env["WEBRTC_TURN_SECRET_NAME"] == "coturn-shared-secret"
    assert sidecar_env["WEBRTC_TURN_SECRET_NAMESPACE"] == support.NAMESPACE
    assert "WEBRTC_TURN_SECRET_DIR" not in sidecar_env
    binding = manifests.one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = manifests.pod["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": support.NAMESPACE}
    ]
    assert manifests.one("ServiceAccount")["metadata"]["name"] == account


def test_api_mode_gives_the_token_to_the_sidecar_alone(
    scenario_renders: dict[str, support.Manifests],
) -> None:
    """With the API source the Secret reaches the sidecar through the API only, and only
    the sidecar holds a ServiceAccount token (a projected volume at the in-cluster path):
    the pod-wide automount stays off, so the service cannot read the TURN Secret either."""
    manifests = scenario_renders["api-source"]
    assert manifests.pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in manifests.pod["volumes"]}
    assert not [v for v in volumes.values() if "secret" in v]
    sources = volumes["kube-api-access"]["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
    holders = {
        c["name"]: m["mountPath"]
        for c in manifests.pod["containers"]
        for m in c["volumeMounts"]
        if m["name"] == "kube-api-access"
    }
    assert holders == {"turn-sidecar": "/var/run/secrets/kubernetes.io/serviceaccount"}


def test_api_mode_with_the_generated_secret_names_it(chart: helm.Chart) -> None:
    """Without an existing Secret the Role names the one the chart generates."""
    manifests = support.render({"turn": {"sidecar": {"source": "kubernetesApi"}}})
    assert manifests.one("Role")["rules"][0]["resourceNames"] == ["rv-rendezvous-turn"]
    assert manifests.one("Secret", "rv-rendezvous-turn")


def test_no_token_anywhere_by_default(defaults: support.Manifests) -> None:
    account = defaults.one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert defaults.pod["automountServiceAccountToken"] is False
    assert defaults.pod["serviceAccountName"] == account["metadata"]["name"]
    assert "kube-api-access" not in {v["name"] for v in defaults.pod["volumes"]}
