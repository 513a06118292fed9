"""Values that cannot work are refused before anything reaches a cluster: wrong types and
unknown keys by values.schema.json (Helm validates it on install, upgrade, lint and
template), contradictions by the chart's validate-values helper, each with a message
that says what to change."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest

from tests.chart import support

NO_REDIS = {"redis": {"enabled": False}}
ONE_POD = {"replicaCount": 1, "autoscaling": {"enabled": False}}


def test_defaults_and_every_scenario_pass_the_schema(chart: helm.Chart) -> None:
    for name in support.scenarios():
        chart.validate_schema(support.scenario_values(name))
    chart.validate_schema({})


@pytest.mark.parametrize(
    ("values", "mentions"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"replicas": 3}, "replicas"),  # unknown top-level key (a typo of replicaCount)
        ({"autoscaling": {"enabled": "yes"}}, "autoscaling"),
        ({"turn": {"sidecar": {"source": "api"}}}, "source"),
        ({"turn": {"urls": ["stun:stun.example.org:3478"]}}, "urls"),
        ({"service": {"port": 70000}}, "port"),
        ({"settings": {"maxMessageBytes": 10}}, "maxMessageBytes"),
        ({"jwt": {"secret": "x"}}, "secret"),  # unknown nested key
        ({"ingress": {"hosts": [{"host": "a", "paths": [{"path": "api"}]}]}}, "path"),
        (
            {"drain": {"preStopSeconds": -1, "windowSeconds": 5, "deadlineSeconds": 25}},
            "preStopSeconds",
        ),
        ({"redis": {"auth": {"password": "has space"}}}, "password"),  # the subchart's schema
    ],
)
def test_schema_refuses_wrong_types_and_unknown_keys(
    chart: helm.Chart, values: dict[str, Any], mentions: str
) -> None:
    """Each bad value is refused, and the message names the offending key."""
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert mentions in str(refused.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {**NO_REDIS, "autoscaling": {"enabled": True}},
            "autoscaling.enabled needs Redis (redis.enabled or externalRedis)",
        ),
        (
            {**NO_REDIS, "replicaCount": 2, "autoscaling": {"enabled": False}},
            "replicaCount=2 needs Redis (redis.enabled or externalRedis)",
        ),
        (
            {"externalRedis": {"url": "redis://r:6379/0"}},
            "redis.enabled and externalRedis are both set",
        ),
        (
            {**NO_REDIS, "externalRedis": {"url": "http://r:6379", "existingSecret": ""}},
            "externalRedis.url must start with redis://",
        ),
        (
            {**NO_REDIS, "externalRedis": {"url": "redis://r:6379/0", "existingSecret": "s"}},
            "externalRedis.url and externalRedis.existingSecret are both set",
        ),
        (
            {"redis": {"enabled": True, "auth": {"existingSecret": "mine"}}},
            "redis.auth.existingSecret is not supported with the bundled Redis",
        ),
        ({"turn": {"urls": []}}, "turn.sidecar.enabled needs turn.urls"),
        (
            {
                "turn": {"sidecar": {"source": "kubernetesApi"}},
                "serviceAccount": {"create": False, "name": ""},
            },
            "turn.sidecar.source=kubernetesApi binds a Role",
        ),
        (
            {"jwt": {"publicKey": "PEM", "jwksUrl": "https://auth.example.com/jwks"}},
            "jwt.publicKey and jwt.jwksUrl are both set",
        ),
        ({"jwt": {"secretKey": "short"}}, "jwt.secretKey must be at least 32 characters"),
        (
            {"drain": {"preStopSeconds": 5, "windowSeconds": 30, "deadlineSeconds": 25}},
            "drain.windowSeconds (30) must be shorter than drain.deadlineSeconds (25)",
        ),
        (
            {"settings": {"wsPingIntervalSeconds": 30, "presenceTtlSeconds": 30}},
            "settings.wsPingIntervalSeconds (30) must be shorter than settings.presenceTtlSeconds",
        ),
        (
            {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}},
            "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (3)",
        ),
        (
            {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
            "podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable are both set",
        ),
        ({"httpRoute": {"enabled": True}}, "httpRoute.enabled needs httpRoute.parentRefs"),
        (
            {"policy": {"limits": {"max_message_bytes": 131072}}},
            "policy.limits.max_message_bytes (131072) is above settings.maxMessageBytes (65536)",
        ),
        (
            {
                "turn": {"urls": [], "sidecar": {"enabled": False}},
                "policy": {"ice": {"turn_urls": ["turn:t.example.org:3478"]}},
            },
            "policy.ice.turn_urls needs a TURN credential source",
        ),
    ],
)
def test_contradictions_fail_the_render_readably(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """Values the schema allows but that cannot work fail with a line saying what to do."""
    with pytest.raises(helm.HelmRenderError) as failed:
        support.render(values)
    assert "VALUES VALIDATION:" in str(failed.value)
    assert message in str(failed.value)


def test_every_contradiction_is_reported_at_once(chart: helm.Chart) -> None:
    """Several problems give several lines, not one per attempt."""
    values = {
        **NO_REDIS,
        "replicaCount": 3,
        "autoscaling": {"enabled": False},
        "turn": {"urls": []},
    }
    with pytest.raises(helm.HelmRenderError) as failed:
        support.render(values)
    assert "replicaCount=3 needs Redis" in str(failed.value)
    assert "turn.sidecar.enabled needs turn.urls" in str(failed.value)


@pytest.mark.parametrize(
    "values",
    [
        {**NO_REDIS, **ONE_POD},  # one pod may use the in-memory backend
        {**NO_REDIS, **ONE_POD, "externalRedis": {"url": "rediss://:pw@r:6380/0"}},
        {**NO_REDIS, "externalRedis": {"existingSecret": "managed"}},  # HPA with external Redis
        {"turn": {"urls": [], "sidecar": {"enabled": False}}},
        {"policy": {"limits": {"max_message_bytes": 65536}}},  # equal: not a raise
        {"policy": {"ice": {"turn_urls": ["turn:t.example.org:3478"]}}},  # the sidecar's file
    ],
)
def test_the_rules_stop_at_their_boundary(chart: helm.Chart, values: dict[str, Any]) -> None:
    """Just inside each rule the chart renders."""
    assert support.render(values).named("Deployment", "")


def embedded_policy_schema(policy: Any) -> tuple[Any, dict[str, Any]]:
    """schemas/policy.schema.json as values.schema.json embeds it: its $defs become
    definitions named policy.<Def> (the values schema is draft-07), references rewritten."""

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: "#/definitions/policy." + value.removeprefix("#/$defs/")
                if key == "$ref"
                else rewrite(value)
                for key, value in node.items()
            }
        return [rewrite(item) for item in node] if isinstance(node, list) else node

    top = rewrite({key: value for key, value in policy.items() if key != "$defs"})
    return top, {f"policy.{name}": rewrite(d) for name, d in policy["$defs"].items()}


def test_values_schema_embeds_the_current_policy_schema() -> None:
    """The chart validates `policy` with the service's own policy schema (the committed
    schemas/policy.schema.json, which `rendezvous policy-schema` prints), so a policy the
    pods would refuse fails at `helm install`/`upgrade` instead. If this fails, copy the
    policy schema in again as embedded_policy_schema describes."""
    policy = json.loads((support.ROOT / "schemas" / "policy.schema.json").read_text())
    chart_schema = json.loads((support.CHART_DIR / "values.schema.json").read_text())
    top, definitions = embedded_policy_schema(policy)
    assert chart_schema["properties"]["policy"] == top
    assert {k: v for k, v in chart_schema["definitions"].items() if k.startswith("policy.")} == (
        definitions
    )


@pytest.mark.parametrize(
    ("policy", "mentions"),
    [
        ({"rooms": {"overides": []}}, "overides"),
        ({"limits": {"max_message_bytes": 10}}, "max_message_bytes"),
        ({"allowed_origins": ["app.example.org"]}, "allowed_origins"),
        ({"rooms": {"overrides": [{"match": "a b", "max_participants": 2}]}}, "match"),
    ],
)
def test_schema_refuses_a_policy_the_pods_would_refuse(
    chart: helm.Chart, policy: dict[str, Any], mentions: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema({"policy": policy})
    assert "/policy/" in str(refused.value) and mentions in str(refused.value)
