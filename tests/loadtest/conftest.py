"""Real Redis for the cross-instance smoke run (tests/support/redis.py documents it)."""

from tests.support.redis import redis_server  # noqa: F401
