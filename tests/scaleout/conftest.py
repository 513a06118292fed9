"""Real Redis for the scale-out tests (tests/support/redis.py documents the fixtures)."""

from tests.support.redis import redis_sentinel, redis_server  # noqa: F401
