"""The per-message framing fast path (`rendezvous.wire`) against `websockets`' own codec:
every frame it reads is one websockets would read the same way, and every frame it
declines (anything but a whole, masked, final, extension-free text frame within the size
limit and valid UTF-8) is left to websockets."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from rendezvous.wire import read_text_frame, text_frame_header

SIZES = [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000]


def client_frame(data: bytes, opcode: Opcode = Opcode.TEXT, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


def text_of(size: int) -> str:
    """A text of `size` UTF-8 bytes, with a two-byte character when there is room."""
    return "é" + "x" * (size - 2) if size >= 2 else "x" * size


@pytest.mark.parametrize("size", SIZES)
def test_a_server_frame_parses_in_websockets_as_the_same_text(size: int) -> None:
    payload = text_of(size).encode()
    reader = StreamReader()
    reader.feed_data(text_frame_header(len(payload)) + payload)
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


@pytest.mark.parametrize("size", [s for s in SIZES if s < 65536])
def test_a_client_text_frame_reads_back_with_where_the_next_begins(size: int) -> None:
    text = text_of(size)
    frame = client_frame(text.encode())
    data = b"junk" + frame + frame
    first = read_text_frame(data, 4, None)
    assert first == (text, 4 + len(frame))
    assert read_text_frame(data, first[1], None) == (text, len(data))


def test_a_partial_frame_is_left_to_websockets_at_every_cut() -> None:
    frame = client_frame(b'{"type": "ping", "payload": {"n": 1}}' * 5)
    for cut in range(len(frame)):
        assert read_text_frame(frame[:cut], 0, None) is None, cut


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("unmasked", Frame(Opcode.TEXT, b"hi").serialize(mask=False, extensions=[])),
        ("binary", client_frame(b"hi", Opcode.BINARY)),
        ("ping", client_frame(b"hi", Opcode.PING)),
        ("close", client_frame(b"\x03\xe8", Opcode.CLOSE)),
        ("first fragment", client_frame(b"hi", fin=False)),
        ("continuation", client_frame(b"hi", Opcode.CONT)),
        ("rsv1 (compressed)", bytes([0xC1]) + client_frame(b"hi")[1:]),
        ("64-bit length", client_frame(b"x" * 65536)),
        ("invalid UTF-8", client_frame(b'{"a": "\xff\xfe"}')),
    ],
)
def test_anything_else_is_left_to_websockets(name: str, frame: bytes) -> None:
    assert read_text_frame(frame, 0, None) is None, name


def test_a_frame_over_the_size_limit_is_left_to_websockets() -> None:
    frame = client_frame(b"x" * 1001)
    assert read_text_frame(frame, 0, 1000) is None
    assert read_text_frame(frame, 0, 1001) == ("x" * 1001, len(frame))
