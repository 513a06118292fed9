"""What the suite reports to locust as failures: one exception class per kind, named in
locust's error report (loadtest/README.md lists them)."""

from __future__ import annotations

from loadtest.signaling.delivery import Verdict


class SignalingFailure(Exception):
    """A check of the suite failed."""


class MessageLost(SignalingFailure):
    pass


class MessageOutOfOrder(SignalingFailure):
    pass


class MessageDuplicated(SignalingFailure):
    pass


class MessageMisrouted(SignalingFailure):
    pass


class MessageLate(SignalingFailure):
    pass


class UnexpectedEvent(SignalingFailure):
    pass


class ServerErrorFrame(SignalingFailure):
    pass


class ConnectionClosed(SignalingFailure):
    pass


class JoinFailed(SignalingFailure):
    pass


class ConfigFailed(SignalingFailure):
    pass


class ClientError(SignalingFailure):
    """The suite itself failed (a bug here, not in the service)."""


# Each failure's message stays the same for every occurrence, so that locust's error
# report counts them in one row; the log has the details (room, connections, sequence).
VERDICT_FAILURES: dict[Verdict, tuple[type[SignalingFailure], str]] = {
    Verdict.REORDERED: (MessageOutOfOrder, "arrived after a later message of its stream"),
    Verdict.DUPLICATED: (MessageDuplicated, "arrived twice"),
    Verdict.MISROUTED: (MessageMisrouted, "wrong room, recipient, sender or type"),
    Verdict.LATE: (MessageLate, "arrived after its deadline (counted lost)"),
    Verdict.UNEXPECTED: (UnexpectedEvent, "no join or leave in this room called for it"),
}
