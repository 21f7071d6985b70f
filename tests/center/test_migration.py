"""Live migration between two center replicas over real gRPC on loopback (token-based).

Replica A answers part of a request, `Export` ends A's stream with `Migrated` (the state), and
replica B continues from it: the joined answer is token- and text-identical to an unmigrated one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from isthmus.center.auth import AdminPolicy, admin_metadata
from isthmus.edge.migration import resume_request
from isthmus.protocol import (
    Done,
    Error,
    ErrorCode,
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


def _ids(msgs: list[Any]) -> list[int]:
    return [t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)]


def _text(msgs: list[Any]) -> str:
    return "".join(m.text for m in msgs if isinstance(m, TokenChunk))


async def _migrated_run(
    a: Center, b: Center, req: GenerateRequest, after: int
) -> tuple[list[Any], list[Any]]:
    """A's messages (ending in Migrated) and B's (continuing), exporting once A sent ``after`` ids."""
    call = a.generate_call(req)
    first: list[Any] = []
    reply = None
    async for msg in call:
        first.append(msg)
        if reply is None and len(_ids(first)) >= after:
            reply = await a.unary(rpc.EXPORT, ExportRequest(id=req.id), metadata=ADMIN)
            assert isinstance(reply, Migrated), reply
    assert isinstance(first[-1], Migrated) and first[-1] == reply
    assert not any(isinstance(m, (Done, Error)) for m in first)
    second = await b.generate(resume_request(req, first[-1]))
    return first[:-1], second


@pytest.fixture
async def pair(tp_llama: Path) -> Any:
    policy = AdminPolicy(token=ADMIN_TOKEN)
    async with running_center(tp_llama, admin=policy) as a, running_center(tp_llama, admin=policy) as b:
        yield a, b


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingOptions(max_tokens=40, temperature=0.0, ignore_eos=True),
        SamplingOptions(max_tokens=40, temperature=0.9, top_p=0.95, seed=77, ignore_eos=True),
        SamplingOptions(max_tokens=40, temperature=1.0, presence_penalty=0.8, seed=5, ignore_eos=True),
    ],
    ids=["greedy", "seeded", "seeded-penalty"],
)
async def test_migrated_answer_is_identical(pair: tuple[Center, Center], sampling: SamplingOptions) -> None:
    a, b = pair
    req = GenerateRequest(id="mig", prompt_ids=PROMPT, sampling=sampling)
    whole = await b.generate(req)
    assert isinstance(whole[-1], Done) and len(_ids(whole)) == 40

    first, second = await _migrated_run(a, b, req, after=5)
    assert 5 <= len(_ids(first)) < 40
    assert isinstance(second[-1], Done) and second[-1].finish_reason == "length"
    assert _ids(first) + _ids(second) == _ids(whole)
    assert _text(first) + _text(second) == _text(whole)
    load = a.engine.load()  # A forgot it: every KV block free again
    assert load.num_free_kv_blocks == load.num_total_kv_blocks
    assert not a.service.in_flight


async def test_unseeded_request_keeps_the_seed_a_drew(pair: tuple[Center, Center]) -> None:
    a, b = pair
    req = GenerateRequest(id="drawn", prompt_ids=PROMPT,
                          sampling=SamplingOptions(max_tokens=30, temperature=1.0, ignore_eos=True))
    first, second = await _migrated_run(a, b, req, after=3)
    assert isinstance(second[-1], Done)
    assert len(_ids(first)) + len(_ids(second)) == 30


async def test_stop_string_spanning_the_migration_point_is_matched(pair: tuple[Center, Center]) -> None:
    a, b = pair
    plain = SamplingOptions(max_tokens=64, temperature=0.0, ignore_eos=True)
    whole = await b.generate(GenerateRequest(id="ref", prompt_ids=PROMPT, sampling=plain))
    chunks = [m.text for m in whole if isinstance(m, TokenChunk)]
    start = len("".join(chunks[:2]))  # the stop string starts in the 3rd token's text ...
    text = "".join(chunks)
    stop = text[start : start + 100]  # ... and runs far past where A is stopped (~token 40)
    assert len(text) > start + 100 and text.find(stop) == start, "the tiny model's answer does not suit"
    stopping = SamplingOptions(max_tokens=64, temperature=0.0, ignore_eos=True, stop=[stop])
    req = GenerateRequest(id="stop", prompt_ids=PROMPT, sampling=stopping)
    expected = await b.generate(req)
    assert isinstance(expected[-1], Done) and expected[-1].finish_reason == "stop"

    first, second = await _migrated_run(a, b, req, after=5)
    assert _text(first) == text[:start]  # A held back what might start the stop string
    assert isinstance(second[-1], Done) and second[-1].finish_reason == "stop"
    assert _text(first) + _text(second) == _text(expected) == text[:start]
    assert _ids(first) + _ids(second) == _ids(expected)


async def test_export_of_unknown_request_is_not_found(pair: tuple[Center, Center]) -> None:
    a, _ = pair
    reply = await a.unary(rpc.EXPORT, ExportRequest(id="nobody"), metadata=ADMIN)
    assert isinstance(reply, Error) and reply.code == ErrorCode.NOT_FOUND


async def test_export_needs_admin(pair: tuple[Center, Center]) -> None:
    a, _ = pair
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.unary(rpc.EXPORT, ExportRequest(id="x"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.unary(rpc.EXPORT, ExportRequest(id="x"), metadata=admin_metadata("wrong-token-0123456789"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_migration_to_another_tokenizer_is_refused(pair: tuple[Center, Center]) -> None:
    _, b = pair
    req = GenerateRequest(id="m", prompt_ids=PROMPT, sampling=SamplingOptions(max_tokens=8))
    migrated = Migrated(id="m", prompt_ids=PROMPT, sampling=SamplingOptions(max_tokens=8, seed=1),
                        continuation=_continuation(fingerprint="other" * 8))
    msgs = await b.generate(resume_request(req, migrated))
    assert len(msgs) == 1 and isinstance(msgs[0], Error) and msgs[0].code == ErrorCode.INVALID_MESSAGE


def _continuation(fingerprint: str) -> Any:
    from isthmus.protocol import Continuation

    return Continuation(text="", token_ids=pack_ids([3, 4]), tokenizer_fingerprint=fingerprint,
                        is_migration=True)


async def test_handed_over_request_migrates_too(pair: tuple[Center, Center]) -> None:
    """An edge's hand-over (its answer as continuation ids) then a migration: same as without."""
    a, b = pair
    fingerprint = a.engine.tokenizer_fingerprint
    edge_ids = [11, 12, 13]
    edge_text = a.engine.tokenizer.decode(edge_ids)
    from isthmus.protocol import Continuation

    req = GenerateRequest(
        id="ho", prompt_ids=PROMPT,
        sampling=SamplingOptions(max_tokens=30, temperature=0.8, seed=9, ignore_eos=True),
        continuation=Continuation(
            text=edge_text, token_ids=pack_ids(edge_ids), tokenizer_fingerprint=fingerprint
        ),
    )
    whole = await b.generate(req)
    first, second = await _migrated_run(a, b, req, after=4)
    assert isinstance(second[-1], Done) and second[-1].finish_reason == "length"
    assert _ids(first) + _ids(second) == _ids(whole)
    assert _text(first) + _text(second) == _text(whole)


async def test_drain_rpc_with_migrate_ends_streams_with_their_state(pair: tuple[Center, Center]) -> None:
    from isthmus.protocol import DrainReply, DrainRequest

    a, b = pair
    req = GenerateRequest(id="dr", prompt_ids=PROMPT,
                          sampling=SamplingOptions(max_tokens=40, temperature=0.0, ignore_eos=True))
    whole = await b.generate(req)
    first: list[Any] = []
    async for msg in a.generate_call(req):
        first.append(msg)
        if len(first) == 3:
            reply = await a.unary(rpc.DRAIN, DrainRequest(grace_s=5.0, migrate=True), metadata=ADMIN)
            assert reply == DrainReply(num_in_flight=1)
    assert isinstance(first[-1], Migrated)
    second = await b.generate(resume_request(req, first[-1]))
    assert _ids(first[:-1]) + _ids(second) == _ids(whole)
    await asyncio.wait_for(a.server.wait_stopped(), timeout=10)  # nothing left in flight: A stops
    assert not a.service.in_flight
