"""Ending or cancelling a stream the edge already reset is a no-op, never an untyped crash.

When the edge refuses a stream (STOP_SENDING and a reset, e.g. a fresh connection over its
pending-stream cap), aioquic marks our sending side reset; a later write raises RuntimeError
("Cannot send data after the stream was reset"). `finish()` after the edge's terminal `Error`
and `cancel()` from a `finally` both write, so they must swallow that.
"""

from __future__ import annotations

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from isthmus.client.connection import ClientStream, EdgeConnection


async def test_finish_and_cancel_after_the_edge_reset_the_stream() -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["isthmus/1"]))
    conn = EdgeConnection(quic)
    conn.transmit = lambda: None  # type: ignore[method-assign]  # no transport in this test
    stream_id = quic.get_next_available_stream_id()
    quic.send_stream_data(stream_id, b"request")
    quic.reset_stream(stream_id, 0)  # what aioquic does when the edge sends STOP_SENDING

    ClientStream(conn, stream_id, "r1").finish()
    ClientStream(conn, stream_id, "r2").cancel()
