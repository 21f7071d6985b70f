"""The frames of one request stream as a sans-IO state machine: bytes in, events out.

Like aioquic's `H0Connection.handle_event`, `StreamFrames.receive` takes what arrived on the
stream and returns what it meant, and does no I/O: the client writes one `GenerateRequest`
frame, then at most a `Cancel`; anything else, a malformed frame, too many bytes after the
request, or an end of stream before the request, is a `StreamFailed` event carrying the
`ProtocolError` to answer with. A request frame whose length header alone exceeds what a request
can be (`max_request_size`) fails as soon as its 4 header bytes are in, before its body arrives,
and so does one whose `prompt` string, read from the body's first bytes (`request_peek.py`), is
already too long for `prompt_check`.
After `StreamFailed` or `CancelReceived` the machine is closed
and ignores further bytes. `session.StreamSession` is the asyncio shell around it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from isthmus.protocol import Cancel, ErrorCode, FrameDecoder, GenerateRequest, ProtocolError
from isthmus.protocol.limits import FRAME_HEADER_SIZE

from .request_peek import NEED_MORE, PEEK_MAX, peek_prompt_bytes

MAX_AFTER_REQUEST = 64 * 1024  # bytes: a partial frame after the request (only a Cancel is valid)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The stream's request, decoded: serve it."""

    request: GenerateRequest


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """The client sent `Cancel` after its request."""


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The client broke the stream's rules: answer with `error` and end the stream."""

    error: ProtocolError


StreamEvent: TypeAlias = RequestReceived | CancelReceived | StreamFailed


class StreamFrames:
    """Decodes one request stream's frames and checks their order (no I/O, no clock)."""

    def __init__(
        self,
        max_frame_size: int,
        max_after_request: int = MAX_AFTER_REQUEST,
        max_request_size: int | None = None,
        prompt_check: Callable[[int], None] | None = None,
    ) -> None:
        self._decoder: FrameDecoder | None = FrameDecoder(max_frame_size)
        self._max_after_request = max_after_request  # bytes
        # bytes: the largest request body this edge could accept (None: only `max_frame_size`)
        self._max_request_size = max_request_size
        # raises ProtocolError when a prompt of that many UTF-8 bytes is too long (None: no check)
        self._prompt_check = prompt_check
        # the request frame's first bytes (header and body prefix), while they may still refuse it
        self._head = bytearray()
        self._is_peeking = max_request_size is not None or prompt_check is not None
        self.has_request = False

    @property
    def is_closed(self) -> bool:
        return self._decoder is None

    @property
    def held_bytes(self) -> int:
        """Bytes of a partial frame held (0 once closed)."""
        return 0 if self._decoder is None else self._decoder.buffered

    def close(self) -> None:
        """Stop decoding and drop any partial frame now (the stream ended for another reason)."""
        self._decoder = None

    def receive(self, data: bytes, end_stream: bool) -> list[StreamEvent]:
        """What `data` (and the end of the stream, if `end_stream`) meant, in order."""
        decoder = self._decoder
        if decoder is None:
            return []
        if self._is_peeking and not self.has_request:
            failed = self._peek(data)
            if failed:
                return failed
        try:
            messages = decoder.feed(data) if data else []
        except ProtocolError as exc:
            return self._failed(exc)
        if self.has_request and decoder.buffered > self._max_after_request:
            limit = self._max_after_request
            return self._failed(
                ProtocolError(
                    ErrorCode.INVALID_FRAME,
                    f"stream: a frame after the request may hold at most {limit} bytes",
                )
            )
        events: list[StreamEvent] = []
        for msg in messages:
            if not self.has_request:
                if not isinstance(msg, GenerateRequest):
                    name = type(msg).__name__
                    return events + self._failed(
                        ProtocolError(
                            ErrorCode.INVALID_MESSAGE,
                            f"stream: first message must be generate_request, got {name}",
                        )
                    )
                self.has_request = True
                events.append(RequestReceived(msg))
            elif isinstance(msg, Cancel):
                self.close()
                return [*events, CancelReceived()]
            else:
                name = type(msg).__name__
                return events + self._failed(
                    ProtocolError(ErrorCode.INVALID_MESSAGE, f"stream: unexpected {name} after the request")
                )
        if end_stream:
            events += self._end_of_stream(decoder)
        return events

    def _peek(self, data: bytes) -> list[StreamEvent]:
        """Refuse the request from its first bytes: a header longer than a request can be, or a
        prompt whose byte length alone is too long (`prompt_check`)."""
        self._head += data[: FRAME_HEADER_SIZE + PEEK_MAX - len(self._head)]
        if len(self._head) < FRAME_HEADER_SIZE:
            return []
        (length,) = struct.unpack_from(">I", self._head)
        if self._max_request_size is not None and length > self._max_request_size:
            return self._failed(
                ProtocolError(
                    ErrorCode.PROMPT_TOO_LONG,
                    f"request frame of {length} bytes: a request to this edge holds at most "
                    f"{self._max_request_size} bytes",
                )
            )
        if self._prompt_check is None:
            self._is_peeking = False
            return []
        num_bytes = peek_prompt_bytes(self._head[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + length])
        if num_bytes == NEED_MORE and len(self._head) < FRAME_HEADER_SIZE + length:
            return []
        self._is_peeking = False
        self._head = bytearray()
        if num_bytes >= 0:
            try:
                self._prompt_check(num_bytes)
            except ProtocolError as exc:
                return self._failed(exc)
        return []

    def _end_of_stream(self, decoder: FrameDecoder) -> list[StreamEvent]:
        try:
            decoder.eof()
        except ProtocolError as exc:
            return self._failed(exc)
        if not self.has_request:
            return self._failed(ProtocolError(ErrorCode.INVALID_FRAME, "stream: ended before a request"))
        return []

    def _failed(self, error: ProtocolError) -> list[StreamEvent]:
        self.close()
        return [StreamFailed(error)]
