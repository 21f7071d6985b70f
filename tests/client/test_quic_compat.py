"""The aioquic attributes in `client/quic_compat.py` still exist (an upgrade that moves one fails here)."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from isthmus.client import quic_compat


async def test_protocol_base_attributes_exist() -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["isthmus/1"]))
    protocol = QuicConnectionProtocol(quic)
    missing = [name for name in quic_compat.PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)]
    if missing:
        pytest.fail(
            f"aioquic {version('aioquic')} has no QuicConnectionProtocol.{', '.join(missing)}: "
            "client/quic_compat.py relies on it; adapt it or keep the pin in pyproject.toml"
        )


async def test_close_datagram_transport_closes_the_socket_and_tolerates_none() -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["isthmus/1"]))
    protocol = QuicConnectionProtocol(quic)
    quic_compat.close_datagram_transport(protocol)  # not connected yet: nothing to close

    class Transport:
        is_closed = False

        def close(self) -> None:
            self.is_closed = True

    transport = Transport()
    protocol._transport = transport  # type: ignore[assignment]
    quic_compat.close_datagram_transport(protocol)
    assert transport.is_closed
