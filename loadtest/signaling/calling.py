"""Calls: one room of k members over real WebSockets, as browsers in a mesh call use the
service. Members join one by one (each fetches /webrtc/config first); every newcomer
offers to each member already there and trickles its candidates; whoever gets an offer
answers and trickles back. Then the call holds, maybe churns (a member leaves and, after
a pause, rejoins and offers again), and everyone leaves. Each relayed message and
presence event is checked off in the room's `Ledger` and reported as a locust request.
Members' readers call back `on_frame` and `on_gone`; offers and answers run in greenlets
of the call's own group, so that the call knows when everyone is done sending."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import gevent
import orjson
import websocket
from gevent.pool import Group

from loadtest.signaling import delivery, sdp
from loadtest.signaling.connections import Member, Sources, get_config
from loadtest.signaling.delivery import Ledger, Outcome, Pending, Tally, Verdict
from loadtest.signaling.failures import (
    VERDICT_FAILURES,
    ClientError,
    ConfigFailed,
    ConnectionClosed,
    JoinFailed,
    MessageLost,
    MessageMisrouted,
    ServerErrorFrame,
    UnexpectedEvent,
)
from loadtest.signaling.options import Endpoint, SuiteOptions
from rendezvous.auth import mint_token

log = logging.getLogger("rendezvous.loadtest")

TOKEN_TTL_SECONDS = 3600
RELAYED = frozenset({"offer", "answer", "ice_candidate"})
PRESENCE = frozenset({"user_joined", "user_left"})


# Offers that get an answer: not one that came twice, late, or was never sent to us.
_ANSWERED = frozenset({Verdict.DELIVERED, Verdict.REORDERED})


class Report(Protocol):
    """locust's request event, as `environment.events.request.fire`."""

    def __call__(
        self,
        *,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: BaseException | None,
        context: dict[str, Any],
    ) -> None: ...


class CallAborted(Exception):
    """The call cannot go on (a failed join, a member's connection gone); already counted."""


