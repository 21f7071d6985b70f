"""One long-lived SDK client on one QUIC connection must keep getting stream credit.

Regression: the edge lowered aioquic's bidirectional stream limit without lowering what aioquic
believed it had already advertised, so MAX_STREAMS was never sent again and the 65th request on a
connection stalled until the idle timeout. Each request here gets a stall timeout far below that
idle timeout: a stall fails the test by timing out, not by a speed assertion.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from isthmus.client import connect
from isthmus.edge.quic_server import EdgeQuicServer, QuicLimits
from isthmus.protocol import Done, Error, GenerateRequest, Route, TokenChunk, Usage

from ..client.certs import Certs, make_certs

pytestmark = pytest.mark.timeout(240)

STALL_S = 15.0  # seconds one request may take before it counts as stalled (the idle timeout is 60)


async def echo(req: GenerateRequest) -> AsyncIterator[TokenChunk | Done | Error]:
    yield TokenChunk(id=req.id, text=req.prompt or "", token_ids=b"\x01\x00\x00\x00", tier="edge")
    yield Done(
        id=req.id,
        finish_reason="stop",
        route=Route(tier="edge", reason="wish_edge"),
        usage=Usage(prompt_tokens=1, completion_tokens=1),
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("credit-certs")))


@pytest.fixture
async def server(certs: Certs) -> AsyncIterator[EdgeQuicServer]:
    srv = EdgeQuicServer(
        echo, certfile=certs.cert, keyfile=certs.key, limits=QuicLimits(max_streams_per_connection=64)
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def test_sequential_requests_past_the_stream_limit_do_not_stall(
    server: EdgeQuicServer, certs: Certs
) -> None:
    async with connect(f"127.0.0.1:{server.port}", ca=certs.ca, retries=0) as client:
        for i in range(300):  # well past 64 and 128, where the stalls were
            answer = await asyncio.wait_for(client.complete(f"seq {i}", max_tokens=1), STALL_S)
            assert answer.text == f"seq {i}"
        assert server.num_connections == 1  # all on the one connection: no reconnect hid a stall


async def test_concurrent_requests_on_one_connection_do_not_stall(
    server: EdgeQuicServer, certs: Certs
) -> None:
    async with connect(f"127.0.0.1:{server.port}", ca=certs.ca, retries=0) as client:
        for round_ in range(2):  # the second round needs credit granted back for the first
            answers = await asyncio.wait_for(
                asyncio.gather(*(client.complete(f"c{round_}.{i}", max_tokens=1) for i in range(200))),
                STALL_S * 2,
            )
            assert sorted(a.text for a in answers) == sorted(f"c{round_}.{i}" for i in range(200))
        assert server.num_connections == 1
