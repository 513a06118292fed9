"""A Secret volume written on disk the way kubelet writes one, for the TURN sidecar's
directory source. kubelet's AtomicWriter (kubernetes/kubernetes,
pkg/volume/util/atomic_writer.go, `AtomicWriter.Write`, steps 4-12 of its doc comment)
projects a Secret into its mount point like this:

1. nothing happens when the payload equals what `..data` holds;
2. the payload goes into a new hidden directory named after the time,
   `..2006_01_02_15_04_05.<random>` (mode 0755, files 0644 by default);
3. a `..data_tmp -> ..<timestamp>` symlink is created and renamed over `..data`, which
   is the one atomic step: a reader of `<key>` sees the old version or the new one;
4. a `<key> -> ..data/<key>` symlink is created for every key that has none yet (older
   releases did this before the swap);
5. the symlinks of keys no longer in the payload are removed;
6. the previous timestamped directory is removed.

Only the volume's root is modelled: Secret keys are file names, never paths."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"
# A Secret volume's defaultMode (0644), and AtomicWriter's mode for the timestamped dir.
FILE_MODE = 0o644
TIMESTAMP_DIR_MODE = 0o755


class SecretVolume:
    """A directory kubelet keeps in sync with one Secret: `write()` is one sync."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def keys(self) -> list[str]:
        """The keys a container sees (the visible symlinks), sorted."""
        return sorted(p.name for p in self.directory.iterdir() if not p.name.startswith(".."))

    @property
    def data_target(self) -> str | None:
        """Where `..data` points (a `..<timestamp>` directory), or None before any write."""
        link = self.directory / DATA_DIR
        return os.readlink(link) if link.is_symlink() else None

    def timestamped_directories(self) -> list[str]:
        return sorted(
            p.name
            for p in self.directory.iterdir()
            if p.name.startswith("..") and p.is_dir() and not p.is_symlink()
        )

    def write(self, data: Mapping[str, bytes]) -> None:
        """Replace the volume's content with `data` (key -> value), as one kubelet sync."""
        for key in data:
            _check_key(key)
        old = self.data_target
        if old is not None and self._holds(old, data):
            return
        new = self._write_timestamped_directory(data)
        temporary = self.directory / NEW_DATA_DIR
        os.symlink(new, temporary)
        os.rename(temporary, self.directory / DATA_DIR)  # the atomic swap
        for key in data:
            link = self.directory / key
            if not link.is_symlink():
                os.symlink(f"{DATA_DIR}/{key}", link)
        for key in self.keys:
            if key not in data:
                (self.directory / key).unlink()
        if old is not None:
            shutil.rmtree(self.directory / old)

    def remove_key(self, key: str) -> None:
        """A sync after `key` was deleted from the Secret; the other keys stay."""
        current = {k: (self.directory / k).read_bytes() for k in self.keys}
        del current[key]
        self.write(current)

    def _holds(self, timestamped: str, data: Mapping[str, bytes]) -> bool:
        directory = self.directory / timestamped
        present = {p.name: p.read_bytes() for p in directory.iterdir()}
        return present == dict(data)

    def _write_timestamped_directory(self, data: Mapping[str, bytes]) -> str:
        prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.directory))
        path.chmod(TIMESTAMP_DIR_MODE)
        for key, value in data.items():
            (path / key).write_bytes(value)
            (path / key).chmod(FILE_MODE)
        return path.name


def _check_key(key: str) -> None:
    # AtomicWriter's validatePath reserves names starting with ".." for itself.
    if not key or "/" in key or key.startswith(".."):
        raise ValueError(f"not a Secret key kubelet would project: {key!r}")
