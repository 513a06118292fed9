"""JSON log lines, with tokens redacted from every record that reaches a handler."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace  # the API alone: a no-op unless tracing is configured

# A token may ride in a query (`?token=`; a resume token in `?resume=`), an Authorization
# header or a subprotocol.
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(\b(?:token|resume)=)[^&\s\"']+"),
    re.compile(r"(?i)(\bbearer[ .])[A-Za-z0-9._~+/=-]+"),
)
REDACTED = "[redacted]"
# Attributes a LogRecord always has; anything else came in through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def redact(text: str) -> str:
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    return text


class Throttle:
    """For a failure that recurs per message: `due()` counts one occurrence and, at most
    once per `interval` seconds, returns how many occurred since it last did (else None)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = -math.inf
        self._pending = 0

    def due(self) -> int | None:
        self._pending += 1
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self._interval
        count, self._pending = self._pending, 0
        return count


class RedactTokens(logging.Filter):
    """Rewrites the message of every record (uvicorn's access and error lines included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, instance_id: str = "") -> None:
        super().__init__()
        self._instance_id = instance_id

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._instance_id:
            line["instance_id"] = self._instance_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # only while tracing is on and a span is current
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        line.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
        )
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def logging_config(*, debug: bool, instance_id: str) -> dict[str, Any]:
    """A dictConfig for the whole process: one JSON handler on stderr, tokens redacted."""
    level = "DEBUG" if debug else "INFO"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactTokens}},
        "formatters": {"json": {"()": JsonFormatter, "instance_id": instance_id}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["redact"],
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "rendezvous": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
