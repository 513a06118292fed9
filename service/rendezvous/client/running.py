"""`rendezvous client` end to end: connect, join, drive the conversation from the flags or
the prompt, and turn how it ended into one line on stderr and an exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from rendezvous.client.commands import PROMPT_HELP, CommandError, Quit, parse_command
from rendezvous.client.conversation import Conversation
from rendezvous.client.outcomes import (
    EXIT_OK,
    EXIT_OTHER,
    EXIT_TRY_AGAIN,
    EXIT_USAGE,
    HTTP_SERVICE_UNAVAILABLE,
    exit_status,
)
from rendezvous.client.rendering import Printer
from rendezvous.client.stdin_lines import StdinLines
from rendezvous.client.target import UsageError, resolve_token, room_url, with_token

CLOSE_TIMEOUT_SECONDS = 2.0
ABNORMAL_CLOSE = 1006  # the connection ended without a close frame
USER_AGENT = "rendezvous-client"


@dataclass(frozen=True)
class Options:
    room: str
    url: str  # the room's ws(s) URL, without the token
    token: str
    json_lines: bool
    pings: int
    offer: str | None  # None: no offer; "": to everyone; else the target user id
    timeout: float
    exit_after_join: bool


def run(args: argparse.Namespace) -> int:
    try:
        if args.timeout <= 0:
            raise UsageError(
                f"--timeout: expected a positive number of seconds, got {args.timeout}"
            )
        url = room_url(args.url, args.room)
        token = resolve_token(token=args.token, user=args.user, environ=os.environ)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    options = Options(
        room=args.room,
        url=url,
        token=token,
        json_lines=args.json,
        pings=args.ping or 0,
        offer=args.offer,
        timeout=args.timeout,
        exit_after_join=args.exit_after_join,
    )
    # Ctrl-C: asyncio.run raises KeyboardInterrupt, which `rendezvous` turns into 130.
    return asyncio.run(_client(options))


async def _client(options: Options) -> int:
    try:
        connection = await connect(
            with_token(options.url, options.token),
            open_timeout=options.timeout,
            close_timeout=CLOSE_TIMEOUT_SECONDS,
            user_agent_header=USER_AGENT,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        unavailable = status == HTTP_SERVICE_UNAVAILABLE
        return _fail(
            f"rejected: HTTP {status} at the handshake"
            + (" (the instance is draining or unavailable)" if unavailable else ""),
            EXIT_TRY_AGAIN if unavailable else EXIT_OTHER,
        )
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        reason = _redact(str(exc) or type(exc).__name__, options.token)
        return _fail(f"cannot connect to {options.url}: {reason}", EXIT_OTHER)
    async with connection:
        conversation = Conversation(
            connection, room=options.room, printer=Printer(json_lines=options.json_lines)
        )
        reading = asyncio.create_task(conversation.read(), name="client-read")
        try:
            return await _drive(conversation, reading, options)
        finally:
            reading.cancel()
            await asyncio.wait({reading})  # never raises; a failed read is re-raised here
            failure = None if reading.cancelled() else reading.exception()
            if failure is not None:
                raise failure


async def _drive(conversation: Conversation, reading: asyncio.Task[None], options: Options) -> int:
    if not await _before_end(conversation.joined.wait(), reading, options.timeout):
        if reading.done():
            return _ended(conversation)
        return _fail(f"timed out after {options.timeout:g} s waiting for room_state")
    try:
        for _ in range(options.pings):
            await conversation.ping()
        if options.offer is not None:
            await conversation.offer(options.offer or None)
        if not options.exit_after_join:
            await _prompt(conversation, reading)
        settled = not reading.done() and await _before_end(
            conversation.settle(), reading, options.timeout
        )
    except ConnectionClosed:
        # The server closed while we sent; the reader ends with its close frame.
        await asyncio.wait({reading}, timeout=CLOSE_TIMEOUT_SECONDS)
        settled = False
    if reading.done():
        return _ended(conversation)
    if not settled:
        waiting = conversation.pending_pongs
        return _fail(f"timed out after {options.timeout:g} s waiting for {waiting} pong(s)")
    await conversation.close()
    await asyncio.wait({reading}, timeout=CLOSE_TIMEOUT_SECONDS)
    if options.exit_after_join and conversation.errors:
        # A script asked for these sends: an error reply (target_not_found...) fails it.
        error = conversation.errors[-1]
        return _fail(f"error: {error.code}: {error.message}", exit_status(error.code))
    return EXIT_OK


async def _prompt(conversation: Conversation, reading: asyncio.Task[None]) -> None:
    """Run typed or piped commands until quit, end of input, or the server closes."""
    lines = StdinLines(asyncio.get_running_loop())
    lines.start()
    if sys.stdin.isatty():
        print(f"joined; {PROMPT_HELP} (Ctrl-D leaves)", file=sys.stderr, flush=True)
    while True:
        line = asyncio.ensure_future(lines.get())
        await asyncio.wait({line, reading}, return_when=asyncio.FIRST_COMPLETED)
        if not line.done():
            line.cancel()
            return
        text = line.result()
        if text is None:
            return
        try:
            command = parse_command(text)
        except CommandError as exc:
            print(f"? {exc}", file=sys.stderr, flush=True)
            continue
        if isinstance(command, Quit):
            return
        if command is not None:
            await conversation.execute(command)


async def _before_end(work: Awaitable[Any], reading: asyncio.Task[None], timeout: float) -> bool:
    """Await `work` until it is done, the connection ends, or `timeout`; whether it was done."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task, reading}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        task.result()  # re-raise a failure
        return True
    return False


def _ended(conversation: Conversation) -> int:
    """The server closed the connection: report its error code (or close code) and exit."""
    close_code = conversation.close_code
    error = conversation.closing_error
    if error is not None:
        line = f"rejected: {error.code} (close {close_code}): {error.message}"
        return _fail(line, exit_status(error.code, close_code))
    if close_code is None or close_code == ABNORMAL_CLOSE:
        return _fail("connection lost: closed without a close frame (close 1006)", EXIT_OTHER)
    reason = conversation.close_reason or "no error frame"
    return _fail(f"rejected: close {close_code}: {reason}", exit_status(None, close_code))


def _fail(line: str, status: int = EXIT_OTHER) -> int:
    """Say why on stderr (one line, never the token) and return the exit status."""
    if not line.startswith(("rejected:", "error:")):
        line = f"rendezvous client: {line}"
    print(line, file=sys.stderr, flush=True)
    return status


def _redact(text: str, token: str) -> str:
    for form in (token, urllib.parse.quote(token, safe="")):
        if form:
            text = text.replace(form, "***")
    return text
