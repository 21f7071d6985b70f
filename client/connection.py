"""One QUIC connection to one edge: the asyncio shell around aioquic.

Each request gets its own bidirectional stream: the client writes one `GenerateRequest` frame and
keeps its side open (so it can still write `Cancel`), the edge answers with `TokenChunk` frames
and one `Done` or `Error`, then the client ends its side. Cancelling writes `Cancel`, then resets
the stream and asks the edge to stop sending (the reset is what the edge notices first).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket
from isthmus.protocol import Cancel, ErrorCode, GenerateRequest, encode_frame

from .errors import ConnectionLost, IsthmusError
from .liveness import watch
from .quic_compat import close_datagram_transport
from .response import ResponseEvent, ResponseReader


@dataclass(frozen=True)
class ConnectionInfo:
    """What is known about a connection: where it goes and how it was set up."""

    host: str
    port: int
    is_resumed: bool  # TLS session resumed from a ticket
    is_early_data_accepted: bool  # the edge accepted 0-RTT data
    local_port: int


class ClientStream:
    """The client's end of one request stream. Iterate with `await next_event()`."""

    def __init__(self, protocol: EdgeConnection, stream_id: int, request_id: str) -> None:
        self._protocol = protocol
        self.stream_id = stream_id
        self.request_id = request_id
        self.reader = ResponseReader(request_id)
        self.sent_early = not protocol.is_connected  # request left before the handshake finished
        self._queue: asyncio.Queue[ResponseEvent | IsthmusError] = asyncio.Queue()
        self.is_closed = False

    async def next_event(self) -> ResponseEvent:
        """The next chunk, `Done` or `Error`; raises `IsthmusError` on stream or connection loss."""
        item = await self._queue.get()
        if isinstance(item, IsthmusError):
            raise item
        return item

    def finish(self) -> None:
        """End our side after the edge's terminal message, so both sides can discard the stream."""
        if self.is_closed:
            return
        self.is_closed = True
        self._protocol._forget(self.stream_id)
        self._protocol._send(self.stream_id, b"", end_stream=True)

    def cancel(self) -> None:
        """Abort the request on the edge: `Cancel` frame, stream reset and STOP_SENDING."""
        if self.is_closed:
            return
        self.is_closed = True
        self._protocol._forget(self.stream_id)
        self._protocol._cancel(self.stream_id, self.request_id)

    # called by EdgeConnection ------------------------------------------------------------------------
    def _on_data(self, data: bytes, end_stream: bool) -> None:
        try:
            for event in self.reader.feed(data, end_stream):
                self._queue.put_nowait(event)
        except IsthmusError as exc:
            self._queue.put_nowait(exc)
            self.cancel()

    def _on_lost(self, exc: IsthmusError) -> None:
        self._queue.put_nowait(exc)
        self.is_closed = True


