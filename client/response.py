"""Sans-IO reader of one response stream: bytes in, `TokenChunk`s then one `Done` or `Error` out.

It enforces the stream's grammar (chunks, then exactly one terminal message, then the end) so the
asyncio layer only moves bytes. Violations raise typed SDK errors.
"""

from __future__ import annotations

from typing import TypeAlias

from isthmus.protocol import Done, Error, FrameDecoder, ProtocolError, TokenChunk
from isthmus.protocol.limits import MAX_FRAME_SIZE

from .errors import ConnectionLost, ServerError

ResponseEvent: TypeAlias = TokenChunk | Done | Error


class ResponseReader:
    """Decode one request's response stream.

    `feed(data, end_stream)` returns the messages completed by `data`. It raises `ServerError` when
    the edge breaks the protocol and `ConnectionLost` when the stream ends before `Done`/`Error`.
    """

    def __init__(self, request_id: str, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.request_id = request_id
        self._decoder = FrameDecoder(max_frame_size)
        self.is_finished = False  # a Done or Error was read
        self.num_chunks = 0

    def feed(self, data: bytes, end_stream: bool = False) -> list[ResponseEvent]:
        """Feed bytes received on the stream; `end_stream` when the edge ended it."""
        events: list[ResponseEvent] = []
        if data and not self.is_finished:
            try:
                messages = self._decoder.feed(data)
            except ProtocolError as exc:
                raise ServerError(
                    f"edge sent a malformed response: {exc.message}",
                    code=exc.code,
                    request_id=self.request_id,
                ) from None
            for msg in messages:
                if self.is_finished:
                    break  # anything after the terminal message is ignored
                events.append(self._check(msg))
        if end_stream and not self.is_finished:
            raise ConnectionLost(
                f"edge ended the stream after {self.num_chunks} chunks without Done or Error",
                request_id=self.request_id,
            )
        return events

    def _check(self, msg: object) -> ResponseEvent:
        if isinstance(msg, TokenChunk):
            if msg.id != self.request_id:
                raise ServerError(
                    f"edge sent a chunk for request {msg.id!r} on the stream of {self.request_id!r}",
                    request_id=self.request_id,
                )
            self.num_chunks += 1
            return msg
        if isinstance(msg, Done | Error):
            if msg.id and msg.id != self.request_id:
                raise ServerError(
                    f"edge ended request {msg.id!r} on the stream of {self.request_id!r}",
                    request_id=self.request_id,
                )
            self.is_finished = True
            return msg
        raise ServerError(
            f"edge sent an unexpected {type(msg).__name__} on a response stream",
            request_id=self.request_id,
        )
