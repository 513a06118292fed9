"""The shared secret from a mounted Secret directory. kubelet updates such a volume by
writing a new timestamped directory and renaming the `..data` symlink over to it, with
`<key> -> ..data/<key>`; opening `<key>` therefore reads one version whole. Polling the
small file once a second finds a change long before kubelet's own sync period (a minute
or more) matters, and also follows a plain rewrite of an ordinary directory."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from rendezvous.turn.secrets import Report, SecretReading, secret_from_bytes

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
READ_ATTEMPTS = 3


class DirectorySecretSource:
    def __init__(self, directory: Path, key: str, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.directory = directory
        self.key = key
        self.description = f"key {key!r} of the mounted Secret {directory}"
        self._poll_seconds = poll_seconds

    async def run(self, report: Report) -> None:
        last: SecretReading | None = None
        while True:
            reading = self.read()
            if reading != last:
                report(reading)
                last = reading
            await asyncio.sleep(self._poll_seconds)

    def read(self) -> SecretReading:
        path = self.directory / self.key
        try:
            raw = _read_through_swaps(path)
        except FileNotFoundError:
            return SecretReading(None, self._missing_key())
        except OSError as exc:
            return SecretReading(None, f"{path} cannot be read: {exc.strerror}")
        return secret_from_bytes(raw, where=str(path))

    def _missing_key(self) -> str:
        try:
            keys = sorted(p.name for p in self.directory.iterdir() if not p.name.startswith(".."))
        except OSError as exc:
            return f"{self.directory} cannot be listed: {exc.strerror}"
        return f"no key {self.key!r} in {self.directory} (it has: {', '.join(keys) or 'nothing'})"


def _read_through_swaps(path: Path) -> bytes:
    """`path`'s bytes. A read can resolve `..data` to the version kubelet is deleting in
    that instant and find nothing; while `<key>` itself is still there, reading again
    resolves to the new version."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not path.is_symlink():
                raise
    return path.read_bytes()
