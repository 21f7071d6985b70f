"""A migrated request never lands on the replica it left (`ReplicaTrail`): a bare `Export` leaves
that replica serving and healthy, and the pool would otherwise be free to pick it again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from isthmus.edge.migration import MigrationStats, ReplicaTrail, follow_migrations
from isthmus.edge.pool import CenterPool
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

from tests.center.conftest import running_center

pytestmark = pytest.mark.timeout(120)


def test_trail_marks_only_the_replica_that_sent_migrated() -> None:
    trail = ReplicaTrail()
    trail.moved()  # nothing served yet: nothing left
    assert trail.left == set()
    trail.serving = "a:1"
    trail.moved()
    trail.serving = "b:2"
    assert trail.left == {"a:1"}


async def test_follow_migrations_marks_each_source_left() -> None:
    cont = Continuation(text="a", token_ids=pack_ids([7]), tokenizer_fingerprint="f", is_migration=True)
    sampling = SamplingOptions(max_tokens=8, seed=3)
    migrated = Migrated(id="r", prompt_ids=pack_ids([1, 2]), sampling=sampling, continuation=cont)
    trail = ReplicaTrail()
    seen: list[set[str]] = []

    async def open_stream(req: GenerateRequest) -> AsyncIterator[Any]:
        seen.append(set(trail.left))
        trail.serving = f"replica-{len(seen)}"
        if len(seen) < 3:
            yield migrated
            return
        yield TokenChunk(id="r", token_ids=pack_ids([9]), text="b", tier="center")
        yield Done(id="r", finish_reason="length", usage=Usage(prompt_tokens=2, completion_tokens=1),
                   route=Route(tier="center"))

    req = GenerateRequest(id="r", prompt="hi", sampling=SamplingOptions(max_tokens=8))
    msgs = [m async for m in follow_migrations(open_stream, req, stats=MigrationStats(), trail=trail)]
    assert isinstance(msgs[-1], Done)
    assert seen == [set(), {"replica-1"}, {"replica-1", "replica-2"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("trail_llama"), "llama", seed=1)


def _ids(msgs: list[Any]) -> list[int]:
    return [t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)]


async def _exported_midway(
    pool: CenterPool, centers: list[Any], req: GenerateRequest
) -> tuple[list[Any], ReplicaTrail]:
    """Stream ``req``; after 4 ids, a bare `Export` on whichever replica has it (it keeps serving)."""
    trail = ReplicaTrail()
    msgs: list[Any] = []
    source = None
    stream = follow_migrations(lambda r: pool.generate(r, trail), req, stats=MigrationStats(), trail=trail)
    async for msg in stream:
        msgs.append(msg)
        if source is None and len(_ids(msgs)) >= 4:
            source = next(c for c in centers if c.service.in_flight)
            assert isinstance(source.service.export(req.id), Migrated)
    assert source is not None and not source.service.is_draining
    return msgs, trail


async def test_bare_export_resumes_on_another_replica_even_when_the_source_looks_best(tiny: Path) -> None:
    sampling = SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True)
    req = GenerateRequest(id="t", prompt_ids=pack_ids([5, 17, 99, 300, 42]), sampling=sampling)
    async with running_center(tiny) as a, running_center(tiny) as b:
        expected = await a.generate(req)
        ends = [f"127.0.0.1:{a.server.port}", f"127.0.0.1:{b.server.port}"]
        pool = CenterPool(ends, options=PoolOptions(health_interval_s=3600))
        await pool.start()
        pool.set_weight(ends[1], 0.001)  # B looks 1000x as loaded: only the trail keeps A out
        try:
            msgs, trail = await _exported_midway(pool, [a, b], req)
        finally:
            await pool.close()
    assert trail.left == {ends[0]} and trail.serving == ends[1]
    assert isinstance(msgs[-1], Done) and _ids(msgs) == _ids(expected)


async def test_bare_export_with_only_the_source_ends_with_retryable_draining(tiny: Path) -> None:
    sampling = SamplingOptions(max_tokens=200, temperature=0.0, ignore_eos=True)
    req = GenerateRequest(id="alone", prompt_ids=pack_ids([5, 17, 99]), sampling=sampling)
    async with running_center(tiny) as a:
        pool = CenterPool([f"127.0.0.1:{a.server.port}"], options=PoolOptions(health_interval_s=3600))
        await pool.start()
        try:
            msgs, trail = await _exported_midway(pool, [a], req)
        finally:
            await pool.close()
    assert trail.left == {f"127.0.0.1:{a.server.port}"}
    last = msgs[-1]
    assert isinstance(last, Error) and last.code == ErrorCode.DRAINING and last.retryable
    assert 4 <= len(_ids(msgs)) < 200
