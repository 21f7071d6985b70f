"""A killed edge (silent: no CONNECTION_CLOSE) is noticed by the liveness probe, not after QUIC's
60 s idle timeout: unanswered requests fail over, cut answers raise `ConnectionLost`; a slow but
live edge is left alone."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest
from isthmus.client import Backoff, ConnectionLost, connect

from .certs import Certs
from .fake_edge import FakeEdge

MakeEdge = Callable[..., Awaitable[FakeEdge]]
FAST = Backoff(base=0.001, cap=0.01, rng=random.Random(0))
pytestmark = pytest.mark.timeout(60)


async def _until(pred: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not pred():
            await asyncio.sleep(0.01)


async def test_request_waiting_on_a_vanished_edge_moves_to_the_next(
    make_edge: MakeEdge, certs: Certs
) -> None:
    first, second = await make_edge(), await make_edge()
    first.is_silent = True
    addrs = [first.address, second.address]
    async with connect(addrs, ca=certs.ca, backoff=FAST, liveness_timeout=1.0) as client:
        task = asyncio.create_task(client.complete("hi"))
        await _until(lambda: len(first.requests) == 1)
        first.vanish()
        started = time.monotonic()
        answer = await asyncio.wait_for(task, 15)
        waited = time.monotonic() - started
        assert client.num_connects == 2
    assert answer.text == "Hello world"
    assert second.requests[0].id == first.requests[0].id
    assert waited < 15  # bounded by the wait_for above; QUIC's idle timeout alone would be 60 s


async def test_answer_cut_by_a_vanished_edge_raises_connection_lost(
    make_edge: MakeEdge, certs: Certs
) -> None:
    first, second = await make_edge(), await make_edge()
    async with connect([first.address, second.address], ca=certs.ca, liveness_timeout=1.0) as client:
        texts: list[str] = []
        with pytest.raises(ConnectionLost, match="did not answer a ping"):
            async with asyncio.timeout(15):
                async for chunk in client.generate("slow:400"):
                    texts.append(chunk.text)
                    if len(texts) == 1:
                        first.vanish()
        assert texts and len(texts) < 400
        assert (await client.complete("hi")).text == "Hello world"  # next request: next edge
    assert [r.prompt for r in second.requests] == ["hi"]


async def test_a_slow_live_edge_is_not_declared_dead(make_edge: MakeEdge, certs: Certs) -> None:
    edge = await make_edge(chunk_delay=1.2)  # silent longer than the probe threshold between chunks
    async with connect(edge.address, ca=certs.ca, liveness_timeout=0.8) as client:
        answer = await client.complete("hi")
        assert client.num_connects == 1
    assert answer.text == "Hello world"


def test_liveness_timeout_must_be_positive() -> None:
    from isthmus.client import Client
    from isthmus.client.address import parse_addresses

    with pytest.raises(ValueError, match="liveness_timeout"):
        Client(parse_addresses("127.0.0.1:1"), liveness_timeout=0)
