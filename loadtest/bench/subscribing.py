"""The subscribers of the bench's redis part: processes of their own, each subscribed to
one channel, that read everything Redis sends them and throw it away, as fast as they
can (a subscriber that did not read would make Redis buffer, and finally drop it)."""

from __future__ import annotations

import multiprocessing
import signal
import socket
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

from loadtest.bench_relay import HOST

CONNECT_TIMEOUT_SECONDS = 5.0
EXIT_SECONDS = 5.0
READ_BUFFER_BYTES = 1 << 20


def start(count: int, *, port: int, subscribe: Sequence[str], channel: str) -> list[BaseProcess]:
    """`count` subscriber processes, each sending every command of `subscribe` (SUBSCRIBE,
    SSUBSCRIBE) for `channel`; the caller checks that they are subscribed."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    try:
        for _ in range(count):
            process = context.Process(
                target=drain, args=(port, tuple(subscribe), channel), name="bench-subscriber"
            )
            process.daemon = True  # if the bench dies without unwinding, they go with it
            process.start()
            processes.append(process)
    except BaseException:
        stop(processes)
        raise
    return processes


def stop(processes: Sequence[BaseProcess]) -> None:
    """SIGTERM, then SIGKILL to any still running after EXIT_SECONDS; reaped either way."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(EXIT_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def drain(port: int, subscribe: Sequence[str], channel: str) -> None:
    """A subscriber process: subscribe, then read all that comes and throw it away, until
    Redis closes the connection or the bench stops the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's; it stops us
    request = b"".join(_resp(command, channel) for command in subscribe)
    with socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT_SECONDS) as sock:
        sock.settimeout(None)
        sock.sendall(request)
        buffer = bytearray(READ_BUFFER_BYTES)
        while sock.recv_into(buffer) > 0:
            continue


def _resp(*args: str) -> bytes:
    return (f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode()
