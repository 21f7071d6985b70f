"""One client connection of the edge's QUIC listener: aioquic events in, `StreamSession`s served.

It reports to its `EdgeQuicServer` what the server's sans-IO tables need: the peer's address
(admission), when streams open and close (idle eviction), the bytes it holds before requests are
read (receive budgets), and wrong keys (throttling: a throttled address is refused before its key
is looked at, except on connections that have already been answered with a valid key, so
clients sharing an address with a guesser, or a NAT, keep the connections they have), and
requests refused for breaking the limits while the connection has proved nothing (strikes against
its address, `EdgeQuicServer.strike`). A connection whose address runs out of either credit is
closed after its answers, and the address's new connections are refused at the gate
(`source_gate.py`). It also answers the session's questions on unacknowledged bytes, which the
watermarks in `buffers.py` act on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, QuicErrorCode
from isthmus.protocol import Done, Error, ErrorCode, GenerateRequest, ProtocolError

from .quic_compat import (
    connection_receive_buffered,
    connection_send_buffered,
    freeze_receive_credit,
    stream_send_buffered,
)
from .quic_limits import set_stream_limits
from .session import StreamHooks, StreamSession
from .source_gate import REFUSED_REQUESTS, WRONG_KEYS

if TYPE_CHECKING:
    from .quic_server import EdgeQuicServer

MAX_REMEMBERED_STREAMS = 4096  # finished stream ids kept per connection to ignore late frames
# the QUIC application error code of the CONNECTION_CLOSE that ends a connection whose source is
# throttled for wrong API keys, after its first RATE_LIMITED answer: the protocol's RATE_LIMITED
THROTTLED_CLOSE_CODE = int(ErrorCode.RATE_LIMITED)
# refused for breaking the limits: on a connection with no successful request yet, each counts
# against its source address (`EdgeQuicServer.strike`)
STRIKE_CODES = frozenset({ErrorCode.PROMPT_TOO_LONG})


class ServerConnection(QuicConnectionProtocol):
    """One client connection: routes stream events to `StreamSession`s."""

    def __init__(self, quic: QuicConnection, stream_handler: object = None, *, server: EdgeQuicServer):
        super().__init__(quic)
        self._server = server
        set_stream_limits(quic, server.limits.max_streams_per_connection)
        self._streams: dict[int, StreamSession] = {}
        # streams already answered: a late FIN or Cancel on one must not open a new request
        self._finished_ids: set[int] = set()
        self.source = ""  # the peer's address, from its first datagram
        self.is_admitted = False  # by the server's connection table, once the handshake completed
        # a request on this connection was answered (so its key was good): the connection is
        # exempt from its address's wrong-key throttle until it presents a wrong key itself
        self.has_valid_key = False
        self.is_closing_throttled = False  # answered RATE_LIMITED for wrong keys: closing
        self._is_refused = not server._register(self)
        self._hooks = StreamHooks(admit=self._admit_request, on_final=self._on_final)
        self.num_streams_served = 0

    # --- StreamTransport ------------------------------------------------------------------------
    def send(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (ValueError, AssertionError, RuntimeError):
            return  # the stream was reset or finished meanwhile: nothing to deliver
        buffered = self.stream_buffered(stream_id)
        if buffered > self._server.max_stream_buffered:
            self._server.max_stream_buffered = buffered
        self._transmit_soon()

    def reset(self, stream_id: int, code: int) -> None:
        try:
            self._quic.reset_stream(stream_id, int(code))
        except (ValueError, AssertionError):
            return
        self._transmit_soon()

    def stream_buffered(self, stream_id: int) -> int:
        return stream_send_buffered(self._quic, stream_id)

    def connection_buffered(self) -> int:
        return connection_send_buffered(self._quic)

    def now(self) -> float:
        return self._loop.time()

    # --- what the server's budgets and tables read ------------------------------------------------
    def received_held(self) -> int:
        """Bytes received and not yet turned into requests: partial frames, out-of-order data."""
        held = sum(s.held_bytes for s in self._streams.values())
        return held + connection_receive_buffered(self._quic)

    def shed(self, num_bytes: int, why: str) -> None:
        """Free at least `num_bytes` of received bytes: fail the biggest holders, else close."""
        error = ProtocolError(ErrorCode.OVERLOADED, f"receive buffer: {why}", retryable=True)
        for stream in sorted(self._streams.values(), key=lambda s: s.held_bytes, reverse=True):
            if num_bytes <= 0 or stream.held_bytes == 0:
                break
            num_bytes -= stream.held_bytes
            self._stop_reading(stream.stream_id)
            stream.fail(error)
        if num_bytes > 0:  # out-of-order data in aioquic's buffers: only closing frees it
            self.close(error_code=QuicErrorCode.FLOW_CONTROL_ERROR, reason_phrase=f"receive buffer: {why}")

    def evict(self) -> None:
        """Close an idle connection to make room for a new one."""
        self.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="idle connection evicted under load")

    def _stop_reading(self, stream_id: int) -> None:
        try:
            self._quic.stop_stream(stream_id, int(ErrorCode.OVERLOADED))
        except (ValueError, AssertionError):
            return
        # and no more credit on it: a peer ignoring STOP_SENDING sends at most the last window
        freeze_receive_credit(self._quic, stream_id)

    # --- aioquic --------------------------------------------------------------------------------
    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.source and isinstance(addr, tuple) and addr:
            self.source = str(addr[0])
        super().datagram_received(data, addr)
        for stream in list(self._streams.values()):
            if stream.is_paused:
                stream.notify()
        if not self._is_refused:
            self._server._account_received(self)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            reason = None
            if not self._is_refused:
                reason = self._server._admit(self)
                self._is_refused = reason is not None
            if self._is_refused:
                self.cancel_all(ErrorCode.OVERLOADED, "connection refused")
                self.close(
                    error_code=QuicErrorCode.CONNECTION_REFUSED,
                    reason_phrase=reason or "too many connections",
                )
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.StreamReset | events.StopSendingReceived):
            # a reset of the client's side, or STOP_SENDING on ours: it no longer wants the answer
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.on_reset()
        elif isinstance(event, events.ConnectionTerminated):
            for stream in list(self._streams.values()):
                stream.on_reset()
            self._server._unregister(self)

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        if self._is_refused:
            return
        stream = self._streams.get(event.stream_id)
        if stream is None:
            if event.stream_id % 4 != 0 or event.stream_id in self._finished_ids:
                return  # only new client-initiated bidirectional streams carry requests
            stream = self._open_stream(event.stream_id)
            if stream is None:
                if not event.end_stream:
                    self._stop_reading(event.stream_id)
                return
            stream.feed(event.data, event.end_stream)
            self._cap_pending(stream)
        else:
            stream.feed(event.data, event.end_stream)
        if stream.is_finished and not stream.has_request and not event.end_stream:
            # refused before its request was read (an oversized header, a malformed frame):
            # stop the rest of its bytes now rather than receive and drop them
            self._stop_reading(event.stream_id)

    def _cap_pending(self, stream: StreamSession) -> None:
        """A new stream whose first bytes left its request frame incomplete, beyond the cap of
        such streams: stop its bytes now (STOP_SENDING makes the peer reset it) instead of
        receiving and holding them (the caller stops it). A request that arrives whole is never
        refused here. The cap is lower until a request on the connection has succeeded."""
        receive = self._server.limits.receive
        # before a request succeeded here (`has_valid_key`) the connection has proved nothing
        max_pending = (
            receive.max_pending_streams if self.has_valid_key else receive.max_pending_streams_unproven
        )
        if stream.is_finished or stream.has_request or self.num_pending_streams <= max_pending:
            return
        if not self.has_valid_key:
            self._strike()
        stream.fail(
            ProtocolError(
                ErrorCode.OVERLOADED,
                f"too many streams ({max_pending}) waiting for their request frame",
                retryable=True,
            )
        )

    def _open_stream(self, stream_id: int) -> StreamSession | None:
        server = self._server
        stream = StreamSession(
            stream_id,
            self,
            server.handler,
            server.limits.buffers,
            server.limits.max_frame_size,
            on_finished=self._on_stream_finished,
            on_error=server.on_error,
            hooks=self._hooks,
            max_after_request=server.limits.receive.max_after_request,
            max_request_size=server.limits.receive.max_request_size,
            prompt_check=server.prompt_check,
        )
        if server.is_draining:
            stream.fail(ProtocolError(ErrorCode.DRAINING, "edge is draining", retryable=True))
            return None
        if len(self._streams) >= server.limits.max_streams_per_connection:
            stream.fail(ProtocolError(ErrorCode.OVERLOADED, "too many streams", retryable=True))
            return None
        struck_s = 0.0 if self.has_valid_key else server.strike_wait(self.source)
        if struck_s > 0.0:
            # throttled for refused requests: this stream is refused before its bytes are read
            message = f"{REFUSED_REQUESTS}; retry in {struck_s:.1f} s"
            stream.fail(ProtocolError(ErrorCode.RATE_LIMITED, message, retryable=True))
            self._close_soon(REFUSED_REQUESTS)
            return None
        self._streams[stream_id] = stream
        self.num_streams_served += 1
        server.table.stream_opened(self)
        return stream

    def _on_stream_finished(self, stream: StreamSession) -> None:
        self._streams.pop(stream.stream_id, None)
        self._finished_ids.add(stream.stream_id)
        if len(self._finished_ids) > MAX_REMEMBERED_STREAMS:
            # ids only grow, so the oldest are the least likely to see another frame
            for old in sorted(self._finished_ids)[: MAX_REMEMBERED_STREAMS // 2]:
                self._finished_ids.discard(old)
        self._server._stream_finished(self, stream)

    # --- throttling of wrong keys ----------------------------------------------------------------
    def _admit_request(self, req: GenerateRequest) -> None:
        auth = self._server.auth
        if auth is None or self.has_valid_key:
            return
        try:
            auth.check_throttle(self.source)
        except ProtocolError:
            # a throttled source's connection gets this one RATE_LIMITED answer, then is closed:
            # kept open, every further guess would still cost the edge a stream (the answer is
            # written before the close, which goes out after it)
            self._server.block_source(self.source, auth.throttle_retry_after(self.source), WRONG_KEYS)
            self._close_soon(WRONG_KEYS)
            raise

    def _close_soon(self, reason: str) -> None:
        if not self.is_closing_throttled:
            self.is_closing_throttled = True
            self._loop.call_soon(self._close_throttled, reason)

    def _close_throttled(self, reason: str) -> None:
        if any(s.has_request for s in self._streams.values()):
            # requests admitted before the throttle are still being served: keep the connection
            # (the next RATE_LIMITED answer with none in flight closes it)
            self.is_closing_throttled = False
            return
        self.transmit()  # the RATE_LIMITED answers leave before the CONNECTION_CLOSE
        self.close(error_code=THROTTLED_CLOSE_CODE, reason_phrase=reason)

    def _strike(self) -> None:
        """A request here was refused for breaking the limits: count it against the source; out
        of credit, this connection (which proved nothing) is closed after its answers."""
        if self._server.strike(self.source) > 0.0:
            self._close_soon(REFUSED_REQUESTS)

    def _on_final(self, msg: Done | Error) -> None:
        if isinstance(msg, Done):
            self.has_valid_key = True
            return
        if msg.code in STRIKE_CODES and not self.has_valid_key:
            self._strike()
        auth = self._server.auth
        if auth is not None and msg.code == ErrorCode.UNAUTHENTICATED:
            self.has_valid_key = False
            auth.record_failure(self.source, reason=msg.message)
            # out of credit: its new connections are refused at their first packet from now on
            self._server.block_source(self.source, auth.throttle_retry_after(self.source), WRONG_KEYS)

    @property
    def num_streams(self) -> int:
        """Request streams this connection is serving now."""
        return len(self._streams)

    @property
    def num_pending_streams(self) -> int:
        """Request streams still waiting for their complete request frame."""
        return sum(not s.has_request for s in self._streams.values())

    @property
    def streams(self) -> list[StreamSession]:
        return list(self._streams.values())

    def cancel_all(self, code: ErrorCode, message: str) -> None:
        for stream in list(self._streams.values()):
            stream.cancel(code, message)
