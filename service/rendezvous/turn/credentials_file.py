"""The file the TURN sidecar hands the signaling container: one JSON object
`{urls, username, credential, expires_at, rotated_at}`, replaced whole by rename so a
reader sees the old version or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Group-readable: the signaling container reads it through the pod's fsGroup.
FILE_MODE = 0o640


class CredentialsFileError(Exception):
    """The file is missing, unreadable or not credentials; the message says which."""


class TurnCredentials(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    urls: list[str] = Field(min_length=1)
    username: str = Field(min_length=1)
    credential: str = Field(min_length=1, repr=False)  # str() too, not only repr()
    expires_at: int  # unix seconds; coturn refuses the username from then on
    rotated_at: int  # unix seconds the sidecar minted it

    def __repr__(self) -> str:  # logged; the credential is as good as a password
        return f"TurnCredentials(username={self.username!r}, expires_at={self.expires_at})"

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


def write_credentials(path: Path, credentials: TurnCredentials) -> None:
    """Replace `path` atomically: a temporary file in the same directory, flushed to disk,
    mode 0640, renamed over the old one."""
    data = credentials.model_dump_json().encode()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), FILE_MODE)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_credentials(path: Path) -> TurnCredentials:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CredentialsFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise CredentialsFileError(f"{path} cannot be read: {exc.strerror}") from None
    try:
        return TurnCredentials.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise CredentialsFileError(
            f"{path} is not TURN credentials: {where}: {first['msg']}"
        ) from None
