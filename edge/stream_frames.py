"""The frames of one request stream as a sans-IO state machine: bytes in, events out.

Like aioquic's `H0Connection.handle_event`, `StreamFrames.receive` takes what arrived on the
stream and returns what it meant, and does no I/O: the client writes one `GenerateRequest`
frame, then at most a `Cancel`; anything else, a malformed frame, too many bytes after the
request, or an end of stream before the request, is a `StreamFailed` event carrying the
`ProtocolError` to answer with. A request frame whose length header alone exceeds what a request
can be (`max_request_size`) fails as soon as its 4 header bytes are in, before its body arrives.
After `StreamFailed` or `CancelReceived` the machine is closed
and ignores further bytes. `session.StreamSession` is the asyncio shell around it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

from isthmus.protocol import Cancel, ErrorCode, FrameDecoder, GenerateRequest, ProtocolError
from isthmus.protocol.limits import FRAME_HEADER_SIZE

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
    ) -> None:
        self._decoder: FrameDecoder | None = FrameDecoder(max_frame_size)
        self._max_after_request = max_after_request  # bytes
        # bytes: the largest request body this edge could accept (None: only `max_frame_size`)
        self._max_request_size = max_request_size
        self._head = bytearray()  # the request frame's header, until its 4 bytes are in
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
        if self._max_request_size is not None and len(self._head) < FRAME_HEADER_SIZE:
            failed = self._check_request_header(data)
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

    def _check_request_header(self, data: bytes) -> list[StreamEvent]:
        """Refuse the request frame as soon as its header announces more than a request can be."""
        self._head += data[: FRAME_HEADER_SIZE - len(self._head)]
        if len(self._head) < FRAME_HEADER_SIZE or self._max_request_size is None:
            return []
        (length,) = struct.unpack(">I", self._head)
        if length <= self._max_request_size:
            return []
        return self._failed(
            ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"request frame of {length} bytes: a request to this edge holds at most "
                f"{self._max_request_size} bytes",
            )
        )

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
