"""Every private aioquic attribute the edge reads or writes, in one place.

aioquic (tested: 1.7.x, pinned to that range in pyproject.toml) has no public API for three things the
edge needs: setting the advertised stream limits, counting bytes a stream holds unacknowledged
(the write watermarks in `buffers.py`) or received out of order (the receive budgets), and the
port a `QuicServer` bound. The functions below wrap those reads and writes, so an aioquic upgrade
that moves them breaks here and in `tests/edge/test_quic_compat.py`, which names the attribute,
rather than somewhere in the middle of a request.

Subclasses of `QuicConnectionProtocol` also use its protected `_quic`, `_loop` and
`_transmit_soon`, as aioquic's own examples and HTTP/3 protocols do; the compat test pins those
too (`PROTOCOL_ATTRIBUTES`).
"""

from __future__ import annotations

from typing import Any

from aioquic.asyncio.server import QuicServer
from aioquic.quic.connection import QuicConnection

# what a QuicConnectionProtocol subclass may use of its base (checked by the compat test)
PROTOCOL_ATTRIBUTES = ("_quic", "_loop", "_transmit_soon", "_transport")
# what the functions below read of a QuicConnection, a stream's sender and its receiver
CONNECTION_ATTRIBUTES = (
    "_streams",
    "_local_max_streams_bidi",
    "_local_max_streams_uni",
    "_write_stream_limits",
)
SENDER_ATTRIBUTES = ("_buffer_start", "_buffer_stop")
RECEIVER_ATTRIBUTES = ("_buffer",)
LIMIT_ATTRIBUTES = ("used", "value", "sent")
# what `quic_gate.GatedQuicServer` uses of its base `QuicServer`
SERVER_ATTRIBUTES = ("_configuration", "_protocols", "_transport", "_loop")


def set_local_stream_limits(quic: QuicConnection, max_bidi: int, max_uni: int) -> None:
    """Set the streams the peer may open, before the transport parameters are sent.

    aioquic's `Limit` keeps `value` (what the peer may open, raised by one each time a peer
    stream is discarded) and `sent` (what was last advertised); MAX_STREAMS goes out only once
    `value` passes `sent`, so both must be set (see `quic_limits.set_stream_limits`).
    """
    for limit, num in ((quic._local_max_streams_bidi, max_bidi), (quic._local_max_streams_uni, max_uni)):
        if limit.used:
            raise RuntimeError("stream limits must be set before the peer opens a stream")
        limit.value = limit.sent = num


def freeze_receive_credit(quic: QuicConnection, stream_id: int) -> None:
    """Grant no more flow-control credit (MAX_STREAM_DATA) on `stream_id`.

    aioquic doubles a stream's receive window whenever the peer has used half of it, whatever
    the application thinks of the stream, so a peer that ignores the STOP_SENDING of a refused
    stream could keep sending on it at line rate. Frozen, it can send only what the last window
    allowed. aioquic writes the stream limits in `_write_stream_limits(builder, space, stream)`
    for every stream it holds; the connection's copy of that method is wrapped once to skip
    frozen streams.
    """
    frozen: set[int] | None = getattr(quic, "_isthmus_frozen_streams", None)
    if frozen is None:
        frozen = set()
        original = quic._write_stream_limits

        def write_stream_limits(builder: Any, space: Any, stream: Any) -> None:
            if stream.stream_id not in frozen:
                original(builder=builder, space=space, stream=stream)

        quic._isthmus_frozen_streams = frozen  # type: ignore[attr-defined]
        quic._write_stream_limits = write_stream_limits  # type: ignore[method-assign]
    if len(frozen) > 4096:  # ids of streams aioquic has dropped since: forget them
        frozen.intersection_update(quic._streams)
    frozen.add(stream_id)


def stream_send_buffered(quic: QuicConnection, stream_id: int) -> int:
    """Bytes handed to aioquic on `stream_id` and not yet acknowledged (0 for an unknown stream)."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return _unacked(stream.sender)


def connection_send_buffered(quic: QuicConnection) -> int:
    """The same, summed over every stream aioquic still holds."""
    return sum(_unacked(stream.sender) for stream in quic._streams.values())


def connection_receive_buffered(quic: QuicConnection) -> int:
    """Bytes aioquic holds received but not yet delivered (out-of-order data), over all streams."""
    return sum(len(stream.receiver._buffer) for stream in quic._streams.values())


def num_quic_streams(quic: QuicConnection) -> int:
    """Streams aioquic still holds state for."""
    return len(quic._streams)


def server_port(server: QuicServer) -> int | None:
    """The UDP port `server` is bound to, or None before it is bound or after it closed."""
    transport: Any = server._transport
    if transport is None:
        return None
    return int(transport.get_extra_info("sockname")[1])


def server_cid_length(server: QuicServer) -> int:
    """The length of the connection ids `server` issues (to parse a short header)."""
    return int(server._configuration.connection_id_length)


def server_knows_cid(server: QuicServer, cid: bytes) -> bool:
    """Whether `cid` names a connection `server` holds (else the packet would start a new one)."""
    return cid in server._protocols


def server_send(server: QuicServer, data: bytes, addr: Any) -> None:
    """Send one datagram from `server`'s socket (a stateless reply); nothing when it is closed."""
    transport: Any = server._transport
    if transport is not None:
        transport.sendto(data, addr)


def _unacked(sender: Any) -> int:
    return int(sender._buffer_stop - sender._buffer_start)
