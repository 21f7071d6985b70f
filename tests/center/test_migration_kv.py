"""Live migration with KV-block transfer between two center replicas over real gRPC on loopback.

Replica A exports a running request with its KV cache (`Continuation.kv`); replica B writes the
KV into its own cache and computes only the last token: the joined answer is token- and
text-identical to an unmigrated one. A payload B cannot use is dropped and B recomputes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from isthmus.center.auth import AdminPolicy, admin_metadata
from isthmus.center.kv_migration import KVPolicy
from isthmus.edge.migration import resume_request
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import (
    Done,
    Error,
    ExportRequest,
    GenerateRequest,
    Migrated,
    SamplingOptions,
    TokenChunk,
    pack_ids,
    rpc,
    unpack_ids,
)

from tests.center.conftest import ADMIN_TOKEN, Center, running_center

PROMPT = pack_ids([5, 17, 99, 300, 42, 7, 8])
ADMIN = admin_metadata(ADMIN_TOKEN)
POLICY = AdminPolicy(token=ADMIN_TOKEN)


def _ids(msgs: list[Any]) -> list[int]:
    return [t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)]


def _text(msgs: list[Any]) -> str:
    return "".join(m.text for m in msgs if isinstance(m, TokenChunk))


async def _migrated_run(
    a: Center, b: Center, req: GenerateRequest, after: int
) -> tuple[list[Any], list[Any]]:
    """A's messages (ending in Migrated) and B's, exporting once A sent ``after`` ids."""
    first: list[Any] = []
    reply = None
    async for msg in a.generate_call(req):
        first.append(msg)
        if reply is None and len(_ids(first)) >= after:
            reply = await a.unary(rpc.EXPORT, ExportRequest(id=req.id), metadata=ADMIN)
            assert isinstance(reply, Migrated), reply
    assert isinstance(first[-1], Migrated) and first[-1] == reply
    second = await b.generate(resume_request(req, first[-1]))
    return first, second


def _imports(c: Center) -> int:
    return int(c.engine.core.scheduler.num_kv_imports)


def _all_free(c: Center) -> bool:
    load = c.engine.load()
    return bool(load.num_free_kv_blocks == load.num_total_kv_blocks)


@pytest.fixture
async def pair(tp_llama: Path) -> Any:
    async with running_center(tp_llama, admin=POLICY) as a, running_center(tp_llama, admin=POLICY) as b:
        a.service.kv_policy = KVPolicy(mode="kv")
        yield a, b


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingOptions(max_tokens=40, temperature=0.0, ignore_eos=True),
        SamplingOptions(max_tokens=40, temperature=0.9, top_p=0.95, seed=77, ignore_eos=True),
        SamplingOptions(max_tokens=40, temperature=1.0, presence_penalty=0.8, seed=5, ignore_eos=True),
        SamplingOptions(max_tokens=40, temperature=1.0, ignore_eos=True),  # seed drawn by A
    ],
    ids=["greedy", "seeded", "seeded-penalty", "unseeded"],
)
async def test_kv_migrated_answer_is_identical(
    pair: tuple[Center, Center], sampling: SamplingOptions
) -> None:
    a, b = pair
    req = GenerateRequest(id="kv", prompt_ids=PROMPT, sampling=sampling)
    first, second = await _migrated_run(a, b, req, after=5)
    migrated = first[-1]
    kv = migrated.continuation.kv
    n = len(unpack_ids(migrated.prompt_ids)) + len(unpack_ids(migrated.continuation.token_ids)) - 1
    assert kv is not None and kv.num_tokens == n and kv.dtype == "float32" and kv.tp_size == 1
    assert _imports(b) == 1  # B wrote the KV and computed one token: no prefill of the context
    assert isinstance(second[-1], Done) and second[-1].finish_reason == "length"
    resumed = GenerateRequest(id="ref", prompt_ids=PROMPT, sampling=migrated.sampling)  # A's seed
    whole = await b.generate(resumed)
    assert _ids(first) + _ids(second) == _ids(whole) and len(_ids(whole)) == 40
    assert _text(first) + _text(second) == _text(whole)
    assert _all_free(a) and not a.service.in_flight


async def test_stop_string_spanning_the_kv_migration_point(pair: tuple[Center, Center]) -> None:
    a, b = pair
    plain = SamplingOptions(max_tokens=64, temperature=0.0, ignore_eos=True)
    whole = await b.generate(GenerateRequest(id="ref", prompt_ids=PROMPT, sampling=plain))
    chunks = [m.text for m in whole if isinstance(m, TokenChunk)]
    start = len("".join(chunks[:2]))  # the stop string starts in the 3rd token's text ...
    text = "".join(chunks)
    stop = text[start : start + 100]  # ... and runs far past where A is stopped
    assert len(text) > start + 100 and text.find(stop) == start, "the tiny model's answer does not suit"
    stopping = SamplingOptions(max_tokens=64, temperature=0.0, ignore_eos=True, stop=[stop])
    req = GenerateRequest(id="stop", prompt_ids=PROMPT, sampling=stopping)
    expected = await b.generate(req)
    first, second = await _migrated_run(a, b, req, after=5)
    assert first[-1].continuation.kv is not None and _imports(b) == 1
    assert _text(first) == text[:start]  # A held back what might start the stop string
    assert isinstance(second[-1], Done) and second[-1].finish_reason == "stop"
    assert _text(first) + _text(second) == _text(expected) == text[:start]
    assert _ids(first) + _ids(second) == _ids(expected)


async def test_auto_mode_ships_kv_only_for_long_contexts(tp_llama: Path) -> None:
    async with running_center(tp_llama, admin=POLICY) as a, running_center(tp_llama, admin=POLICY) as b:
        a.service.kv_policy = KVPolicy(mode="auto", min_tokens=100)
        sampling = SamplingOptions(max_tokens=20, temperature=0.0, ignore_eos=True)
        short = GenerateRequest(id="short", prompt_ids=PROMPT, sampling=sampling)
        first, second = await _migrated_run(a, b, short, after=3)
        assert first[-1].continuation.kv is None and _imports(b) == 0 and isinstance(second[-1], Done)
        long_prompt = pack_ids([(13 * k) % 900 + 3 for k in range(150)])
        long = GenerateRequest(id="long", prompt_ids=long_prompt, sampling=sampling)
        whole = await b.generate(GenerateRequest(id="ref", prompt_ids=long_prompt, sampling=sampling))
        first, second = await _migrated_run(a, b, long, after=3)
        assert first[-1].continuation.kv is not None and _imports(b) == 1
        assert _ids(first) + _ids(second) == _ids(whole)


async def test_tokens_mode_sends_no_kv(pair: tuple[Center, Center]) -> None:
    a, b = pair
    a.service.kv_policy = KVPolicy(mode="tokens")
    req = GenerateRequest(id="t", prompt_ids=PROMPT, sampling=SamplingOptions(max_tokens=12, temperature=0.0))
    first, second = await _migrated_run(a, b, req, after=3)
    assert first[-1].continuation.kv is None and _imports(b) == 0 and isinstance(second[-1], Done)


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes and tokenizer of tp_llama, other weights."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("kv_other"), "llama", seed=9)


@pytest.fixture(scope="module")
def other_shape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tokenizer of tp_llama, one KV head and three layers."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("kv_shape"), "llama", seed=1, num_kv_heads=1,
                                num_layers=3)


@pytest.mark.parametrize("target", ["other_weights", "other_shape"])
async def test_kv_from_another_model_is_dropped_and_recomputed(
    tp_llama: Path, target: str, request: pytest.FixtureRequest
) -> None:
    """B's fingerprint or cache shape differs: it recomputes from the ids, answers, frees every block."""
    model: Path = request.getfixturevalue(target)
    async with running_center(tp_llama, admin=POLICY) as a, running_center(model, admin=POLICY) as b:
        a.service.kv_policy = KVPolicy(mode="kv")
        req = GenerateRequest(id="x", prompt_ids=PROMPT,
                              sampling=SamplingOptions(max_tokens=16, temperature=0.0, ignore_eos=True))
        first, second = await _migrated_run(a, b, req, after=4)
        assert first[-1].continuation.kv is not None
        assert not any(isinstance(m, Error) for m in second) and isinstance(second[-1], Done)
        assert len(_ids(first)) + len(_ids(second)) == 16
        assert _imports(b) == 0 and _all_free(b) and not b.service.in_flight
        b.engine.core.scheduler.block_manager.check_invariants()


