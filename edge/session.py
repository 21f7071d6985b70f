"""One request on one QUIC stream: frames in, the orchestrator's answer out, within watermarks.

The client writes one `GenerateRequest` frame and may later write a `Cancel` (decoded and checked
by the sans-IO `stream_frames.StreamFrames`); the edge writes `TokenChunk` frames and ends with
exactly one `Done` or `Error`, then ends the stream. The stream
never touches aioquic directly: it talks to a small `StreamTransport` (the connection protocol in
`quic_server.py`), which keeps this file testable with a fake transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

from isthmus.protocol import (
    RETRYABLE_CODES,
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    encode_frame,
)

from .answers import Answer
from .buffers import BufferLimits, FlowAction, StreamFlow
from .stream_frames import MAX_AFTER_REQUEST, CancelReceived, RequestReceived, StreamFrames

log = logging.getLogger(__name__)

Handler = Callable[[GenerateRequest], AsyncGenerator[Answer, None]]


@dataclass(frozen=True, slots=True)
class StreamHooks:
    """What the connection wants to hear from a stream (all optional).

    `admit` sees a decoded request before it is served and may refuse it by raising
    `ProtocolError` (the connection's throttles); `on_final` sees the stream's last message.
    """

    admit: Callable[[GenerateRequest], None] | None = None
    on_final: Callable[[Done | Error], None] | None = None


class StreamTransport(Protocol):
    """What a stream needs from its connection."""

    def send(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...

    def reset(self, stream_id: int, code: int) -> None: ...

    def stream_buffered(self, stream_id: int) -> int:
        """Bytes handed to QUIC on this stream and not yet acknowledged by the peer."""
        ...

    def connection_buffered(self) -> int:
        """The same, summed over the connection's streams."""
        ...

    def now(self) -> float: ...


class SlowReaderError(Exception):
    """The peer stopped reading: the stream stayed above its watermark too long."""


class StreamSession:
    """Serves one bidirectional stream. Create it on the stream's first data, then `feed` it."""

    def __init__(
        self,
        stream_id: int,
        transport: StreamTransport,
        handler: Handler,
        limits: BufferLimits,
        max_frame_size: int,
        on_finished: Callable[[StreamSession], None] | None = None,
        on_error: Callable[[ErrorCode], None] | None = None,
        hooks: StreamHooks | None = None,
        max_after_request: int = MAX_AFTER_REQUEST,
        max_request_size: int | None = None,
        prompt_check: Callable[[int], None] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.request_id = ""
        self.max_buffered = 0  # bytes: highest unacknowledged count seen after a write
        self.is_finished = False
        self._transport = transport
        self._handler = handler
        self._frames = StreamFrames(max_frame_size, max_after_request, max_request_size, prompt_check)
        self._hooks = hooks or StreamHooks()
        self._flow = StreamFlow(limits)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_finished = on_finished
        self._on_error = on_error  # errors this stream writes itself (metrics)

    # --- events from the connection --------------------------------------------------------------
    def feed(self, data: bytes, end_stream: bool) -> None:
        """Bytes received on the stream. Never raises: bad input becomes an `Error` frame."""
        if self.is_finished:
            return
        for event in self._frames.receive(data, end_stream):
            if self.is_finished:
                return
            if isinstance(event, RequestReceived):
                self.request_id = event.request.id
                if not self._admit(event.request):
                    return
                self._task = asyncio.get_running_loop().create_task(self._serve(event.request))
            elif isinstance(event, CancelReceived):
                self.cancel(ErrorCode.CANCELLED, "cancelled by the client")
            else:
                self.fail(event.error)

    @property
    def has_request(self) -> bool:
        """True once the stream's request frame was complete (and decoded)."""
        return self._frames.has_request

    @property
    def held_bytes(self) -> int:
        """Bytes of a partial frame this stream holds (0 once finished)."""
        return self._frames.held_bytes

    def on_reset(self) -> None:
        """The client reset its side of the stream: abort the request, write nothing more."""
        if self.is_finished:
            return
        self._finish()
        self._transport.reset(self.stream_id, ErrorCode.CANCELLED)
        self._cancel_task()

    def notify(self) -> None:
        """Acknowledgements may have arrived: re-check the watermarks of a paused stream."""
        self._wake.set()

    def cancel(self, code: ErrorCode, message: str, retryable: bool | None = None) -> None:
        """Abort the request and end the stream with an `Error` (a `Cancel` frame, a drain).

        `retryable` defaults to whether `code` is one of the protocol's retryable codes.
        """
        if self.is_finished:
            return
        if self._on_error is not None:
            self._on_error(code)
        if retryable is None:
            retryable = code in RETRYABLE_CODES
        self._write(Error(id=self.request_id, code=code, message=message, retryable=retryable), end=True)
        self._finish()
        self._cancel_task()

    def fail(self, exc: ProtocolError) -> None:
        """End the stream with the `Error` for `exc`; other streams are unaffected."""
        self.cancel(exc.code, exc.message, exc.retryable)

    async def wait(self) -> None:
        """Until the request's task has finished (cleanup included)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    # --- the request ----------------------------------------------------------------------------
    def _admit(self, req: GenerateRequest) -> bool:
        if self._hooks.admit is None:
            return True
        try:
            self._hooks.admit(req)
        except ProtocolError as exc:
            self.fail(exc)
            return False
        return True

    async def _serve(self, req: GenerateRequest) -> None:
        try:
            async with contextlib.aclosing(self._handler(req)) as answers:
                async for msg in answers:
                    if self.is_finished:
                        return
                    is_last = isinstance(msg, Done | Error)
                    self._write(msg, end=is_last)
                    if is_last:
                        self._finish()
                        return
                    await self._wait_for_reader()
            if not self.is_finished:
                self.fail(ProtocolError(ErrorCode.INTERNAL, "answer ended without done or error"))
        except SlowReaderError:
            self.cancel(ErrorCode.SLOW_READER, "the client stopped reading the stream")
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            self.fail(exc)
        except Exception as exc:
            log.exception("request %s failed", self.request_id)
            self.fail(ProtocolError(ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})"))

    async def _wait_for_reader(self) -> None:
        """Return when the stream may pull the next chunk; raise `SlowReaderError` to give up."""
        action = self._update_flow()
        while action is FlowAction.PAUSE and not self.is_finished:
            self._wake.clear()
            timeout = self._flow.remaining_stall_s(self._transport.now())
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the inner result when
            # the task is cancelled just as the event is set (a cancel sets it), losing the cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.001)):
                    await self._wake.wait()
            action = self._update_flow()
        if action is FlowAction.ABORT:
            raise SlowReaderError

    def _update_flow(self) -> FlowAction:
        return self._flow.update(
            self._transport.stream_buffered(self.stream_id),
            self._transport.connection_buffered(),
            self._transport.now(),
        )

    @property
    def is_paused(self) -> bool:
        return self._flow.is_paused

    # --- helpers --------------------------------------------------------------------------------
    def _write(self, msg: Answer, end: bool) -> None:
        self._transport.send(self.stream_id, encode_frame(msg), end)
        if end and self._hooks.on_final is not None and isinstance(msg, Done | Error):
            self._hooks.on_final(msg)
        self.max_buffered = max(self.max_buffered, self._transport.stream_buffered(self.stream_id))

    def _finish(self) -> None:
        if self.is_finished:
            return
        self.is_finished = True
        self._frames.close()  # a partial frame's bytes go now, not when the stream object does
        self._wake.set()
        if self._on_finished is not None:
            self._on_finished(self)

    def _cancel_task(self) -> None:
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
