"""0-RTT: session tickets are kept and a resumed connection sends its request as early data."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from isthmus.client import FileTicketStore, MemoryTicketStore, connect

from .certs import Certs
from .fake_edge import FakeEdge, LatencyProxy

MakeEdge = Callable[..., Awaitable[FakeEdge]]
ONE_WAY_DELAY = 0.05  # seconds: injected each way, so one round trip is 100 ms


async def test_resumed_connection_sends_request_as_early_data(edge: FakeEdge, certs: Certs) -> None:
    store = MemoryTicketStore()
    async with connect(edge.address, ca=certs.ca, ticket_store=store) as client:
        await client.complete("cold")
        info = client.connection_info
        assert info is not None and not info.is_resumed
    assert len(store) >= 1  # the edge issued a ticket
    async with connect(edge.address, ca=certs.ca, ticket_store=store) as client:
        answer = await client.complete("warm")
        info = client.connection_info
        assert info is not None and info.is_resumed and info.is_early_data_accepted
    assert answer.text == "Hello world"
    cold_id, warm_id = (r.id for r in edge.requests)
    assert edge.early_request_ids == [warm_id]  # the edge read it before the handshake finished
    assert cold_id not in edge.early_request_ids


async def test_early_data_can_be_turned_off(edge: FakeEdge, certs: Certs) -> None:
    store = MemoryTicketStore()
    async with connect(edge.address, ca=certs.ca, ticket_store=store) as client:
        await client.complete("cold")
    async with connect(edge.address, ca=certs.ca, ticket_store=store, early_data=False) as client:
        await client.complete("resumed, 1-RTT")
        info = client.connection_info
        assert info is not None and info.is_resumed
    assert edge.early_request_ids == []


async def test_file_ticket_store_survives_the_client(edge: FakeEdge, certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    async with connect(edge.address, ca=certs.ca, ticket_store=FileTicketStore(path)) as client:
        await client.complete("cold")
    assert path.stat().st_mode & 0o077 == 0  # resumption secrets: owner only
    async with connect(edge.address, ca=certs.ca, ticket_store=FileTicketStore(path)) as client:
        await client.complete("warm")
    assert edge.early_request_ids == [edge.requests[1].id]


async def test_corrupt_ticket_file_is_ignored(edge: FakeEdge, certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    path.write_text("{not json")
    async with connect(edge.address, ca=certs.ca, ticket_store=FileTicketStore(path)) as client:
        assert (await client.complete("hi")).text == "Hello world"


async def _time_to_first_token(address: str, certs: Certs, store: MemoryTicketStore) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with connect(address, ca=certs.ca, ticket_store=store) as client:
        async for _chunk in client.generate("hi"):
            first = loop.time() - start
            break
        await asyncio.sleep(0.3)  # let the new ticket arrive through the slow path
    return first


async def test_resumed_first_token_arrives_a_round_trip_sooner(edge: FakeEdge, certs: Certs) -> None:
    # With 100 ms of injected RTT, a cold request needs the handshake round trip and then the
    # request round trip; a 0-RTT one needs only the second. The gap is structural (one RTT), so
    # half an RTT of margin does not flake on a busy machine.
    proxy = await LatencyProxy(edge.port, ONE_WAY_DELAY).start()
    try:
        store = MemoryTicketStore()
        address = f"127.0.0.1:{proxy.port}"
        cold = await _time_to_first_token(address, certs, store)
        warm = await _time_to_first_token(address, certs, store)
    finally:
        proxy.close()
    assert cold >= 4 * ONE_WAY_DELAY  # two round trips
    assert warm < cold - ONE_WAY_DELAY
    assert edge.early_request_ids == [edge.requests[1].id]


async def test_0rtt_to_a_dead_edge_fails_over_after_connect_timeout(
    make_edge: MakeEdge, certs: Certs
) -> None:
    gone, good = await make_edge(), await make_edge()
    store = MemoryTicketStore()
    async with connect(gone.address, ca=certs.ca, ticket_store=store) as client:
        await client.complete("cold")  # leaves a ticket for `gone`
    gone_address = gone.address
    gone.close()
    async with connect(
        [gone_address, good.address], ca=certs.ca, ticket_store=store, connect_timeout=0.3
    ) as client:
        answer = await client.complete("hi")  # sent as 0-RTT to `gone`, then moved to `good`
        info = client.connection_info
        assert info is not None and info.port == good.port
    assert answer.text == "Hello world"
    assert len(good.requests) == 1
