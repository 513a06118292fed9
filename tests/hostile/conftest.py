"""Shared pieces of the hostile-input suite: an event loop in a thread of its own, so that
synchronous drivers (hypothesis examples, schemathesis cases) can talk to one real,
long-lived server and its clients; a recorder of the server's ERROR log lines; and the
hypothesis settings every test here starts from."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

from rendezvous.settings import Settings
from tests.support.redis import redis_server  # noqa: F401  (a fixture, used by name)
from tests.support.server import RunningServer, running_server

T = TypeVar("T")

STEP_TIMEOUT_SECONDS = 30.0  # one example's work on the loop; a hang fails, never blocks
POLL_SECONDS = 0.02

# No example database (no .hypothesis/ left in the work tree), no per-example deadline
# (these machines are shared and noisy: speed is never the property), and one server for
# every example of a test, hence the function-scoped fixture is meant.
BASE_SETTINGS = settings(
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class LoopThread:
    """An asyncio event loop running in a daemon thread; `run` waits (bounded) for one
    coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = STEP_TIMEOUT_SECONDS) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what is left on the loop, stop it, and join the thread."""
        self.run(_cancel_others(), STEP_TIMEOUT_SECONDS)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STEP_TIMEOUT_SECONDS)
        assert not self._thread.is_alive(), "the event loop thread did not stop"
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


async def _cancel_others() -> None:
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


@contextlib.contextmanager
def server_in_thread(settings: Settings) -> Iterator[tuple[LoopThread, RunningServer]]:
    """A real server (tests.support.server.running_server) on a loop in its own thread."""
    thread = LoopThread("hostile-loop")
    stack = contextlib.AsyncExitStack()
    try:
        server = thread.run(stack.enter_async_context(running_server(settings)))
        try:
            yield thread, server
        finally:
            thread.run(stack.aclose())
    finally:
        thread.close()


class ErrorRecorder(logging.Handler):
    """Keeps every record at ERROR or above, and every record with a traceback, from any
    logger and any thread: a hostile client must never make the server log one."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._lock_records = threading.Lock()
        self._records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            with self._lock_records:
                self._records.append(record)

    def take(self) -> list[str]:
        """The recorded lines (with their tracebacks) since the last call."""
        with self._lock_records:
            records, self._records = self._records, []
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        return [formatter.format(record) for record in records]


@contextlib.contextmanager
def recording_errors() -> Iterator[ErrorRecorder]:
    recorder = ErrorRecorder()
    root = logging.getLogger()
    root.addHandler(recorder)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)


async def eventually(what: str, check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Poll `check` until it holds; fail naming `what` past the deadline."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {seconds} s"
        await asyncio.sleep(POLL_SECONDS)
