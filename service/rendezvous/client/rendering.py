"""How the client shows frames: one readable line each, or (--json) each received frame
exactly as it arrived. Only received frames go to stdout in JSON mode."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, TextIO

SUMMARY_MAX_CHARS = 200


class Printer:
    def __init__(self, *, json_lines: bool, out: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self._out = out or sys.stdout

    def received(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            line = f"{_now()} < (binary frame, {len(message)} bytes)"
            if self.json_lines:
                return  # not a frame of the protocol; JSON lines hold frames only
        elif self.json_lines:
            line = message
        else:
            line = _received_line(message)
        print(line, file=self._out, flush=True)

    def sent(self, frame: dict[str, Any] | str) -> None:
        if self.json_lines:
            return
        if isinstance(frame, str):
            print(f"{_now()} > raw {_clip(frame)}", file=self._out, flush=True)
            return
        kind = str(frame.get("type"))
        line = f"{_now()} > {kind:<13} {'(you)':<12} {summary(kind, frame.get('payload'))}"
        print(line, file=self._out, flush=True)


def _received_line(text: str) -> str:
    try:
        frame = json.loads(text)
    except json.JSONDecodeError:
        return f"{_now()} < (not JSON) {_clip(text)}"
    if not isinstance(frame, dict):
        return f"{_now()} < (not an object) {_clip(text)}"
    kind = str(frame.get("type"))
    sender = str(frame.get("sender_id", "?"))
    return f"{_now()} < {kind:<13} {sender:<12} {summary(kind, frame.get('payload'))}"


def summary(kind: str, payload: Any) -> str:
    """The part of a frame worth a glance, by type."""
    if not isinstance(payload, dict):
        return _compact(payload)
    if kind == "room_state":
        people = payload.get("participants") or []
        names = ", ".join(_person(p) for p in people if isinstance(p, dict))
        return f"{payload.get('participant_count', len(people))} in room: {names}"
    if kind == "user_joined":
        return _person(payload)
    if kind == "user_left":
        return f"{_person(payload)}, reason {payload.get('reason')}"
    if kind in ("offer", "answer"):
        sdp = payload.get("sdp")
        text = f"sdp {payload.get('type')}, {len(sdp) if isinstance(sdp, str) else 0} chars"
        return text + _target(payload)
    if kind == "ice_candidate":
        candidate = payload.get("candidate") or "(end of candidates)"
        mid = payload.get("sdpMid", payload.get("sdp_mid"))
        return f"{candidate} mid={mid}{_target(payload)}"
    if kind == "error":
        return f"{payload.get('code')}: {payload.get('message')}"
    return _compact(payload)


def _person(entry: dict[str, Any]) -> str:
    user, name = entry.get("user_id"), entry.get("username")
    return str(user) if name in (None, user) else f"{user} ({name})"


def _target(payload: dict[str, Any]) -> str:
    target = payload.get("target_user_id")
    return f", to {target}" if target else ""


def _compact(value: Any) -> str:
    return _clip(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _clip(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX_CHARS else text[: SUMMARY_MAX_CHARS - 3] + "..."


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]
