"""The private aioquic attributes in `edge/quic_compat.py` still exist and mean what we assume.

If an aioquic upgrade fails here, the message names the attribute that moved: adapt
`edge/quic_compat.py` (and the pin in pyproject.toml), nothing else.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from isthmus.edge import quic_compat
from isthmus.edge.quic_limits import set_stream_limits

AIOQUIC = version("aioquic")


def _client_quic() -> QuicConnection:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["isthmus/1"]))
    quic.connect(("127.0.0.1", 4433), now=0.0)  # no socket: only builds the initial flight
    return quic


def _require(obj: Any, names: tuple[str, ...], where: str) -> None:
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        pytest.fail(
            f"aioquic {AIOQUIC} has no {where}.{', '.join(missing)}: edge/quic_compat.py relies on it; "
            "adapt that module to this aioquic or keep the pin in pyproject.toml"
        )


def test_connection_stream_and_limit_attributes_exist() -> None:
    quic = _client_quic()
    _require(quic, quic_compat.CONNECTION_ATTRIBUTES, "QuicConnection")
    limit = quic._local_max_streams_bidi
    _require(limit, quic_compat.LIMIT_ATTRIBUTES, "QuicConnection._local_max_streams_bidi")
    stream_id = quic.get_next_available_stream_id()
    quic.send_stream_data(stream_id, b"x")
    stream = quic._streams[stream_id]
    _require(stream.sender, quic_compat.SENDER_ATTRIBUTES, "QuicStreamSender")
    _require(stream.receiver, quic_compat.RECEIVER_ATTRIBUTES, "QuicStreamReceiver")


async def test_protocol_base_attributes_exist() -> None:
    protocol = QuicConnectionProtocol(_client_quic())
    _require(protocol, quic_compat.PROTOCOL_ATTRIBUTES, "QuicConnectionProtocol")


def test_server_transport_attribute_exists() -> None:
    if "_transport" not in QuicServer.__init__.__code__.co_names:
        pytest.fail(f"aioquic {AIOQUIC}: QuicServer.__init__ no longer sets _transport (see server_port)")


async def test_server_attributes_the_gate_uses_exist() -> None:
    server = QuicServer(configuration=QuicConfiguration(is_client=False))
    _require(server, quic_compat.SERVER_ATTRIBUTES, "QuicServer")
    assert quic_compat.server_cid_length(server) == 8
    assert not quic_compat.server_knows_cid(server, b"12345678")
    quic_compat.server_send(server, b"x", ("127.0.0.1", 9))  # no transport yet: nothing sent


def test_send_buffered_counts_unacknowledged_bytes() -> None:
    quic = _client_quic()
    first = quic.get_next_available_stream_id()
    quic.send_stream_data(first, b"a" * 100)
    second = quic.get_next_available_stream_id()
    quic.send_stream_data(second, b"b" * 30, end_stream=True)
    assert quic_compat.stream_send_buffered(quic, first) == 100
    assert quic_compat.stream_send_buffered(quic, second) == 30
    assert quic_compat.stream_send_buffered(quic, 999) == 0  # unknown stream
    assert quic_compat.connection_send_buffered(quic) == 130
    assert quic_compat.connection_receive_buffered(quic) == 0
    assert quic_compat.num_quic_streams(quic) == 2


def test_stream_limits_set_both_value_and_sent() -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["isthmus/1"]))
    set_stream_limits(quic, 7)
    bidi, uni = quic._local_max_streams_bidi, quic._local_max_streams_uni
    assert (bidi.value, bidi.sent, uni.value, uni.sent) == (7, 7, 0, 0)


def test_stream_limits_refused_once_a_stream_was_used() -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["isthmus/1"]))
    quic._local_max_streams_bidi.used = 1
    with pytest.raises(RuntimeError, match="before the peer opens a stream"):
        quic_compat.set_local_stream_limits(quic, 4, 0)


def test_server_port_none_before_bound() -> None:
    server = QuicServer.__new__(QuicServer)
    server._transport = None
    assert quic_compat.server_port(server) is None
