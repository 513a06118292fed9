"""The policy in force on this instance, and what the reconciler last did.

Readers hold the `LivePolicy` and read an attribute at the moment they need it (a join
its room's capacity, a frame its limits), so a new version is used at once without
touching a session. `apply` swaps every attribute without an await in between, so no
reader ever sees half of one version and half of another."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from rendezvous.limits import SessionLimits
from rendezvous.policy.effective import EffectivePolicy, IceConfig, RoomCapacity


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """As an operator reports it: which version is in force and whether the last one
    offered was refused."""

    source: str  # the policy file's path, or "environment"
    generation: int  # versions applied: 0 = the environment's values alone
    applied_at: float | None  # unix time
    sha256: str | None  # of the applied file's bytes, as `sha256sum` prints it
    last_error: str | None = None  # why the latest version offered was refused
    last_error_at: float | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "generation": self.generation,
            "applied_at": _iso(self.applied_at),
            "sha256": self.sha256,
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
        }


class LivePolicy:
    __slots__ = ("allowed_origins", "effective", "ice", "limits", "rooms", "status")

    def __init__(self, effective: EffectivePolicy, status: PolicyStatus) -> None:
        self.effective = effective
        self.ice: IceConfig = effective.ice
        self.rooms: RoomCapacity = effective.rooms
        self.limits: SessionLimits = effective.limits
        self.allowed_origins: frozenset[str] = effective.allowed_origins
        self.status = status

    def apply(self, effective: EffectivePolicy, *, sha256: str) -> None:
        """Put a new version in force, all of it at once."""
        now = time.time()
        self.effective = effective
        self.ice, self.rooms = effective.ice, effective.rooms
        self.limits, self.allowed_origins = effective.limits, effective.allowed_origins
        self.status = replace(
            self.status,
            generation=self.status.generation + 1,
            applied_at=now,
            sha256=sha256,
            last_error=None,
            last_error_at=None,
        )

    def clear_error(self) -> None:
        """The file is back to the version in force."""
        self.status = replace(self.status, last_error=None, last_error_at=None)

    def refuse(self, error: str) -> None:
        """A version was refused; the one in force stays."""
        self.status = replace(self.status, last_error=error, last_error_at=time.time())


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
