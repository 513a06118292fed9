"""RFC 6455 framing for the common case of the per-message path, past the `websockets`
sans-I/O machinery (a generator-driven parser, a `Frame` object and two buffer copies per
frame), which costs more CPU than the rest of a relay.

Only what a server sees and sends most: unfragmented text frames without extensions.
Anything else (control frames, fragments, binary, RSV bits, a missing mask, a frame over
the size limit, invalid UTF-8, a partial frame) is left to `websockets`, which answers it
as the RFC says; `serving` hands it over at a frame boundary, where its parser waits.
"""

from __future__ import annotations

import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

_FIN_TEXT = 0x81  # FIN set, RSV bits clear, opcode 1 (text)
_MASKED = 0x80
_LENGTH_16 = 126
_LENGTH_64 = 127
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked (server-to-client) final text frame of `length` bytes."""
    if length < _LENGTH_16:
        return _SHORT.pack(_FIN_TEXT, length)
    if length < 1 << 16:
        return _MEDIUM.pack(_FIN_TEXT, _LENGTH_16, length)
    return _LONG.pack(_FIN_TEXT, _LENGTH_64, length)


def read_text_frame(data: bytes, start: int, max_size: int | None) -> tuple[str, int] | None:
    """The text of the masked final text frame at `data[start:]` and where the next frame
    begins, or None when what is there is anything else (including a partial frame)."""
    available = len(data) - start
    if available < 6 or data[start] != _FIN_TEXT:
        return None
    second = data[start + 1]
    if not second & _MASKED:
        return None
    length = second & 0x7F
    header = 2
    if length == _LENGTH_16:
        if available < 8:
            return None
        length = (data[start + 2] << 8) | data[start + 3]
        header = 4
    elif length == _LENGTH_64:
        return None  # 64 KiB and more: rare for signaling, left to websockets
    if max_size is not None and length > max_size:
        return None
    body = start + header + 4
    end = body + length
    if end > len(data):
        return None
    view = memoryview(data)
    try:
        text = apply_mask(view[body:end], data[body - 4 : body]).decode()
    except UnicodeDecodeError:
        return None
    return text, end
