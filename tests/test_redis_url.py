"""REDIS_URL forms (DESIGN section 5): standalone, TLS, Cluster and Sentinel URLs parse into a
RedisTarget; malformed ones fail with a readable reason that never echoes a password."""

from __future__ import annotations

import pytest

from rendezvous.redis_url import RedisMode, RedisTarget, parse_redis_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://localhost",
            RedisTarget(mode=RedisMode.STANDALONE, nodes=(("localhost", 6379),)),
        ),
        (
            "redis://:s3cret@redis.internal:6380/2",
            RedisTarget(
                mode=RedisMode.STANDALONE,
                nodes=(("redis.internal", 6380),),
                password="s3cret",
                db=2,
            ),
        ),
        (
            "rediss://app:p%40ss@cache.example:6390/0",
            RedisTarget(
                mode=RedisMode.STANDALONE,
                nodes=(("cache.example", 6390),),
                tls=True,
                username="app",
                password="p@ss",
            ),
        ),
        (
            "redis://[::1]:7000/1",
            RedisTarget(mode=RedisMode.STANDALONE, nodes=(("::1", 7000),), db=1),
        ),
        (
            "redis+cluster://n1:7000,n2:7001,n3",
            RedisTarget(mode=RedisMode.CLUSTER, nodes=(("n1", 7000), ("n2", 7001), ("n3", 6379))),
        ),
        (
            "rediss+cluster://:pw@n1:7000,n2:7001",
            RedisTarget(
                mode=RedisMode.CLUSTER,
                nodes=(("n1", 7000), ("n2", 7001)),
                tls=True,
                password="pw",
            ),
        ),
        (
            "redis+sentinel://s1:26379,s2:26380/mymaster/3",
            RedisTarget(
                mode=RedisMode.SENTINEL,
                nodes=(("s1", 26379), ("s2", 26380)),
                db=3,
                service_name="mymaster",
            ),
        ),
        (
            "redis+sentinel://s1/mymaster",
            RedisTarget(mode=RedisMode.SENTINEL, nodes=(("s1", 26379),), service_name="mymaster"),
        ),
    ],
)
def test_redis_url_forms_parse_into_a_target(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:6379", "scheme"),
        ("localhost:6379", "scheme"),
        ("redis://", "no host"),
        ("redis://a:1,b:2", "exactly one host"),
        ("redis://h:notaport", "bad port"),
        ("redis://h:70000", "bad port"),
        ("redis://h:0", "bad port"),
        ("redis://h/zero", "database"),
        ("redis://h/0/1", "database"),
        ("redis+cluster://a:1,b:2/3", "database 0"),
        ("redis+cluster://a:1,,b:2", "no host"),
        ("redis+sentinel://s1:26379", "primary's name"),
    ],
)
def test_malformed_redis_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_redis_url(url)


def test_a_password_with_a_slash_is_kept_whole_and_never_echoed() -> None:
    target = parse_redis_url("redis://user:abc/def@host:6379/4")
    assert (target.username, target.password, target.nodes, target.db) == (
        "user",
        "abc/def",
        (("host", 6379),),
        4,
    )
    with pytest.raises(ValueError) as caught:
        parse_redis_url("redis://user:topsecret/x@host:bad/0")
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@h:6380/2", "redis://:***@h:6380/2"),
        ("rediss://app:s3cret@h", "rediss://app:***@h:6379/0"),
        ("redis://app@h", "redis://app@h:6379/0"),
        ("redis+cluster://:s3cret@a:1,b:2", "redis+cluster://:***@a:1,b:2/0"),
        ("redis+sentinel://:s3cret@s1,s2:1/m/3", "redis+sentinel://:***@s1:26379,s2:1/m/3"),
        ("redis://[::1]:7000", "redis://[::1]:7000/0"),
    ],
)
def test_masked_url_hides_the_password_and_round_trips(url: str, masked: str) -> None:
    assert parse_redis_url(url).masked() == masked
    assert "s3cret" not in masked
    if "***" not in masked:
        assert parse_redis_url(masked) == parse_redis_url(url)