async def test_drain_with_migrate_ships_kv(pair: tuple[Center, Center]) -> None:
    from isthmus.protocol import DrainRequest

    a, b = pair
    req = GenerateRequest(id="dr", prompt_ids=PROMPT,
                          sampling=SamplingOptions(max_tokens=30, temperature=0.0, ignore_eos=True))
    whole = await b.generate(req)
    first: list[Any] = []
    async for msg in a.generate_call(req):
        first.append(msg)
        if len(first) == 3:
            await a.unary(rpc.DRAIN, DrainRequest(grace_s=5.0, migrate=True), metadata=ADMIN)
    assert isinstance(first[-1], Migrated) and first[-1].continuation.kv is not None
    second = await b.generate(resume_request(req, first[-1]))
    assert _ids(first) + _ids(second) == _ids(whole) and _imports(b) == 1


async def test_kv_passes_through_the_edge_pool_unchanged(tp_llama: Path) -> None:
    """A migrating drain under a real `CenterPool` with `follow_migrations`, as the edge relays:
    the KV reaches B inside the resumed request, and the app's stream is the unmigrated answer."""
    import asyncio

    from isthmus.edge.migration import MigrationStats, follow_migrations
    from isthmus.edge.pool import CenterPool
    from isthmus.edge.replica import PoolOptions

    async with running_center(tp_llama, admin=POLICY) as a, running_center(tp_llama, admin=POLICY) as b:
        for c in (a, b):
            c.service.kv_policy = KVPolicy(mode="kv")
        sampling = SamplingOptions(max_tokens=30, temperature=0.7, seed=4, ignore_eos=True)
        req = GenerateRequest(id="pool", prompt_ids=PROMPT, sampling=sampling)
        whole = await b.generate(req)
        pool = CenterPool([f"127.0.0.1:{c.server.port}" for c in (a, b)],
                          options=PoolOptions(health_interval_s=3600))
        await pool.start()
        stats = MigrationStats()
        target = None
        try:
            got: list[Any] = []
            async for msg in follow_migrations(pool.generate, req, stats=stats):
                got.append(msg)
                if len(got) == 4:  # drain whichever replica the pool picked
                    source, target = (a, b) if a.service.in_flight else (b, a)
                    await asyncio.wait_for(source.server.drain(grace_s=5.0, migrate=True), timeout=10)
        finally:
            await pool.close()
        assert target is not None and stats.finished == 1 and _imports(target) == 1
        assert isinstance(got[-1], Done) and _ids(got) == _ids(whole) and _text(got) == _text(whole)
