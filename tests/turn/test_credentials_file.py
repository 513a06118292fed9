"""The credentials file the TURN sidecar hands the signaling container: its exact JSON
shape and mode, atomic replacement (a concurrent reader never sees half a file, a failed
write leaves the old file and no temporary behind), readable errors for anything that is
not credentials, and a credential that stays out of repr() and str()."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rendezvous.turn.credentials_file import (
    CredentialsFileError,
    TurnCredentials,
    read_credentials,
    write_credentials,
)

CREDENTIAL = "c3VwZXItc2VjcmV0LWNyZWRlbnRpYWw="
REWRITES = 300
SUBPROCESS_TIMEOUT_SECONDS = 30.0


def credentials(version: int = 0, *, urls: int = 1) -> TurnCredentials:
    """Credentials whose every field says which `version` they are, and whose length
    varies with it, so a reader that got parts of two versions notices."""
    return TurnCredentials(
        urls=[f"turn:127.0.0.{version % 250 + 1}:3478?transport=udp"] * urls,
        username=f"{1_700_000_000 + version}:rendezvous",
        credential=f"{CREDENTIAL}{'x' * (version % 7)}",
        expires_at=1_700_000_000 + version,
        rotated_at=1_699_913_600 + version,
    )


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A restrictive umask, so a 0640 file proves an explicit chmod."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def test_written_file_is_exactly_the_five_fields(tmp_path: Path) -> None:
    """The file is one JSON object with exactly {urls, username, credential, expires_at,
    rotated_at}, which is what the signaling container and the README promise."""
    path = tmp_path / "turn.json"
    written = credentials(3, urls=2)
    write_credentials(path, written)
    assert json.loads(path.read_bytes()) == {
        "urls": written.urls,
        "username": written.username,
        "credential": written.credential,
        "expires_at": written.expires_at,
        "rotated_at": written.rotated_at,
    }
    assert read_credentials(path) == written


@pytest.mark.usefixtures("umask_077")
def test_file_is_mode_0640_whatever_the_umask_or_previous_mode(tmp_path: Path) -> None:
    """Group-readable (the signaling container reads it through fsGroup), never
    world-readable, also when replacing a file that had another mode."""
    path = tmp_path / "turn.json"
    write_credentials(path, credentials(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.chmod(0o666)
    write_credentials(path, credentials(2))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_rewrites_leave_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "turn.json"
    for version in range(20):
        write_credentials(path, credentials(version))
    assert entries(tmp_path) == ["turn.json"]
    assert read_credentials(path) == credentials(19)


def test_failed_rename_removes_the_temporary_file(tmp_path: Path) -> None:
    """The temporary file is written and flushed, then the rename fails (the target is a
    directory: a failure that holds for root too). Nothing is left behind."""
    path = tmp_path / "turn.json"
    path.mkdir()
    with pytest.raises(IsADirectoryError):
        write_credentials(path, credentials())
    assert entries(tmp_path) == ["turn.json"]
    assert entries(path) == []


def test_write_into_a_missing_directory_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_credentials(tmp_path / "missing" / "turn.json", credentials())
    assert entries(tmp_path) == []


# Writes argv[2] over argv[3] at argv[1] with the process limited to files of 16 bytes
# (RLIMIT_FSIZE binds root too): the kernel refuses the write with EFBIG half-way
# through the temporary file, as on a full disk.
_FILE_SIZE_LIMITED_WRITE = """
import resource, signal, sys
from pathlib import Path
from rendezvous.turn.credentials_file import TurnCredentials, write_credentials

path, old, new = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
write_credentials(path, TurnCredentials.model_validate_json(old))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))
try:
    write_credentials(path, TurnCredentials.model_validate_json(new))
except OSError as exc:
    print(exc.strerror)
"""


def test_write_failing_half_way_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """A write the kernel cuts short (file size limit, as on a full disk) raises, leaves
    the previous credentials whole, and removes its partial temporary file."""
    path = tmp_path / "turn.json"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _FILE_SIZE_LIMITED_WRITE,
            str(path),
            credentials(1).model_dump_json(),
            credentials(2).model_dump_json(),
        ],
        capture_output=True,  # pipes: the size limit applies to files only
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "File too large"
    assert entries(tmp_path) == ["turn.json"]
    assert read_credentials(path) == credentials(1)


def test_reader_never_sees_a_partial_file_during_rewrites(tmp_path: Path) -> None:
    """While the main thread rewrites the file hundreds of times, a thread rereading it
    always gets one whole, valid version (never a missing, empty or mixed file)."""
    path = tmp_path / "turn.json"
    write_credentials(path, credentials(0, urls=40))
    seen: set[str] = set()
    failures: list[str] = []
    done = threading.Event()

    def reread() -> None:
        while not done.is_set():
            try:
                got = read_credentials(path)
            except CredentialsFileError as exc:
                failures.append(str(exc))
                continue
            version = got.expires_at - 1_700_000_000
            if got != credentials(version, urls=40):
                failures.append(f"mixed versions: {got!r}")
            seen.add(got.username)

    reader = threading.Thread(target=reread, name="credentials-reader")
    reader.start()
    try:
        for version in range(1, REWRITES + 1):
            write_credentials(path, credentials(version, urls=40))
    finally:
        done.set()
        reader.join(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert not reader.is_alive()
    assert failures == []
    assert len(seen) > 1, "the reader never overlapped a rewrite"
    assert entries(tmp_path) == ["turn.json"]


def test_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "turn.json"
    with pytest.raises(CredentialsFileError, match="does not exist") as caught:
        read_credentials(path)
    assert str(path) in str(caught.value)


def test_unreadable_path_is_reported(tmp_path: Path) -> None:
    """A directory where the file should be: 'cannot be read' and the OS's reason."""
    path = tmp_path / "turn.json"
    path.mkdir()
    with pytest.raises(CredentialsFileError, match="cannot be read: Is a directory"):
        read_credentials(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "Invalid JSON"),
        (b"\x00\xffgarbage", "Invalid JSON"),
        (b'{"urls": ["turn:h"], "username": "1:u"', "Invalid JSON"),  # cut short
        (b"[]", "the file: Input should be an object"),
        (
            b'{"urls": ["turn:h"], "username": "1:u", "expires_at": 1, "rotated_at": 0}',
            "credential: Field required",
        ),
        (
            b'{"urls": [], "username": "1:u", "credential": "c", "expires_at": 1, "rotated_at": 0}',
            "urls: List should have at least 1 item",
        ),
        (
            b'{"urls": ["turn:h"], "username": "1:u", "credential": "c", "expires_at": 1, '
            b'"rotated_at": 0, "secret": "s"}',
            "secret: Extra inputs are not permitted",
        ),
    ],
    ids=["empty", "garbage", "truncated", "not-an-object", "no-credential", "no-urls", "extra"],
)
def test_content_that_is_not_credentials_is_refused_readably(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    """The message names the file and what is wrong with it, in one line."""
    path = tmp_path / "turn.json"
    path.write_bytes(content)
    with pytest.raises(CredentialsFileError) as caught:
        read_credentials(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not TURN credentials: ")
    assert expected in message
    assert "\n" not in message


def test_credential_stays_out_of_repr_and_str() -> None:
    """Credentials get logged; the credential is as good as a password."""
    shown = credentials()
    for text in (repr(shown), str(shown), f"{shown}", repr([shown])):
        assert CREDENTIAL not in text
        assert shown.username in text
