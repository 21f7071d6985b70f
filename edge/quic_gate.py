"""aioquic's `QuicServer` with a `SourceGate` in front: blocked sources are refused at their first
Initial packet, before a connection (and its TLS handshake) exists.

aioquic creates a connection for every Initial packet of an unknown connection id and runs the
full TLS handshake on it; refusing a throttled source after that (as `EdgeQuicServer._admit`
does) still costs the edge a key exchange and a signature per attempt, which a client that
reconnects at once turns into a CPU flood. Here a datagram from a blocked address is looked at
before aioquic: one that belongs to a connection the source already holds passes (a proven
client behind the same address keeps its connection), a new connection's Initial gets a
stateless CONNECTION_CLOSE (CONNECTION_REFUSED, with the reason and the wait) at most once per
`reply_interval_s`, anything else is dropped.
"""

from __future__ import annotations

from typing import Any

from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder

from .quic_compat import server_cid_length, server_knows_cid, server_send
from .source_gate import SourceGate, Verdict

MAX_REASON_BYTES = 200  # bytes of the refusal's reason phrase


def encode_initial_refusal(version: int, client_dcid: bytes, client_scid: bytes, reason: str) -> bytes:
    """A server Initial packet closing the connection attempt with CONNECTION_REFUSED and `reason`.

    Stateless: Initial keys derive from the client's destination connection id, so no connection
    is created (the same construction aioquic uses for its INVALID_TOKEN close).
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=client_dcid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=client_dcid,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
        peer_cid=client_scid,
        version=version,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    reason_bytes = reason.encode("utf-8")[:MAX_REASON_BYTES]
    buf = builder.start_frame(
        QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY + len(reason_bytes)
    )
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(len(reason_bytes))
    buf.push_bytes(reason_bytes)
    datagrams, _ = builder.flush()
    return bytes(datagrams[0])


class GatedQuicServer(QuicServer):
    """A `QuicServer` that asks `gate` about each datagram from a blocked source first."""

    def __init__(self, *, gate: SourceGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        source = str(addr[0]) if isinstance(addr, tuple) and addr else ""
        if self.gate.blocked_for(source, self._loop.time()) > 0.0 and not self._passes(data, addr, source):
            return
        super().datagram_received(data, addr)

    def _passes(self, data: bytes | str, addr: Any, source: str) -> bool:
        """A datagram from a blocked source: True if it belongs to a connection it holds."""
        if not isinstance(data, bytes):
            return False
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=server_cid_length(self))
        except ValueError:
            return False
        if server_knows_cid(self, header.destination_cid):
            return True
        if header.packet_type != QuicPacketType.INITIAL or header.version is None:
            self.gate.num_dropped += 1
            return False
        now = self._loop.time()
        if self.gate.verdict(source, now) is Verdict.REPLY:
            packet = encode_initial_refusal(
                header.version, header.destination_cid, header.source_cid, self.gate.reason(source, now)
            )
            server_send(self, packet, addr)
        return False
