"""Backends carry what instances share; `create_backend` picks one from the settings."""

from __future__ import annotations

from rendezvous.backends.base import Backend
from rendezvous.backends.memory import MemoryBackend
from rendezvous.settings import Settings


def create_backend(settings: Settings) -> Backend:
    target = settings.redis_target
    if target is not None:
        from rendezvous.backends.redis import RedisBackend  # imported only when used

        return RedisBackend(target, presence_ttl_seconds=settings.presence_ttl_seconds)
    return MemoryBackend(presence_ttl_seconds=settings.presence_ttl_seconds)
