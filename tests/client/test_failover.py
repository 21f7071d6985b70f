"""Several edges, failover before the first token, retries with backoff, never after tokens."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
from isthmus.client import Backoff, ConnectionLost, Draining, Overloaded, Unavailable, connect
from isthmus.protocol import Error as ErrorMsg
from isthmus.protocol import ErrorCode

from .certs import Certs
from .fake_edge import FakeEdge

MakeEdge = Callable[..., Awaitable[FakeEdge]]
FAST = Backoff(base=0.001, cap=0.01, rng=random.Random(0))


async def test_connects_to_first_healthy_edge(make_edge: MakeEdge, certs: Certs, other_certs: Certs) -> None:
    untrusted = await make_edge(other_certs)  # fails the handshake
    good, spare = await make_edge(), await make_edge()
    addrs = [untrusted.address, good.address, spare.address]
    async with connect(addrs, ca=certs.ca, connect_timeout=2.0) as client:
        assert (await client.complete("hi")).text == "Hello world"
        info = client.connection_info
        assert info is not None and info.port == good.port
    assert len(good.requests) == 1 and spare.requests == [] and untrusted.requests == []


async def test_no_healthy_edge_is_unavailable(make_edge: MakeEdge, other_certs: Certs, certs: Certs) -> None:
    bad = await make_edge(other_certs)
    with pytest.raises(Unavailable, match="no edge reachable"):
        async with connect([bad.address], ca=certs.ca, connect_timeout=2.0):
            pass


async def test_fails_over_when_connection_dies_before_first_token(make_edge: MakeEdge, certs: Certs) -> None:
    first, second = await make_edge(), await make_edge()
    async with connect([first.address, second.address], ca=certs.ca, backoff=FAST) as client:
        first.num_drops = 1  # first edge crashes on the request; the second answers it
        answer = await client.complete("hi")
        assert client.connection_info is not None and client.connection_info.port == second.port
        assert client.num_connects == 2
    assert answer.text == "Hello world"
    assert len(first.requests) == 1 and len(second.requests) == 1
    assert first.requests[0].id == second.requests[0].id  # same request, moved


async def test_never_retries_after_tokens_were_yielded(make_edge: MakeEdge, certs: Certs) -> None:
    first, second = await make_edge(), await make_edge()
    async with connect([first.address, second.address], ca=certs.ca, backoff=FAST) as client:
        texts: list[str] = []
        with pytest.raises(ConnectionLost):
            async for chunk in client.generate("drop-after-1"):
                texts.append(chunk.text)
    assert texts == ["Hel"]
    assert second.requests == []


async def test_retryable_error_is_retried_with_backoff(edge: FakeEdge, certs: Certs) -> None:
    for _ in range(2):
        edge.fail_next.append(ErrorMsg(id="", code=ErrorCode.OVERLOADED, message="busy", retryable=True))
    async with connect(edge.address, ca=certs.ca, retries=2, backoff=FAST) as client:
        answer = await client.complete("hi")
    assert answer.text == "Hello world"
    assert len(edge.requests) == 3


async def test_retries_are_bounded(edge: FakeEdge, certs: Certs) -> None:
    for _ in range(5):
        edge.fail_next.append(ErrorMsg(id="", code=ErrorCode.OVERLOADED, message="busy", retryable=True))
    async with connect(edge.address, ca=certs.ca, retries=1, backoff=FAST) as client:
        with pytest.raises(Overloaded) as info:
            await client.complete("hi")
    assert info.value.retryable
    assert len(edge.requests) == 2


async def test_retryable_flag_of_the_wire_wins(edge: FakeEdge, certs: Certs) -> None:
    edge.fail_next.append(ErrorMsg(id="", code=ErrorCode.OVERLOADED, message="busy", retryable=False))
    async with connect(edge.address, ca=certs.ca, retries=3, backoff=FAST) as client:
        with pytest.raises(Overloaded):
            await client.complete("hi")
    assert len(edge.requests) == 1


async def test_draining_edge_moves_to_the_next(make_edge: MakeEdge, certs: Certs) -> None:
    first, second = await make_edge(), await make_edge()
    first.fail_next.append(ErrorMsg(id="", code=ErrorCode.DRAINING, message="bye", retryable=True))
    async with connect([first.address, second.address], ca=certs.ca, backoff=FAST) as client:
        assert (await client.complete("hi")).text == "Hello world"
    assert len(second.requests) == 1


async def test_draining_without_retries_raises(edge: FakeEdge, certs: Certs) -> None:
    edge.fail_next.append(ErrorMsg(id="", code=ErrorCode.DRAINING, message="bye", retryable=True))
    async with connect(edge.address, ca=certs.ca, retries=0) as client:
        with pytest.raises(Draining):
            await client.complete("hi")
