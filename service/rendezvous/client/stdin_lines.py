"""Lines from stdin (a terminal, a pipe or a file) without blocking the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

MAX_QUEUED_LINES = 64  # the reader thread waits when the client falls behind
READ_CHUNK_BYTES = 4096


class StdinLines:
    """A daemon thread reads the file descriptor (a terminal or a regular file cannot go
    through `connect_read_pipe`); `get()` returns one line, or None at end of input.
    The thread reads with os.read, never sys.stdin, so an exit while it blocks in a read
    cannot trip over a buffered reader's lock at interpreter shutdown."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int = 0) -> None:
        self._loop = loop
        self._fd = fd
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED_LINES)
        self._thread = threading.Thread(target=self._pump, name="client-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def get(self) -> str | None:
        return await self._queue.get()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._fd, READ_CHUNK_BYTES)
            except OSError:
                chunk = b""  # a closed or unreadable stdin is the end of input
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not self._hand_over(line.decode(errors="replace").rstrip("\r")):
                    return
            if not chunk:
                if pending:
                    self._hand_over(pending.decode(errors="replace"))
                self._hand_over(None)
                return

    def _hand_over(self, line: str | None) -> bool:
        """Queue a line, waiting while the queue is full; False once the loop is gone."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(line), self._loop)
        except RuntimeError:  # the loop has closed: the client is exiting
            return False
        try:
            future.result()
        except concurrent.futures.CancelledError:
            return False
        return True
