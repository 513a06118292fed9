"""The policy in force as an operator reads it: the same field names as the policy file,
every field filled in (the file's value or the environment's). Shown by `GET
/webrtc/admin/policy` and `rendezvous check-config`, so what a pipeline checked and what
a pod runs compare field by field. It holds no secret: a policy never carries one."""

from __future__ import annotations

from typing import Any

from rendezvous.policy.effective import EffectivePolicy


def policy_view(effective: EffectivePolicy) -> dict[str, Any]:
    """`effective` as JSON, shaped like a policy file that states every field."""
    ice, rooms, limits = effective.ice, effective.rooms, effective.limits
    return {
        "ice": {
            "stun_urls": list(ice.stun_urls),
            # null: none stated, so the TURN sidecar's file names them (and a copy of
            # this view saved as a policy keeps it so; [] would mean no TURN at all).
            "turn_urls": list(ice.turn_urls) if ice.turn_urls_set else None,
            "ice_transport_policy": ice.ice_transport_policy,
            "bundle_policy": ice.bundle_policy,
            "rtcp_mux_policy": ice.rtcp_mux_policy,
        },
        "rooms": {
            "max_participants": rooms.default,
            "overrides": [
                {"match": match, "max_participants": capacity}
                for match, capacity in rooms.overrides
            ],
        },
        "limits": {
            "max_message_bytes": limits.max_message_bytes,
            "rate_limit_per_second": limits.rate_per_second,
            "rate_limit_burst": limits.burst,
            "send_queue_max_messages": limits.queue_max_messages,
            "send_queue_max_bytes": limits.queue_max_bytes,
        },
        "allowed_origins": sorted(effective.allowed_origins),
    }
