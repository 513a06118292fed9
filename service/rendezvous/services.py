"""What the routes share, built once per app by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from rendezvous.auth import Authenticator
from rendezvous.backends.base import Backend
from rendezvous.draining import Drainer
from rendezvous.hub import Hub
from rendezvous.policy.live import LivePolicy
from rendezvous.settings import Settings
from rendezvous.telemetry.metrics import Metrics
from rendezvous.telemetry.spans import SignalingSpans
from rendezvous.turn.ice_servers import IceServerProvider


@dataclass(slots=True)
class Services:
    settings: Settings
    backend: Backend
    hub: Hub
    authenticator: Authenticator
    ice: IceServerProvider
    metrics: Metrics
    policy: LivePolicy  # the runtime policy in force, swapped whole on each reload
    drainer: Drainer
    spans: SignalingSpans  # the service's own spans (no-ops when tracing is off)
    connections: int = 0  # WebSockets in a handshake or open, for WEBRTC_MAX_CONNECTIONS
