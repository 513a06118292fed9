"""Client processes: the load runs outside the measuring process and outside the servers,
so that each server's CPU figure is its own. The parent and each client process talk over
a pipe: the client sends `(kind, value)` messages, the parent sends instructions."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

# After the parent is done with them, how long client processes get to exit before SIGKILL.
CLIENT_EXIT_SECONDS = 5.0


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # installed with uvicorn[standard]; the server runs on it too
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(main: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


async def sleep_until(instant_ns: int) -> None:
    await asyncio.sleep(max(instant_ns - time.perf_counter_ns(), 0) / 1e9)


async def instruction(pipe: Connection) -> Any:
    """The parent's next instruction, without blocking the event loop."""
    return await asyncio.to_thread(pipe.recv)


class ClientPool:
    """Spawned client processes, one per job; each runs `target(job, pipe)`."""

    def __init__(self, target: Callable[[Any, Connection], None], jobs: Sequence[Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for job in jobs:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=target, args=(job, theirs), name="bench-clients", daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.pipes.append(ours)

    def send(self, message: Any) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def receive(self, kind: str, timeout: float) -> list[Any]:
        """One message of `kind` from every process (its value), or an error naming what
        failed; a process that sends `("error", text)` fails the run with its text."""
        results: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(results) < len(self.pipes):
            waiting = [i for i in range(len(self.pipes)) if i not in results]
            ready = wait(
                [self.pipes[i] for i in waiting] + [self.processes[i].sentinel for i in waiting],
                max(deadline - time.monotonic(), 0),
            )
            if not ready:
                raise RuntimeError(f"client processes did not report {kind!r} within {timeout}s")
            for i in waiting:
                if self.pipes[i].poll():
                    message = self.pipes[i].recv()
                    if message[0] != kind:
                        raise RuntimeError(f"client process {i}: {message[0]} {message[1:]}")
                    results[i] = message[1] if len(message) > 1 else None
                elif not self.processes[i].is_alive():
                    raise RuntimeError(
                        f"client process {i} exited with code {self.processes[i].exitcode}"
                    )
        return [results[i] for i in range(len(self.pipes))]

    def close(self) -> None:
        for process in self.processes:
            process.join(CLIENT_EXIT_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self.pipes:
            pipe.close()


@contextlib.contextmanager
def client_pool(
    target: Callable[[Any, Connection], None], jobs: Sequence[Any]
) -> Iterator[ClientPool]:
    pool = ClientPool(target, jobs)
    try:
        yield pool
    finally:
        pool.close()


def report_errors(pipe: Connection, main: Coroutine[Any, Any, Any]) -> None:
    """Run `main` in a fresh event loop; an exception goes to the parent as `("error", ..)`
    (the traceback to stderr) and the process exits non-zero."""
    try:
        run_async(main)
    except Exception as exc:
        with contextlib.suppress(OSError):  # the parent has gone: nobody to tell
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