class Call:
    """One room's session from first join to last leave (see the module docstring)."""

    def __init__(
        self,
        *,
        room: str,
        size: int,
        endpoints: tuple[Endpoint, ...],
        options: SuiteOptions,
        tally: Tally,
        report: Report,
        sources: Sources,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.room = room
        self.size = size
        self.endpoints = endpoints  # member i of the room joins endpoints[(first + i) % n]
        self.options = options
        self.tally = tally
        self.report = report
        self.sources = sources
        self.rng = rng
        self.clock = clock
        self.ledger = Ledger(room, tally, clock=clock)
        self.users = [f"{room}-m{i}" for i in range(size)]
        self.present: dict[str, Member] = {}
        self._joins: dict[str, int] = {}
        self._all: list[Member] = []
        self._workers = Group()
        self._idle = threading.Event()
        self._first_endpoint = rng.randrange(len(endpoints))

    # The session.

    def run(self) -> None:
        self.tally.add(delivery.ROOMS, str(self.size))
        outcome = "abandoned"  # unless it ends or fails: locust killed the user midway
        try:
            for index in range(self.size):
                self.join(index)
            self.settle()
            gevent.sleep(self.options.hold_seconds.draw(self.rng))
            if self.rng.random() < self.options.churn_probability:
                churner = self.rng.randrange(self.size)
                self.leave(churner)
                self.settle()
                gevent.sleep(self.options.rejoin_pause_seconds.draw(self.rng))
                self.join(churner)
                self.settle()
                gevent.sleep(self.options.hold_seconds.draw(self.rng))
            for index in range(self.size):  # each sees every earlier one leave
                self.leave(index)
                self.settle()
            outcome = "completed"
        except CallAborted as exc:
            outcome = "aborted"
            log.warning("room %s aborted: %s", self.room, exc)
        except Exception as exc:  # a bug here: counted, then locust logs it with its traceback
            outcome = "failed"
            self.tally.add(delivery.CLIENT_ERROR, type(exc).__name__)
            raise
        finally:
            if outcome == "abandoned":
                log.info("room %s abandoned: its locust user was stopped midway", self.room)
            self.tally.add(delivery.SESSIONS, outcome)
            self.ledger.abandon()
            self._workers.kill(block=False)
            for member in self._all:
                member.abort()

    def join(self, index: int) -> None:
        """Member `index` joins (again): /webrtc/config, handshake, `room_state`; then it
        offers to everyone already there."""
        user = self.users[index]
        number = self._joins[user] = self._joins.get(user, 0) + 1
        endpoint = self.endpoints[(self._first_endpoint + index) % len(self.endpoints)]
        token = mint_token(
            key=self.options.secret,
            user_id=user,
            ttl_seconds=TOKEN_TTL_SECONDS,
            username=user,
            rooms=[self.room],
        )
        member = Member(self, user, number, endpoint, self.sources.next())
        self._all.append(member)
        self.fetch_config(member, token)
        for other in self.present.values():
            self.ledger.expect_event("user_joined", receiver=other.conn, subject=user)
        started = self.clock()
        try:
            member.connect(token)
            text = member.read_text()
        except (websocket.WebSocketException, OSError) as exc:
            self._join_failed(member, started, f"{type(exc).__name__}: {exc}", 0)
        if text is None:
            self._join_failed(member, started, f"closed with code {member.close_code}", 0)
        problem = self._room_state_problem(text, expected={*self.present, user})
        if problem is not None:
            log.warning("%s: %s: %s", member.conn, problem, text[:500])
            self._join_failed(member, started, problem, len(text))
        self._report("room_state", "join", self.clock() - started, len(text))
        self.present[user] = member
        member.start_reading()
        for other in list(self.present.values()):
            if other is not member:  # the newcomer offers to everyone already there
                self._spawn(self._offer, member, other.conn, other.user)

    def _room_state_problem(self, text: str, *, expected: set[str]) -> str | None:
        """What is wrong with the first frame of a join, if anything."""
        try:
            frame = orjson.loads(text)
            kind, payload = frame.get("type"), frame.get("payload")
            if kind == "error":
                self.tally.add(delivery.SERVER_ERROR, str(payload.get("code")))
            if kind != "room_state":
                return f"{kind} first"
            participants = {p.get("user_id") for p in payload.get("participants", ())}
        except (ValueError, AttributeError, TypeError):
            return "malformed first frame"
        if participants != expected or frame.get("room_id") != self.room:
            return "room_state differs from the members joined"
        return None

    def leave(self, index: int) -> None:
        user = self.users[index]
        member = self.present.pop(user)
        for other in self.present.values():
            self.ledger.expect_event("user_left", receiver=other.conn, subject=user)
        member.leave()

    def settle(self) -> None:
        """Wait until every expected message and event has arrived and nobody is still
        sending; what misses its deadline is lost. Aborts if a connection was lost."""
        deadline = self.options.deadline_seconds
        only_senders_since: float | None = None
        while True:
            self._idle.clear()
            now = self.clock()
            for pending in self.ledger.expire(now, deadline):
                self._lost(pending, deadline)
            oldest = self.ledger.oldest()
            if oldest is None and not self._busy():
                break
            if oldest is not None:
                only_senders_since = None
                wait = oldest.since + deadline - now
            else:  # nothing in flight, yet a sender has not finished: stuck in a send?
                only_senders_since = now if only_senders_since is None else only_senders_since
                wait = only_senders_since + deadline - now
                if wait <= 0:
                    self._workers.kill(block=True)
                    self.tally.add(delivery.CLIENT_ERROR, "stalled")
                    self._report_failure("WS", "send", deadline, ClientError("senders stalled"))
                    raise CallAborted(f"senders stalled for {deadline:g} s")
            self._idle.wait(wait)
        gone = [m.conn for m in self._all if m.gone]
        if gone:
            raise CallAborted(f"connection lost: {', '.join(gone)}")

    # The media negotiation, one greenlet per direction.

    def _offer(self, offerer: Member, to_conn: str, to_user: str) -> None:
        self._describe(offerer, "offer", to_conn, to_user)

    def _answer(self, answerer: Member, to_conn: str, to_user: str) -> None:
        self._describe(answerer, "answer", to_conn, to_user)

    def _describe(self, member: Member, kind: str, to_conn: str, to_user: str) -> None:
        """Send an offer or answer, then trickle candidates and end-of-candidates, as a
        browser does right after setLocalDescription."""
        options, rng = self.options, self.rng
        description = sdp.session_description(kind, options.sdp_bytes.draw_int(rng), rng)
        member.send(kind, {"type": kind, "sdp": description}, to_conn=to_conn, to_user=to_user)
        count = options.candidates.draw_int(rng)
        for line in [*sdp.candidates(count, member.ufrag, rng), ""]:
            gevent.sleep(options.trickle_gap_ms.draw(rng) / 1000)
            payload: dict[str, Any] = {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}
            if line:
                payload["usernameFragment"] = member.ufrag
            member.send("ice_candidate", payload, to_conn=to_conn, to_user=to_user)

    def _spawn(self, work: Callable[[Member, str, str], None], *args: Any) -> None:
        def run() -> None:
            try:
                work(*args)
            except (websocket.WebSocketException, OSError) as exc:
                log.info("%s: send failed: %r", args[0].conn, exc)  # its reader reports it
            except Exception as exc:
                log.exception("loadtest bug in %s", work.__name__)
                self.tally.add(delivery.CLIENT_ERROR, type(exc).__name__)
                self._report_failure("WS", work.__name__.strip("_"), 0, ClientError(repr(exc)))
            finally:
                self._wake_if_idle(finishing=gevent.getcurrent())

        self._workers.spawn(run)

    # Called by the members' readers.

    def on_frame(self, member: Member, text: str, received: float) -> None:
        try:
            frame = orjson.loads(text)
            kind = str(frame.get("type"))
            payload = frame.get("payload") or {}
            if kind in RELAYED:
                outcome = self.ledger.message(frame, receiver=member.conn, received=received)
                self._report_outcome(outcome, "relay", len(text))
                if kind == "offer" and outcome.verdict in _ANSWERED:
                    probe = payload[delivery.PROBE]
                    self._spawn(self._answer, member, probe["from"], probe["user"])
            elif kind in PRESENCE:
                self._presence(member, kind, payload, received, len(text))
            elif kind == "error":
                code = str(payload.get("code"))
                self.tally.add(delivery.SERVER_ERROR, code)
                message = f"{code}: {payload.get('message')}"
                self._report_failure("error", code, 0, ServerErrorFrame(message))
            elif kind != "pong":
                log.warning("room %s: %s got %s", self.room, member.conn, text[:500])
                self.tally.add(delivery.UNEXPECTED_EVENT, kind)
                unexpected = UnexpectedEvent(f"a {kind} frame mid-call")
                self._report_failure(kind, "unexpected", 0, unexpected)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("room %s: %s got %s (%r)", self.room, member.conn, text[:500], exc)
            self.tally.add(delivery.MISROUTED, "unparsable")
            self._report_failure("WS", "frame", 0, MessageMisrouted("unparsable frame"))
        self._wake_if_idle()

    def on_gone(self, member: Member, reason: str) -> None:
        member.gone = True
        self.tally.add(delivery.UNEXPECTED_CLOSE, str(member.close_code))
        self._report_failure("WS", "connection", 0, ConnectionClosed(reason))
        self._idle.set()

    def _presence(
        self, member: Member, kind: str, payload: dict[str, Any], received: float, length: int
    ) -> None:
        subject = str(payload.get("user_id"))
        reason = payload.get("reason", "left")
        if kind == "user_left" and reason != "left":  # timeout, replaced: not what we did
            self.tally.add(delivery.UNEXPECTED_EVENT, f"user_left:{reason}")
            failure = UnexpectedEvent(f"user_left with reason {reason}")
            self._report_failure(kind, "presence", 0, failure)
            return
        outcome = self.ledger.event(kind, receiver=member.conn, subject=subject, received=received)
        self._report_outcome(outcome, "presence", length)

    # Waiting and reporting.

    def _busy(self, finishing: object = None) -> bool:
        """Whether a sender is still at work (a finished one may linger in the group)."""
        return any(not w.dead and w is not finishing for w in self._workers)

    def _wake_if_idle(self, finishing: object = None) -> None:
        if self.ledger.outstanding == 0 and not self._busy(finishing):
            self._idle.set()

    def _join_failed(self, member: Member, started: float, detail: str, length: int) -> NoReturn:
        log.warning("room %s: %s could not join: %s", self.room, member.conn, detail)
        self.tally.add(delivery.JOIN_FAILED, "room_state")
        failure = JoinFailed(detail)
        self._report_failure("room_state", "join", self.clock() - started, failure, length)
        member.abort()
        raise CallAborted(f"{member.conn} could not join: {detail}")

    def _lost(self, pending: Pending, deadline: float) -> None:
        name = "presence" if pending.kind in PRESENCE else "relay"
        log.warning("room %s: lost %s", self.room, pending.description)
        failure = MessageLost(f"not received within {deadline:g} s")
        self._report_failure(pending.kind, name, deadline, failure)

    def _report_outcome(self, outcome: Outcome, name: str, length: int) -> None:
        if outcome.verdict is Verdict.DELIVERED:
            assert outcome.latency_seconds is not None
            self._report(outcome.kind, name, outcome.latency_seconds, length)
            return
        log.warning("room %s: %s %s", self.room, outcome.verdict, outcome.detail)
        failure_type, message = VERDICT_FAILURES[outcome.verdict]
        failure = failure_type(message)
        self._report_failure(outcome.kind, name, outcome.latency_seconds or 0, failure, length)

    def _report(self, request_type: str, name: str, seconds: float, length: int) -> None:
        self.report(
            request_type=request_type,
            name=name,
            response_time=seconds * 1000,
            response_length=length,
            exception=None,
            context={},
        )

    def _report_failure(
        self, request_type: str, name: str, seconds: float, failure: Exception, length: int = 0
    ) -> None:
        self.report(
            request_type=request_type,
            name=name,
            response_time=seconds * 1000,
            response_length=length,
            exception=failure,
            context={},
        )

    # /webrtc/config, as a browser fetches it before creating its RTCPeerConnection.

    def fetch_config(self, member: Member, token: str) -> None:
        started = self.clock()
        try:
            timeout = self.options.deadline_seconds
            length = get_config(member.endpoint, member.source, token, timeout)
        except ConfigFailed as failure:
            log.warning("room %s: %s: /webrtc/config: %s", self.room, member.conn, failure)
            self.tally.add(delivery.CONFIG_FAILED, "GET")
            self._report_failure("GET", "/webrtc/config", self.clock() - started, failure)
            return
        self._report("GET", "/webrtc/config", self.clock() - started, length)
