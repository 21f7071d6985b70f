"""Edge side of live migration: `follow_migrations` with fake streams, then through a real
`CenterPool` over loopback gRPC with two tiny-model center replicas and a migrating drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from isthmus.center.auth import AdminPolicy
from isthmus.edge.metrics import Metrics
from isthmus.edge.migration import MigrationCollector, MigrationStats, follow_migrations, resume_request
from isthmus.edge.pool import CenterPool, CenterUnavailable
from isthmus.edge.replica import PoolOptions
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import (
    Continuation,
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    Migrated,
    Route,
    SamplingOptions,
    TokenChunk,
    Usage,
    pack_ids,
    unpack_ids,
)

from tests.center.conftest import ADMIN_TOKEN, running_center

pytestmark = pytest.mark.timeout(120)

REQ = GenerateRequest(id="r", prompt="hi", sampling=SamplingOptions(max_tokens=8))
ROUTE = Route(tier="center")
MIGRATED = Migrated(
    id="r", prompt_ids=pack_ids([1, 2]), sampling=SamplingOptions(max_tokens=8, seed=3),
    continuation=Continuation(
        text="ab", token_ids=pack_ids([7, 8]), tokenizer_fingerprint="f", is_migration=True
    ),
)


def _chunk(ids: list[int], text: str) -> TokenChunk:
    return TokenChunk(id="r", token_ids=pack_ids(ids), text=text, tier="center")


class Script:
    """open_stream fake: the n-th call streams the n-th script (an exception is raised instead)."""

    def __init__(self, *scripts: list[Any] | Exception) -> None:
        self.scripts, self.requests = list(scripts), list[GenerateRequest]()

    async def __call__(self, req: GenerateRequest) -> AsyncIterator[Any]:
        self.requests.append(req)
        script = self.scripts.pop(0)
        if isinstance(script, Exception):
            raise script
        for msg in script:
            yield msg


async def _all(script: Script, stats: MigrationStats) -> list[Any]:
    return [m async for m in follow_migrations(script, REQ, stats=stats, timeout_ms=lambda: 5000)]


async def test_a_migrated_stream_goes_on_with_the_exported_state() -> None:
    stats = MigrationStats()
    script = Script([_chunk([7], "a"), _chunk([8], "b"), MIGRATED],
                    [_chunk([9], "c"), Done(id="r", finish_reason="length", route=ROUTE, usage=Usage(2, 1))])
    msgs = await _all(script, stats)
    assert [m.text for m in msgs if isinstance(m, TokenChunk)] == ["a", "b", "c"]
    assert isinstance(msgs[-1], Done) and msgs[-1].usage.completion_tokens == 3  # 2 on A + 1 on B
    resumed = script.requests[1]
    assert resumed == resume_request(REQ, MIGRATED, 5000)
    assert resumed.prompt is None and resumed.prompt_ids == MIGRATED.prompt_ids
    assert resumed.continuation == MIGRATED.continuation and resumed.sampling.seed == 3
    assert (stats.started, stats.finished, stats.failed) == (1, 1, 0)


@pytest.mark.parametrize(
    "second",
    [CenterUnavailable("no healthy center replica"),
     [Error(id="r", code=ErrorCode.DRAINING, message="center is draining", retryable=True)]],
    ids=["no-replica", "all-refuse"],
)
async def test_no_replica_to_go_on_ends_with_retryable_draining(second: Any) -> None:
    stats = MigrationStats()
    msgs = await _all(Script([_chunk([7], "a"), MIGRATED], second), stats)
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DRAINING and msgs[-1].retryable
    assert len(msgs) == 2 and (stats.started, stats.failed) == (1, 1)


async def test_first_stream_failure_propagates_and_endless_moves_stop() -> None:
    with pytest.raises(CenterUnavailable):
        await _all(Script(CenterUnavailable("none")), MigrationStats())
    stats = MigrationStats()
    msgs = await _all(Script(*([[MIGRATED]] * 6)), stats)
    assert len(msgs) == 1 and isinstance(msgs[0], Error) and msgs[0].code == ErrorCode.DRAINING


def test_stats_render_as_prometheus_counters_and_histogram() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    stats = MigrationStats()
    stats.record_start()
    stats.record_start()
    stats.record_finish(0.04)
    stats.record_failure()
    registry = CollectorRegistry()
    registry.register(MigrationCollector(stats, "t"))
    text = generate_latest(registry).decode()
    assert 't_migrations_total{outcome="started"} 2.0' in text
    assert 't_migrations_total{outcome="failed"} 1.0' in text
    assert 't_migration_stall_seconds_bucket{le="0.025"} 0.0' in text
    assert 't_migration_stall_seconds_bucket{le="0.05"} 1.0' in text
    assert "t_migration_stall_seconds_sum 0.04" in text
    assert b"isthmus_edge_migrations_total" in Metrics().render()  # every edge node exports them


# --- real replicas ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("mig_llama"), "llama", seed=1)


def _ids(msgs: list[Any]) -> list[int]:
    return [t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)]


async def _drained_midway(pool: CenterPool, centers: list[Any], req: GenerateRequest) -> list[Any]:
    """Stream ``req`` through the pool; once 4 ids came, drain (migrate) whichever replica has it."""
    msgs: list[Any] = []
    drained = False
    async for msg in follow_migrations(pool.generate, req, stats=MigrationStats()):
        msgs.append(msg)
        if not drained and len(_ids(msgs)) >= 4:
            drained = True
            holder = next(c for c in centers if c.service.in_flight)
            assert await holder.server.drain(grace_s=5.0, migrate=True) == 1
    assert drained
    return msgs


@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "seeded"])
async def test_migrating_drain_continues_on_the_other_replica(tiny: Path, temperature: float) -> None:
    policy = AdminPolicy(token=ADMIN_TOKEN)
    sampling = SamplingOptions(max_tokens=32, temperature=temperature, seed=11, ignore_eos=True)
    req = GenerateRequest(id="d", prompt_ids=pack_ids([5, 17, 99, 300, 42]), sampling=sampling)
    async with running_center(tiny, admin=policy) as a, running_center(tiny, admin=policy) as b:
        expected = await a.generate(req)
        pool = CenterPool([f"127.0.0.1:{a.server.port}", f"127.0.0.1:{b.server.port}"],
                          options=PoolOptions(health_interval_s=3600))
        await pool.start()
        try:
            msgs = await _drained_midway(pool, [a, b], req)
        finally:
            await pool.close()
    assert isinstance(msgs[-1], Done) and msgs[-1].usage.completion_tokens == 32
    assert _ids(msgs) == _ids(expected)
    assert "".join(m.text for m in msgs if isinstance(m, TokenChunk)) == "".join(
        m.text for m in expected if isinstance(m, TokenChunk))


async def test_migrating_drain_without_another_replica_is_retryable_draining(tiny: Path) -> None:
    sampling = SamplingOptions(max_tokens=200, temperature=0.0, ignore_eos=True)
    req = GenerateRequest(id="alone", prompt_ids=pack_ids([5, 17, 99]), sampling=sampling)
    async with running_center(tiny, admin=AdminPolicy(token=ADMIN_TOKEN)) as a:
        pool = CenterPool([f"127.0.0.1:{a.server.port}"], options=PoolOptions(health_interval_s=3600))
        await pool.start()
        try:
            msgs = await asyncio.wait_for(_drained_midway(pool, [a], req), timeout=60)
        finally:
            await pool.close()
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DRAINING and msgs[-1].retryable
    assert 4 <= len(_ids(msgs)) < 200
