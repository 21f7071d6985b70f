"""Connection migration: the client's UDP port changes mid-stream and the stream completes."""

from __future__ import annotations

from isthmus.client import connect

from .certs import Certs
from .fake_edge import FakeEdge


async def test_stream_survives_a_local_port_change(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        info = client.connection_info
        assert info is not None
        old_port = info.local_port
        texts: list[str] = []
        new_port = None
        async for chunk in client.generate("slow:12"):
            texts.append(chunk.text)
            if len(texts) == 3:
                new_port = await client.rebind()
        assert new_port is not None and new_port != old_port
        assert texts == [f"t{i} " for i in range(12)]
        info = client.connection_info
        assert info is not None and info.local_port == new_port
        # the same connection carries on after the move
        assert (await client.complete("hi")).text == "Hello world"
    conn = edge.connections[0]
    assert len(edge.connections) == 1
    assert [addr[1] for addr in conn.peer_addrs] == [old_port, new_port]
    assert conn._quic._network_paths[0].addr[1] == new_port  # the edge validated the new path
