"""The policy in force: the environment's values with a policy file's fields laid over
them, checked against what the process allows. Frozen: a new version is a new object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from rendezvous.limits import SessionLimits
from rendezvous.policy.document import EMPTY_POLICY, Policy, PolicyError
from rendezvous.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IceConfig:
    stun_urls: tuple[str, ...]
    turn_urls: tuple[str, ...]
    ice_transport_policy: Literal["all", "relay"]
    bundle_policy: Literal["balanced", "max-compat", "max-bundle"]
    rtcp_mux_policy: Literal["require", "negotiate"]
    turn_urls_set: bool  # stated by the policy or WEBRTC_TURN_URLS, so the sidecar's lose


@dataclass(frozen=True, slots=True)
class RoomCapacity:
    default: int
    overrides: tuple[tuple[str, int], ...]  # (match, max_participants), first match wins

    def for_room(self, room_id: str) -> int:
        for match, capacity in self.overrides:
            if match == room_id or (match.endswith("*") and room_id.startswith(match[:-1])):
                return capacity
        return self.default


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    ice: IceConfig
    rooms: RoomCapacity
    limits: SessionLimits
    allowed_origins: frozenset[str]  # empty: any origin


def resolve(settings: Settings, policy: Policy | None = None) -> EffectivePolicy:
    """`settings` with `policy`'s fields laid over; PolicyError if it asks for more than
    the process allows."""
    policy = policy or EMPTY_POLICY
    errors = _conflicts(settings, policy)
    if errors:
        raise PolicyError(errors)
    ice, rooms, limits = policy.ice, policy.rooms, policy.limits
    return EffectivePolicy(
        ice=IceConfig(
            stun_urls=_pick(ice.stun_urls, settings.stun_url_list),
            turn_urls=_pick(ice.turn_urls, settings.turn_url_list),
            ice_transport_policy=ice.ice_transport_policy or settings.ice_transport_policy,
            bundle_policy=ice.bundle_policy or settings.bundle_policy,
            rtcp_mux_policy=ice.rtcp_mux_policy or settings.rtcp_mux_policy,
            turn_urls_set=ice.turn_urls is not None or settings.turn_urls is not None,
        ),
        rooms=RoomCapacity(
            default=_value(rooms.max_participants, settings.max_participants_per_room),
            overrides=tuple((o.match, o.max_participants) for o in rooms.overrides),
        ),
        limits=SessionLimits(
            max_message_bytes=_value(limits.max_message_bytes, settings.max_message_bytes),
            rate_per_second=_value(limits.rate_limit_per_second, settings.rate_limit_per_second),
            burst=_value(limits.rate_limit_burst, settings.rate_limit_burst),
            queue_max_messages=_value(
                limits.send_queue_max_messages, settings.send_queue_max_messages
            ),
            queue_max_bytes=_value(limits.send_queue_max_bytes, settings.send_queue_max_bytes),
        ),
        allowed_origins=(
            frozenset(o.rstrip("/") for o in policy.allowed_origins)
            if policy.allowed_origins is not None
            else settings.allowed_origin_set
        ),
    )


def _conflicts(settings: Settings, policy: Policy) -> list[str]:
    errors = []
    wanted = policy.limits.max_message_bytes
    if wanted is not None and wanted > settings.max_message_bytes:
        errors.append(
            f"limits.max_message_bytes: {wanted} is above WEBRTC_MAX_MESSAGE_BYTES "
            f"({settings.max_message_bytes}); a policy may lower it, never raise it"
        )
    has_credentials = settings.turn_credentials_file or settings.turn_secret
    if policy.ice.turn_urls and not (has_credentials or settings.turn_username):
        errors.append(
            "ice.turn_urls: no TURN credential source is configured "
            "(WEBRTC_TURN_CREDENTIALS_FILE, WEBRTC_TURN_SECRET or the static pair)"
        )
    return errors


def _pick(stated: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return default if stated is None else tuple(stated)


def _value(stated: T | None, default: T) -> T:
    return default if stated is None else stated
