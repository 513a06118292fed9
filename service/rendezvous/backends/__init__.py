"""Backends carry what instances share; `create_backend` picks one from the settings."""

from __future__ import annotations

from rendezvous.backends.base import Backend
from rendezvous.backends.memory import MemoryBackend
from rendezvous.settings import ConfigError, Settings


def create_backend(settings: Settings) -> Backend:
    if settings.redis_target is not None:
        # Scale-out through Redis is issue 3; refuse rather than silently run unshared.
        raise ConfigError("REDIS_URL/REDIS_HOST: the redis backend is not available in this build")
    return MemoryBackend(presence_ttl_seconds=settings.presence_ttl_seconds)
