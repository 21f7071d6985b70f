"""Stream framing: u32 big-endian body length, then the msgpack body.

`FrameDecoder` is sans-IO: feed it whatever bytes the transport delivered, in any split, and get
back whole messages. The length header is checked against the limit before any of the body is
buffered, and the buffer never holds more than one frame, so a peer cannot make us allocate more
than `max_frame_size` bytes per stream.
"""

from __future__ import annotations

import struct

from .codec import decode, encode
from .errors import ErrorCode, ProtocolError
from .limits import FRAME_HEADER_SIZE, MAX_FRAME_SIZE
from .messages import Message

_HEADER = struct.Struct(">I")


def encode_frame(msg: Message | bytes, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Frame a message (or an already encoded body): 4-byte big-endian length + body.

    Raises `ProtocolError(INVALID_FRAME)` for an empty body or one over `max_frame_size` bytes.
    """
    body = bytes(msg) if isinstance(msg, (bytes, bytearray, memoryview)) else encode(msg)
    if not body:
        raise ProtocolError(ErrorCode.INVALID_FRAME, "frame: empty body")
    if len(body) > max_frame_size:
        raise ProtocolError(
            ErrorCode.INVALID_FRAME, f"frame: body of {len(body)} bytes exceeds the limit of {max_frame_size}"
        )
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Reassemble frames from a byte stream.

    Any `ProtocolError` from `feed`/`feed_raw` is final: the stream's framing can no longer be
    trusted, so every later call raises the same error. Frames completed earlier in the failing
    call are dropped with it.
    """

    def __init__(
        self,
        max_frame_size: int = MAX_FRAME_SIZE,
        expected: type[Message] | tuple[type[Message], ...] | None = None,
    ) -> None:
        if not 0 < max_frame_size < 2**32:
            raise ValueError(f"max_frame_size must be in [1, 2**32), got {max_frame_size}")
        self.max_frame_size = max_frame_size  # bytes
        self.expected = expected
        self._buf = bytearray()  # the header, then the body, of the one frame in progress
        self._body_len: int | None = None  # known once the header is complete
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received for the frame in progress (header included); 0 at a boundary."""
        return len(self._buf) + (FRAME_HEADER_SIZE if self._body_len is not None else 0)

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is held: the stream may end here cleanly."""
        return not self._buf and self._body_len is None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add bytes; return the messages they complete (decoded and validated)."""
        bodies = self.feed_raw(data)
        try:
            return [decode(body, self.expected) for body in bodies]
        except ProtocolError as exc:
            self._error = exc
            raise

    def feed_raw(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes; return the frame bodies they complete, undecoded."""
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        bodies: list[bytes] = []
        pos = 0
        while pos < len(view):
            if self._body_len is None:
                take = min(FRAME_HEADER_SIZE - len(self._buf), len(view) - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < FRAME_HEADER_SIZE:
                    break
                (length,) = _HEADER.unpack(self._buf)
                self._buf.clear()
                self._check_length(length)
                self._body_len = length
            need = self._body_len - len(self._buf)
            if not self._buf and len(view) - pos >= need:
                # whole body present in `data`: slice it, skipping the copy into our buffer
                bodies.append(bytes(view[pos : pos + need]))
                pos += need
                self._body_len = None
                continue
            take = min(need, len(view) - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._body_len:
                bodies.append(bytes(self._buf))
                self._buf.clear()
                self._body_len = None
        return bodies

    def eof(self) -> None:
        """The stream ended: raise `ProtocolError(INVALID_FRAME)` if it ended inside a frame."""
        if self._error is not None:
            raise self._error
        if not self.at_boundary:
            self._error = ProtocolError(
                ErrorCode.INVALID_FRAME, f"frame: stream ended inside a frame ({self.buffered} bytes held)"
            )
            raise self._error

    def _check_length(self, length: int) -> None:
        if length == 0:
            self._error = ProtocolError(ErrorCode.INVALID_FRAME, "frame: empty body")
        elif length > self.max_frame_size:
            self._error = ProtocolError(
                ErrorCode.INVALID_FRAME,
                f"frame: length {length} bytes exceeds the limit of {self.max_frame_size}",
            )
        if self._error is not None:
            raise self._error
