"""Soak: 200 concurrent streams through ONE shared SDK client against a real edge + center.

Short variant (CI): ~60 s. ``ISTHMUS_SOAK_LONG=1``: 10 minutes. Every greedy answer is checked
against a direct engine run of the same prompt on the same checkpoint (the tier that answered).
Figures: requests, outcomes, p50/p99 first-token latency, the edge's RSS at start and end.
"""

from __future__ import annotations

import os

import pytest
from isthmus.client import connect

from .conftest import API_KEY, Network, pick, record
from .load import References, run_load

DURATION_S = float(os.environ.get("ISTHMUS_SOAK_SECONDS", 0)) or pick(60.0, 600.0)  # seconds of load
CONCURRENCY = 200  # streams in flight on the one client
pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(pick(300, 1200))]


async def test_soak_200_streams_one_shared_client(
    shared_net: Network, refs: References, certs: tuple[str, str]
) -> None:
    edge = shared_net["edge-shared"]
    rss_start = edge.rss()
    async with connect(edge.address, api_key=API_KEY, ca=certs[0], timeout=None) as client:
        stats = await run_load(client, refs, concurrency=CONCURRENCY, duration_s=DURATION_S, hang_s=120.0)
        num_connects = client.num_connects
    rss_end = edge.rss()
    record(
        "soak",
        {
            "concurrency": CONCURRENCY,
            "duration_s": DURATION_S,
            **stats.summary(),
            "client_connections": num_connects,
            "edge_rss_start_mb": round(rss_start / 2**20, 1),
            "edge_rss_end_mb": round(rss_end / 2**20, 1),
        },
    )
    assert edge.is_alive(), edge.tail()
    assert stats.num_started > CONCURRENCY
    assert stats.outcomes["ok"] == stats.num_started, stats.summary()
    assert num_connects == 1  # one shared connection carried it all
