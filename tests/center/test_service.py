"""The center's gRPC service over loopback (TP=1, real engine on a tiny checkpoint)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from isthmus.center.auth import admin_metadata
from isthmus.engine.core.async_engine import EngineRequest
from isthmus.engine.core.params import SamplingParams
from isthmus.protocol import (
    ChatMessage,
    Continuation,
    Done,
    DrainReply,
    DrainRequest,
    Error,
    ErrorCode,
    GenerateRequest,
    SamplingOptions,
    Status,
    StatusRequest,
    TokenChunk,
    encode,
    pack_ids,
    rpc,
    unpack_ids,
)

from tests.center.conftest import ADMIN_TOKEN, Center, running_center

GREEDY = SamplingOptions(max_tokens=12, temperature=0.0, ignore_eos=True)
LONG = SamplingOptions(max_tokens=500, temperature=0.0, ignore_eos=True)


def _ids(msgs: list[object]) -> list[int]:
    return [t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)]


async def _direct(center: Center, prompt_ids: list[int], max_tokens: int = 12) -> list[int]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    ids: list[int] = []
    async for out in center.engine.generate(EngineRequest("direct", prompt_ids, params)):
        ids.extend(out.new_token_ids)
    return ids


async def _wait_blocks_free(center: Center, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        load = center.engine.load()
        if load.num_free_kv_blocks == load.num_total_kv_blocks and not center.service.in_flight:
            return
        await asyncio.sleep(0.02)
    load = center.engine.load()
    raise AssertionError(f"KV blocks not freed: {load}")


async def test_generate_streams_the_engine_tokens_then_done(center: Center) -> None:
    tok = center.engine.tokenizer
    msgs = await center.generate(GenerateRequest(id="a", prompt="The quick brown fox", sampling=GREEDY))
    assert all(isinstance(m, TokenChunk) and m.tier == "center" for m in msgs[:-1])
    done = msgs[-1]
    assert isinstance(done, Done), done
    expected = await _direct(center, tok.encode("The quick brown fox"))
    assert _ids(msgs) == expected
    assert "".join(m.text for m in msgs[:-1]) == tok.decode(expected)
    assert done.finish_reason == "length" and done.route.tier == "center" and done.model == "tp_llama0"
    assert done.usage.prompt_tokens == len(tok.encode("The quick brown fox"))
    assert done.usage.completion_tokens == 12
    assert 0 <= done.timings.first_token_ms <= done.timings.total_ms


async def test_chat_and_prompt_ids(center: Center) -> None:
    tok = center.engine.tokenizer
    chat = [ChatMessage(role="user", content="hello there")]
    msgs = await center.generate(GenerateRequest(id="c", messages=chat, sampling=GREEDY))
    assert _ids(msgs) == await _direct(center, tok.encode_chat([{"role": "user", "content": "hello there"}]))
    ids = [5, 17, 99, 300]
    msgs = await center.generate(GenerateRequest(id="p", prompt_ids=pack_ids(ids), sampling=GREEDY))
    assert _ids(msgs) == await _direct(center, ids)


async def test_continuation_by_ids_when_fingerprints_match_else_by_text(center: Center) -> None:
    tok = center.engine.tokenizer
    prompt, cont_ids = [5, 17, 99, 300], [42, 7, 8]
    same = Continuation(token_ids=pack_ids(cont_ids), tokenizer_fingerprint=tok.fingerprint, text="ignored")
    msgs = await center.generate(GenerateRequest(id="k", prompt_ids=pack_ids(prompt), sampling=GREEDY,
                                                 continuation=same))
    assert _ids(msgs) == await _direct(center, prompt + cont_ids)
    assert isinstance(msgs[-1], Done) and msgs[-1].usage.prompt_tokens == 7
    other = Continuation(token_ids=pack_ids([1, 2, 3]), tokenizer_fingerprint="f" * 64, text=" jumps over")
    msgs = await center.generate(GenerateRequest(id="t", prompt="The quick brown fox", sampling=GREEDY,
                                                 continuation=other))
    assert _ids(msgs) == await _direct(center, tok.encode("The quick brown fox jumps over"))


async def test_continuation_text_the_edge_held_back_is_sent_first(center: Center) -> None:
    # The edge generated " hello world" but streamed only " hello" (its stop-string matcher held
    # " world" back): the center's answer starts with the held-back text.
    tok = center.engine.tokenizer
    cont_ids = tok.encode(" hello world", add_special_tokens=False)
    cont = Continuation(token_ids=pack_ids(cont_ids), tokenizer_fingerprint=tok.fingerprint, text=" hello")
    req = GenerateRequest(id="h", prompt="Say it:", sampling=GREEDY, continuation=cont)
    msgs = await center.generate(req)
    text = "".join(m.text for m in msgs if isinstance(m, TokenChunk))
    assert text.startswith(" world") and len(text) > len(" world")


async def test_cancel_aborts_and_frees_kv_blocks(center: Center) -> None:
    call = center.generate_call(GenerateRequest(id="x", prompt="tell me a long story", sampling=LONG))
    first = await call.read()
    assert isinstance(first, TokenChunk)
    assert center.engine.load().num_free_kv_blocks < center.engine.load().num_total_kv_blocks
    call.cancel()
    await _wait_blocks_free(center)


async def test_grpc_deadline_aborts_and_frees_kv_blocks(center: Center) -> None:
    # The server sees the same deadline: either side may end the call first.
    try:
        msgs = await center.generate(GenerateRequest(id="d", prompt="a long one", sampling=LONG), timeout=0.3)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DEADLINE_EXCEEDED
        assert len(_ids(msgs)) < 500
    await _wait_blocks_free(center)


async def test_request_timeout_ends_with_deadline_error(center: Center) -> None:
    msgs = await center.generate(GenerateRequest(id="t", prompt="a long one", sampling=LONG, timeout_ms=200))
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DEADLINE_EXCEEDED
    await _wait_blocks_free(center)


async def test_bad_requests_get_error_codes(center: Center) -> None:
    raw = center.channel.unary_stream(rpc.GENERATE, request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
    from isthmus.protocol import decode

    replies = [decode(b) async for b in raw(b"\xc1 not msgpack")]
    assert len(replies) == 1 and isinstance(replies[0], Error)
    assert replies[0].code == ErrorCode.INVALID_MESSAGE
    no_prompt = encode(GenerateRequest(id="n"))
    replies = [decode(b) async for b in raw(no_prompt)]
    assert isinstance(replies[0], Error) and replies[0].code == ErrorCode.INVALID_MESSAGE
    vocab = center.engine.tokenizer.vocab_size
    bad_ids = pack_ids([1, vocab + 5])
    msgs = await center.generate(GenerateRequest(id="v", prompt_ids=bad_ids, sampling=GREEDY))
    assert isinstance(msgs[0], Error) and msgs[0].code == ErrorCode.INVALID_MESSAGE
    assert "outside the vocabulary" in msgs[0].message
    too_long = pack_ids([7] * (center.engine.max_model_len + 1))
    msgs = await center.generate(GenerateRequest(id="l", prompt_ids=too_long, sampling=GREEDY))
    assert isinstance(msgs[0], Error) and msgs[0].code == ErrorCode.PROMPT_TOO_LONG
    # the service is still fine afterwards
    msgs = await center.generate(GenerateRequest(id="ok", prompt="hi", sampling=GREEDY))
    assert isinstance(msgs[-1], Done)


async def test_status_reports_load(center: Center) -> None:
    status = await center.unary(rpc.STATUS, StatusRequest())
    assert isinstance(status, Status)
    assert status.tier == "center" and status.is_ready and not status.is_draining
    assert status.num_total_kv_blocks == 48 and status.num_free_kv_blocks == 48
    assert status.tokenizer_fingerprint == center.engine.tokenizer.fingerprint
    assert status.model == "tp_llama0"
    await center.generate(GenerateRequest(id="s", prompt="hi", sampling=GREEDY))
    status = await center.unary(rpc.STATUS, StatusRequest())
    assert status.tokens_per_s > 0


async def _read_rest(call: object) -> list[object]:
    rest = []
    while True:
        msg = await call.read()  # type: ignore[attr-defined]
        if msg is grpc.aio.EOF:
            return rest
        rest.append(msg)


async def _health(center: Center, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(center.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def test_health_serving_only_after_ready_and_until_drain(tp_llama: Path) -> None:
    async with running_center(tp_llama, ready=False) as c:
        assert await _health(c) == health_pb2.HealthCheckResponse.NOT_SERVING
        refused = await c.generate(GenerateRequest(id="early", prompt="hi", sampling=GREEDY))
        assert isinstance(refused[0], Error) and refused[0].code == ErrorCode.UNAVAILABLE
        await c.server.set_ready()
        assert await _health(c) == health_pb2.HealthCheckResponse.SERVING
        assert await _health(c, rpc.SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        call = c.generate_call(GenerateRequest(id="busy", prompt="keep going", sampling=LONG))
        assert isinstance(await call.read(), TokenChunk)  # in flight: the server stays up while draining
        await c.server.drain(grace_s=5.0)
        assert await _health(c) == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()


async def test_drain_finishes_in_flight_refuses_new_then_stops(center: Center) -> None:
    slow = SamplingOptions(max_tokens=60, temperature=0.0, ignore_eos=True)
    call = center.generate_call(GenerateRequest(id="inflight", prompt="keep going", sampling=slow))
    assert isinstance(await call.read(), TokenChunk)
    reply = await center.unary(rpc.DRAIN, DrainRequest(grace_s=30.0), metadata=admin_metadata(ADMIN_TOKEN))
    assert isinstance(reply, DrainReply) and reply.num_in_flight == 1
    refused = await center.generate(GenerateRequest(id="late", prompt="hi", sampling=GREEDY))
    assert isinstance(refused[0], Error) and refused[0].code == ErrorCode.DRAINING and refused[0].retryable
    rest = await _read_rest(call)
    assert isinstance(rest[-1], Done) and rest[-1].usage.completion_tokens == 60
    await asyncio.wait_for(center.server.wait_stopped(), timeout=10.0)


async def test_drain_grace_expiry_aborts_with_retryable_error(center: Center) -> None:
    call = center.generate_call(GenerateRequest(id="cut", prompt="keep going", sampling=LONG))
    assert isinstance(await call.read(), TokenChunk)
    await center.server.drain(grace_s=0.05)
    rest = await _read_rest(call)
    assert isinstance(rest[-1], Error) and rest[-1].code == ErrorCode.DRAINING and rest[-1].retryable
    await asyncio.wait_for(center.server.wait_stopped(), timeout=10.0)
    await _wait_blocks_free(center)
