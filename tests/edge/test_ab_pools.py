"""Runtime pool changes and the A/B pools, against fake center replicas on loopback (gRPC)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from isthmus.edge.ab_pools import AbPools
from isthmus.edge.ab_split import AbSplit
from isthmus.edge.metrics import Metrics
from isthmus.edge.pool import CenterPool, CenterUnavailable
from isthmus.protocol import Done, GenerateRequest, Route, TokenChunk

from .test_pool import FakeCenter, collect, make

pytestmark = pytest.mark.timeout(60)


class GatedCenter(FakeCenter):
    """One chunk, then waits for `gate` before its `Done`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()

    async def generate(self, req: GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.requests.append(req)
        yield TokenChunk(id=req.id, text=self.name, tier="center")
        await self.gate.wait()
        yield Done(id=req.id, finish_reason="stop", route=Route(tier="center"), model=self.name)


def request(id: str, user: str | None = None, key: str | None = None) -> GenerateRequest:
    return GenerateRequest(id=id, prompt="hello", tier="center", user=user, api_key=key)


async def test_removed_replica_takes_no_new_request_and_finishes_its_in_flight_one() -> None:
    a, b = GatedCenter("a"), FakeCenter("b")
    pool = await make(a, b)
    try:
        pool.set_weight(b.endpoint, 0)  # everything to a for now
        stream = pool.generate(request("long"))
        first = await anext(stream)
        assert isinstance(first, TokenChunk) and first.text == "a"
        pool.set_weight(b.endpoint, 1)
        pool.remove_replica(a.endpoint)
        assert pool.num_retiring == 1
        for i in range(5):
            msgs = await collect(pool, request(f"new{i}"))
            assert isinstance(msgs[-1], Done) and msgs[-1].model == "b"
        a.gate.set()
        rest = [m async for m in stream]
        assert isinstance(rest[-1], Done) and rest[-1].model == "a"  # the in-flight answer finished
        assert len(a.requests) == 1
        for _ in range(100):
            if pool.num_retiring == 0:
                break
            await asyncio.sleep(0.05)
        assert pool.num_retiring == 0  # its channel closed once the answer was done
    finally:
        await pool.close()
        await asyncio.gather(a.stop(), b.stop())


async def test_weight_zero_stops_new_requests_and_bad_changes_are_refused() -> None:
    a, b = FakeCenter("a"), FakeCenter("b")
    pool = await make(a, b)
    try:
        pool.set_weight(a.endpoint, 0)
        for i in range(4):
            assert (await collect(pool, request(f"r{i}")))[-1].model == "b"
        with pytest.raises(ValueError, match="weight"):
            pool.set_weight(b.endpoint, -1)
        with pytest.raises(ValueError, match="endpoint"):
            pool.add_replica(b.endpoint)
        with pytest.raises(ValueError, match="endpoint"):
            pool.remove_replica("127.0.0.1:1")
    finally:
        await pool.close()
        await asyncio.gather(a.stop(), b.stop())


async def test_ab_pools_keep_each_user_on_one_variant_and_count_per_variant() -> None:
    s, c = FakeCenter("stable"), FakeCenter("candidate")
    stable, candidate = await make(s), await make(c)
    metrics = Metrics()
    ab = AbPools(stable, candidate, AbSplit(percent=50, salt="t"), metrics=metrics)
    seen: list[tuple[str, bool]] = []
    ab.observers.append(lambda variant, is_error, ttft_s: seen.append((variant, is_error)))
    try:
        served: dict[str, set[str]] = {}
        for i in range(60):
            user = f"user{i % 12}"
            stream = ab.generate(request(f"r{i}", user=user))
            first = await anext(stream)
            assert isinstance(first, TokenChunk)
            variant = ab.variant_for(request(f"r{i}", user=user))
            rest = [m async for m in stream]
            assert rest[-1].model == variant  # the fake center is named after its variant
            served.setdefault(user, set()).add(variant)
        assert all(len(v) == 1 for v in served.values())
        assert {v for vs in served.values() for v in vs} == {"stable", "candidate"}
        text = metrics.render().decode()
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("isthmus_edge_ab_requests_total{")
        )
        assert total == 60 and 'isthmus_edge_ab_ttft_seconds_count{variant="candidate"}' in text
        assert len(seen) == 60 and not any(err for _, err in seen)
    finally:
        await asyncio.gather(stable.close(), candidate.close())
        await asyncio.gather(s.stop(), c.stop())


async def test_an_unreachable_candidate_counts_as_a_candidate_error() -> None:
    s = FakeCenter("stable")
    stable = await make(s)
    candidate = CenterPool(["127.0.0.1:1"])
    await candidate.start()
    metrics = Metrics()
    ab = AbPools(stable, candidate, AbSplit(percent=100), metrics=metrics)
    seen: list[tuple[str, bool]] = []
    ab.observers.append(lambda variant, is_error, ttft_s: seen.append((variant, is_error)))
    try:
        with pytest.raises(CenterUnavailable):
            await collect(ab, request("x", key="k"))  # type: ignore[arg-type]
        assert seen == [("candidate", True)]
        assert 'isthmus_edge_ab_errors_total{variant="candidate"} 1.0' in metrics.render().decode()
    finally:
        await asyncio.gather(stable.close(), candidate.close())
        await s.stop()
