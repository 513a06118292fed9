"""The Secrets: generated when not given, the given value when given, none when an existing
Secret is named (then referenced by name and key). Keeping a generated value across
upgrades relies on `lookup`, which finds Secrets only in a cluster: offline, every render
generates anew, so these tests see the generation, never the read-back."""

from __future__ import annotations

import string

import helm_python as helm

from rendezvous.redis_url import parse_redis_url
from tests.chart import support

ALPHANUMERIC = set(string.ascii_letters + string.digits)


def secret(manifests: support.Manifests, name: str) -> dict[str, str]:
    return support.decoded(manifests.one("Secret", name))


def test_generated_secrets_are_long_and_random(defaults: support.Manifests) -> None:
    """JWT key (64), TURN secret (48) and Redis password (32): letters and digits, and a
    second render draws new ones."""
    again = support.render()
    for name, key, length in (
        ("rv-rendezvous-jwt", "jwt-secret-key", 64),
        ("rv-rendezvous-turn", "static-auth-secret", 48),
        ("rv-redis", "redis-password", 32),
    ):
        value = secret(defaults, name)[key]
        assert len(value) == length and set(value) <= ALPHANUMERIC, name
        assert secret(again, name)[key] != value, name


def test_given_secrets_are_used_verbatim(chart: helm.Chart) -> None:
    manifests = support.render(
        {
            "jwt": {"secretKey": "j" * 32},
            "turn": {"secret": {"value": "coturn-shared", "key": "auth-secret"}},
            "redis": {"auth": {"password": "p@ss/w+rd%"}},
        }
    )
    assert secret(manifests, "rv-rendezvous-jwt") == {"jwt-secret-key": "j" * 32}
    assert secret(manifests, "rv-rendezvous-turn") == {"auth-secret": "coturn-shared"}
    assert secret(manifests, "rv-redis")["redis-password"] == "p@ss/w+rd%"


def test_bundled_redis_url_is_ready_for_the_service(chart: helm.Chart) -> None:
    """The bundled chart's Secret carries the URL the service reads as REDIS_URL: its own
    Service, its password (URL-escaped, so any character survives), database 0."""
    manifests = support.render({"redis": {"auth": {"password": "p@ss/w+rd%"}}})
    env = manifests.environment(manifests.container("rendezvous"))
    assert env["REDIS_URL"] == {"secretKeyRef": {"name": "rv-redis", "key": "redis-url"}}
    target = parse_redis_url(secret(manifests, "rv-redis")["redis-url"])
    assert target.nodes == (("rv-redis.signaling.svc", 6379),)
    assert target.password == "p@ss/w+rd%"
    assert target.db == 0
    service = manifests.one("Service", "rv-redis")
    assert service["spec"]["ports"][0]["port"] == 6379


def test_existing_secrets_are_referenced_not_created(chart: helm.Chart) -> None:
    """With existingSecret names the chart creates none of those Secrets and points the
    containers at the named Secret and key."""
    manifests = support.render(
        {
            "jwt": {"existingSecret": "auth-keys", "existingSecretKey": "hmac"},
            "turn": {"secret": {"existingSecret": "coturn", "key": "shared"}},
            "redis": {"enabled": False},
            "externalRedis": {"existingSecret": "managed-redis", "existingSecretKey": "url"},
        }
    )
    assert manifests.all("Secret") == []
    env = manifests.environment(manifests.container("rendezvous"))
    assert env["JWT_SECRET_KEY"] == {"secretKeyRef": {"name": "auth-keys", "key": "hmac"}}
    assert env["REDIS_URL"] == {"secretKeyRef": {"name": "managed-redis", "key": "url"}}
    volume = next(v for v in manifests.pod["volumes"] if v["name"] == "turn-secret")
    assert volume["secret"]["secretName"] == "coturn"
    assert volume["secret"]["items"] == [{"key": "shared", "path": "shared"}]
    sidecar_env = manifests.environment(manifests.container("turn-sidecar"))
    assert sidecar_env["WEBRTC_TURN_SECRET_KEY"] == "shared"


def test_external_redis_url_gets_a_secret_of_its_own(chart: helm.Chart) -> None:
    url = "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0"
    manifests = support.render({"redis": {"enabled": False}, "externalRedis": {"url": url}})
    assert secret(manifests, "rv-rendezvous-external-redis") == {"redis-url": url}
    assert manifests.all("StatefulSet") == []


def test_public_key_mode_has_no_hmac_secret(chart: helm.Chart) -> None:
    """With a JWKS URL alone there is no HMAC key: no JWT Secret, no JWT_SECRET_KEY, the
    URL in the ConfigMap, and no helm test pod (it needs the key to mint a token)."""
    manifests = support.render({"jwt": {"jwksUrl": "https://auth.example.com/jwks.json"}})
    assert "rv-rendezvous-jwt" not in [s["metadata"]["name"] for s in manifests.all("Secret")]
    env = manifests.environment(manifests.container("rendezvous"))
    assert "JWT_SECRET_KEY" not in env
    assert env["JWT_JWKS_URL"] == "https://auth.example.com/jwks.json"
    assert manifests.all("Pod") == []
    assert "rendezvous token --user" not in manifests.notes