class EdgeConnection(QuicConnectionProtocol):
    """aioquic protocol that routes stream events to `ClientStream`s."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self._streams: dict[int, ClientStream] = {}
        self.is_connected = False
        self.is_resumed = False
        self.is_early_data_accepted = False
        self.close_reason: str | None = None  # set once the connection is gone
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_heard = self._loop.time()  # when the edge last sent us a datagram
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def is_usable(self) -> bool:
        """Whether new requests may be opened on this connection."""
        return self.close_reason is None

    async def handshake_done(self) -> None:
        """Wait for the TLS handshake; raises `ConnectionLost` if the connection dies first."""
        await asyncio.shield(self._handshake)

    def open_request(self, request: GenerateRequest) -> ClientStream:
        """Open a stream and write `request` on it (as 0-RTT early data before the handshake)."""
        if self.close_reason is not None:
            raise ConnectionLost(f"connection closed: {self.close_reason}", request_id=request.id)
        stream_id = self._quic.get_next_available_stream_id()
        stream = ClientStream(self, stream_id, request.id)
        self._streams[stream_id] = stream
        self._send(stream_id, encode_frame(request))
        return stream

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._last_heard = self._loop.time()
        super().datagram_received(data, addr)

    # --- liveness (see liveness.py) ---------------------------------------------------------------
    def start_watchdog(self, probe_after: float, timeout: float) -> None:
        """Probe a silent edge while requests wait on it; declare the connection lost if it is gone."""
        if self._watchdog is None:
            self._watchdog = self._loop.create_task(watch(self, probe_after, timeout), name="edge-liveness")

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def num_open_requests(self) -> int:
        return len(self._streams)

    def seconds_silent(self) -> float:
        return self._loop.time() - self._last_heard

    def send_probe(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._ping_waiters[id(waiter)] = waiter
        self._quic.send_ping(id(waiter))
        self.transmit()
        return waiter

    def forget_probe(self, probe: asyncio.Future[None]) -> None:
        self._ping_waiters.pop(id(probe), None)
        probe.cancel()

    def declare_lost(self, reason: str) -> None:
        """Fail every request of this connection with `ConnectionLost` and close it."""
        self._lost(reason)
        self.close()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream._on_lost(
                    ConnectionLost(
                        f"edge reset the stream (code {event.error_code})", request_id=stream.request_id
                    )
                )
        elif isinstance(event, events.HandshakeCompleted):
            self.is_connected = True
            self.is_resumed = event.session_resumed
            self.is_early_data_accepted = event.early_data_accepted
            if not self._handshake.done():
                self._handshake.set_result(None)
        elif isinstance(event, events.ConnectionTerminated):
            self._lost(f"{event.reason_phrase or 'terminated'} (code {event.error_code})")

    def _lost(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if not self._handshake.done():
            self._handshake.set_exception(ConnectionLost(f"handshake failed: {reason}"))
            self._handshake.exception()  # retrieved: nobody may be waiting
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._on_lost(ConnectionLost(f"connection lost: {reason}", request_id=stream.request_id))

    def expire_handshake(self, after: float) -> None:
        """Give up on the connection if the handshake has not finished within `after` seconds.

        For 0-RTT, where requests leave before the handshake: without this a dead edge would
        only be noticed at the idle timeout. Its streams see `ConnectionLost` and fail over.
        """

        def check() -> None:
            if not self.is_connected and self.close_reason is None:
                self._lost(f"handshake not finished within {after:g} s")
                self.close()

        self._loop.call_later(after, check)

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def _send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.close_reason is not None:
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (ValueError, AssertionError, RuntimeError):
            # The stream is already finished, or reset (aioquic raises RuntimeError once the edge's
            # STOP_SENDING reset our side): nothing more to say on it.
            return
        self.transmit()

    def _cancel(self, stream_id: int, request_id: str) -> None:
        if self.close_reason is not None:
            return
        self._send(stream_id, encode_frame(Cancel(id=request_id)))  # flushed before the reset
        try:
            self._quic.reset_stream(stream_id, int(ErrorCode.CANCELLED))
            self._quic.stop_stream(stream_id, int(ErrorCode.CANCELLED))
        except (ValueError, RuntimeError):  # the edge already finished or reset the stream
            pass
        self.transmit()

    async def rebind(self) -> int:
        """Move the connection to a fresh UDP socket (a new local port): connection migration.

        Switches to a new connection ID too, so the new path is not linkable to the old one. The
        edge validates the new path and keeps every stream. Returns the new local port.
        """
        loop = asyncio.get_running_loop()
        old = self._transport
        assert old is not None
        old_sock = old.get_extra_info("socket")
        sock = _bound_socket(old_sock.family)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Forwarder(self), sock=sock)
        self._transport = cast(asyncio.DatagramTransport, transport)
        old.close()
        self._quic.change_connection_id()
        self.transmit()
        return int(sock.getsockname()[1])

    def local_port(self) -> int:
        """The UDP port this connection currently sends from."""
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])


class _Forwarder(asyncio.DatagramProtocol):
    """Feeds datagrams of a replacement socket to the connection's protocol."""

    def __init__(self, target: EdgeConnection) -> None:
        self._target = target

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._target.datagram_received(data, addr)


def _bound_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def open_connection(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    on_ticket: Callable[[SessionTicket], None] | None,
) -> EdgeConnection:
    """Start a QUIC connection to `host:port` and return at once, before the handshake.

    With `configuration.session_ticket` set, requests opened before `handshake_done()` travel as
    0-RTT early data. Await `handshake_done()` to wait for the handshake.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, addr = infos[0][0], infos[0][4]
    quic = QuicConnection(configuration=configuration, session_ticket_handler=on_ticket)
    sock = _bound_socket(family)
    try:
        _, protocol = await loop.create_datagram_endpoint(lambda: EdgeConnection(quic), sock=sock)
    except BaseException:
        sock.close()
        raise
    edge = cast(EdgeConnection, protocol)
    edge.connect(addr, transmit=True)
    return edge


async def close_connection(edge: EdgeConnection, grace: float = 1.0) -> None:
    """Close `edge` politely, waiting up to `grace` seconds for the edge to acknowledge."""
    edge.stop_watchdog()
    edge.close()
    try:
        await asyncio.wait_for(edge.wait_closed(), grace)
    except TimeoutError:
        pass
    close_datagram_transport(edge)
