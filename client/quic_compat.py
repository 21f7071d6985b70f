"""The private aioquic attributes the client SDK relies on, in one place.

The client may import only `isthmus.protocol` of ours, so it keeps its own small compat module
rather than sharing the edge's (`edge/quic_compat.py`). Its connection subclasses aioquic's
`QuicConnectionProtocol` and uses the base's protected `_quic`, `_loop` and `_transport`, as
aioquic's own examples do; `tests/client/test_quic_compat.py` pins those names so an aioquic
upgrade that moves them fails there, naming the attribute.
"""

from __future__ import annotations

from aioquic.asyncio.protocol import QuicConnectionProtocol

# what the client's QuicConnectionProtocol subclass uses of its base (checked by the compat test)
# (`_ping_waiters`: the liveness probe's PING is answered through the base's waiter table)
PROTOCOL_ATTRIBUTES = ("_quic", "_loop", "_transport", "_ping_waiters")


def close_datagram_transport(protocol: QuicConnectionProtocol) -> None:
    """Close the UDP socket under `protocol` now (aioquic's `close()` only closes the QUIC side)."""
    transport = protocol._transport
    if transport is not None:
        transport.close()
