"""The edge's QUIC listener: aioquic, TLS 1.3, ALPN ``isthmus/1``, one bidirectional stream per request.

`EdgeQuicServer` owns the UDP endpoint, the connection and stream limits, the session-ticket store
(returning clients resume with 0-RTT and may send their request as early data) and draining.
`EdgeQuicProtocol` is the per-connection shell: it turns aioquic events into calls on
`RequestStream` objects and reports how many bytes each stream still has unacknowledged, which is
what the watermarks in `buffers.py` act on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicErrorCode
from aioquic.tls import SessionTicket
from isthmus.protocol import ErrorCode, ProtocolError
from isthmus.protocol.limits import MAX_FRAME_SIZE
from isthmus.protocol.version import ALPN_PROTOCOL

from .buffers import BufferLimits
from .session import Handler, RequestStream

log = logging.getLogger(__name__)

CLOSE_FLUSH_TIMEOUT_S = 1.0  # seconds close() waits for unacknowledged frames before closing
MAX_REMEMBERED_STREAMS = 4096  # finished stream ids kept per connection to ignore late frames


@dataclass(frozen=True, slots=True)
class QuicLimits:
    """Admission and memory limits of the QUIC listener."""

    max_connections: int = 1024
    max_streams_per_connection: int = 64  # concurrent request streams; also the QUIC transport param
    max_frame_size: int = MAX_FRAME_SIZE  # bytes: checked before a frame body is buffered
    idle_timeout_s: float = 60.0  # seconds
    max_stream_data: int = 1024 * 1024  # bytes: flow-control window we grant per stream
    max_data: int = 4 * 1024 * 1024  # bytes: flow-control window we grant per connection
    buffers: BufferLimits = field(default_factory=BufferLimits)
    max_session_tickets: int = 10_000  # tickets remembered for 0-RTT resumption


class SessionTicketStore:
    """Remembers the tickets we issued so returning clients can resume (and send 0-RTT data).

    Tickets are single-use (`pop`), which keeps a replayed 0-RTT request from being accepted twice
    by this node.
    """

    def __init__(self, max_tickets: int) -> None:
        self._tickets: dict[bytes, SessionTicket] = {}
        self._max_tickets = max_tickets

    def add(self, ticket: SessionTicket) -> None:
        if len(self._tickets) >= self._max_tickets:
            self._tickets.pop(next(iter(self._tickets)))  # oldest first (insertion order)
        self._tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> SessionTicket | None:
        return self._tickets.pop(label, None)

    def __len__(self) -> int:
        return len(self._tickets)


def set_stream_limits(quic: QuicConnection, max_bidi: int) -> None:
    """Advertise `max_bidi` concurrent request streams and no unidirectional ones.

    aioquic (1.7) has no configuration knob for these. Its `Limit` keeps `value` (what the peer
    may open, raised by one each time a peer stream is discarded) and `sent` (what was last
    advertised); MAX_STREAMS goes out only once `value` passes `sent`. Both must be set: lowering
    `value` alone left `sent` at aioquic's 128, so no credit was granted again until 64 more
    streams than the peer could open had finished, and the 65th stream stalled for good. The
    transport parameters read `value` after the protocol is built, before the first flight.
    """
    for limit, num in ((quic._local_max_streams_bidi, max_bidi), (quic._local_max_streams_uni, 0)):
        if limit.used:
            raise RuntimeError("stream limits must be set before the peer opens a stream")
        limit.value = limit.sent = num


class EdgeQuicProtocol(QuicConnectionProtocol):
    """One client connection: routes stream events to `RequestStream`s."""

    def __init__(self, quic: QuicConnection, stream_handler: object = None, *, server: EdgeQuicServer):
        super().__init__(quic)
        self._server = server
        limits = server.limits
        set_stream_limits(quic, limits.max_streams_per_connection)
        self._streams: dict[int, RequestStream] = {}
        # streams already answered: a late FIN or Cancel on one must not open a new request
        self._finished_ids: set[int] = set()
        self._is_refused = not server._register(self)
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
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def connection_buffered(self) -> int:
        total = 0
        for stream in self._quic._streams.values():
            total += stream.sender._buffer_stop - stream.sender._buffer_start
        return total

    def now(self) -> float:
        return self._loop.time()

    # --- aioquic --------------------------------------------------------------------------------
    def datagram_received(self, data: bytes | str, addr: object) -> None:
        super().datagram_received(data, addr)
        for stream in list(self._streams.values()):
            if stream.is_paused:
                stream.notify()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            if self._is_refused:
                self.close(error_code=QuicErrorCode.CONNECTION_REFUSED, reason_phrase="too many connections")
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
            stream = RequestStream(
                event.stream_id,
                self,
                self._server.handler,
                self._server.limits.buffers,
                self._server.limits.max_frame_size,
                on_finished=self._on_stream_finished,
                on_error=self._server.on_error,
            )
            if self._server.is_draining:
                stream.fail(ProtocolError(ErrorCode.DRAINING, "edge is draining", retryable=True))
                return
            if len(self._streams) >= self._server.limits.max_streams_per_connection:
                stream.fail(ProtocolError(ErrorCode.OVERLOADED, "too many streams", retryable=True))
                return
            self._streams[event.stream_id] = stream
            self.num_streams_served += 1
        stream.feed(event.data, event.end_stream)

    def _on_stream_finished(self, stream: RequestStream) -> None:
        self._streams.pop(stream.stream_id, None)
        self._finished_ids.add(stream.stream_id)
        if len(self._finished_ids) > MAX_REMEMBERED_STREAMS:
            # ids only grow, so the oldest are the least likely to see another frame
            for old in sorted(self._finished_ids)[: MAX_REMEMBERED_STREAMS // 2]:
                self._finished_ids.discard(old)
        self._server._stream_finished(stream)

    @property
    def streams(self) -> list[RequestStream]:
        return list(self._streams.values())

    def cancel_all(self, code: ErrorCode, message: str) -> None:
        for stream in list(self._streams.values()):
            stream.cancel(code, message)


class EdgeQuicServer:
    """Accepts QUIC connections and serves each request stream with `handler`."""

    def __init__(
        self,
        handler: Handler,
        *,
        certfile: str,
        keyfile: str,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: QuicLimits | None = None,
        on_error: Callable[[ErrorCode], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or QuicLimits()
        self.host = host
        self.on_error = on_error  # called for errors the server writes itself
        self.is_draining = False
        self.tickets = SessionTicketStore(self.limits.max_session_tickets)
        self._requested_port = port
        self._certfile = certfile
        self._keyfile = keyfile
        self._server: QuicServer | None = None
        self._connections: set[EdgeQuicProtocol] = set()
        self._finished: list[RequestStream] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.max_stream_buffered = 0  # bytes: highest unacknowledged count any stream reached

    async def start(self) -> None:
        config = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN_PROTOCOL],
            idle_timeout=self.limits.idle_timeout_s,
            max_stream_data=self.limits.max_stream_data,
            max_data=self.limits.max_data,
        )
        config.load_cert_chain(self._certfile, self._keyfile)
        self._server = await serve(
            self.host,
            self._requested_port,
            configuration=config,
            create_protocol=self._create_protocol,
            session_ticket_fetcher=self.tickets.pop,
            session_ticket_handler=self.tickets.add,
        )

    def _create_protocol(self, quic: QuicConnection, stream_handler: object = None) -> EdgeQuicProtocol:
        return EdgeQuicProtocol(quic, stream_handler, server=self)

    @property
    def port(self) -> int:
        if self._server is None or self._server._transport is None:
            raise RuntimeError("server not started")
        return int(self._server._transport.get_extra_info("sockname")[1])

    @property
    def num_connections(self) -> int:
        return len(self._connections)

    @property
    def num_active_streams(self) -> int:
        return sum(len(c._streams) for c in self._connections)

    def buffered_bytes(self) -> int:
        """Bytes handed to QUIC on all connections and not yet acknowledged."""
        return sum(c.connection_buffered() for c in self._connections)

    async def drain(self, grace_s: float) -> int:
        """Stop admitting; wait up to `grace_s` for in-flight requests, then cancel the rest.

        Returns how many requests were in flight when draining began.
        """
        self.is_draining = True
        num_in_flight = self.num_active_streams
        if num_in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            except TimeoutError:
                for conn in list(self._connections):
                    conn.cancel_all(ErrorCode.DRAINING, "edge is shutting down")
        return num_in_flight

    async def close(self) -> None:
        """Cancel what still runs, close every connection and the socket."""
        for conn in list(self._connections):
            conn.cancel_all(ErrorCode.DRAINING, "edge is shutting down")
        streams = [s for c in self._connections for s in c.streams]
        # let the final Error/Done frames reach the clients before the connections close
        deadline = asyncio.get_running_loop().time() + CLOSE_FLUSH_TIMEOUT_S
        while self.buffered_bytes() > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="shutting down")
        for stream in streams:
            await stream.wait()
        if self._server is not None:
            self._server.close()
            self._server = None
        await asyncio.sleep(0)

    # --- bookkeeping from connections -----------------------------------------------------------
    def _register(self, conn: EdgeQuicProtocol) -> bool:
        if len(self._connections) >= self.limits.max_connections:
            return False
        self._connections.add(conn)
        return True

    def _unregister(self, conn: EdgeQuicProtocol) -> None:
        self._connections.discard(conn)
        self._check_idle()

    def _stream_finished(self, stream: RequestStream) -> None:
        self._check_idle()

    def _check_idle(self) -> None:
        if self.num_active_streams == 0:
            self._idle.set()
