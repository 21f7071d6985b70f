import asyncio
import time

import pytest
from isthmus.engine.core.async_engine import AsyncEngine, EngineNotRunning, EngineRequest
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.scheduler import PromptTooLong, QueueFull
from isthmus.engine.core.state import RequestState

from tests.engine.fake_runner import FakeRunner, reference_output

VOCAB = 50
pytestmark = pytest.mark.timeout(60)


async def make_engine(num_blocks=64, delay_s=0.0, use_sampler=False, **kw) -> AsyncEngine:
    opts = EngineOptions(model="/nonexistent/fake-model", **kw)
    runner = FakeRunner(num_blocks, 4, VOCAB, delay_s=delay_s, use_sampler=use_sampler)
    engine = AsyncEngine(opts, runner=runner)
    await engine.start()
    return engine


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


async def collect(engine, req):
    outs = [o async for o in engine.generate(req)]
    return [t for o in outs for t in o.new_token_ids], outs


async def test_streams_tokens_matching_the_reference_for_concurrent_requests():
    engine = await make_engine()
    try:
        prompts = [[i, i + 1, i + 2] for i in range(8)]
        results = await asyncio.gather(
            *(collect(engine, EngineRequest(f"r{i}", p, greedy(10))) for i, p in enumerate(prompts))
        )
        for p, (ids, outs) in zip(prompts, results, strict=True):
            assert ids == reference_output(p, 10, VOCAB)
            assert outs[-1].finish_reason == "length"
            assert outs[-1].num_completion_tokens == 10 and outs[-1].num_prompt_tokens == 3
            assert outs[0].queue_s is not None and outs[0].first_token_s is not None
        load = engine.load()
        assert load.num_free_kv_blocks == load.num_total_kv_blocks == 64
        assert load.num_running == load.num_waiting == 0
        assert load.tokens_per_s > 0
        assert engine.model_name == "fake-model"
    finally:
        await engine.stop()


async def test_abort_frees_blocks_and_ends_the_stream_cancelled():
    engine = await make_engine(delay_s=0.002)
    try:
        gen = engine.generate(EngineRequest("long", list(range(20)), greedy(500)))
        first = await gen.__anext__()
        assert first.new_token_ids
        assert engine.load().num_free_kv_blocks < 64
        assert await engine.abort("long")
        assert engine.load().num_free_kv_blocks == 64
        rest = [o async for o in gen]
        assert rest[-1].finish_reason == "cancelled"
        assert not await engine.abort("long")
    finally:
        await engine.stop()


async def test_consumer_that_disappears_aborts_its_request():
    engine = await make_engine(delay_s=0.002)
    try:
        started = asyncio.Event()

        async def consume():
            async for _ in engine.generate(EngineRequest("c", list(range(20)), greedy(500))):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.load().num_free_kv_blocks == 64
        # closing the iterator early does the same
        gen = engine.generate(EngineRequest("d", list(range(20)), greedy(500)))
        await gen.__anext__()
        await gen.aclose()
        assert engine.load().num_free_kv_blocks == 64 and engine.load().num_running == 0
    finally:
        await engine.stop()


async def test_slow_consumer_gets_coalesced_outputs():
    engine = await make_engine()
    try:
        outs = []
        async for o in engine.generate(EngineRequest("s", [1, 2, 3], greedy(60))):
            outs.append(o)
            await asyncio.sleep(0.02)
        ids = [t for o in outs for t in o.new_token_ids]
        assert ids == reference_output([1, 2, 3], 60, VOCAB)
        assert len(outs) < 60  # several steps merged per item
        assert sum(len(o.entropies) for o in outs) == 60
    finally:
        await engine.stop()


async def test_refusals_raise_typed_errors():
    engine = await make_engine(max_waiting=0, max_model_len=16)
    try:
        with pytest.raises(QueueFull):
            await engine.generate(EngineRequest("q", [1], greedy(1))).__anext__()
    finally:
        await engine.stop()
    engine = await make_engine(max_model_len=16)
    try:
        with pytest.raises(PromptTooLong):
            await engine.generate(EngineRequest("q", list(range(16)), greedy(1))).__anext__()
    finally:
        await engine.stop()
    with pytest.raises(EngineNotRunning):
        await engine.generate(EngineRequest("q", [1], greedy(1))).__anext__()


async def test_deadline_ends_a_request_with_deadline():
    engine = await make_engine(delay_s=0.002)
    try:
        loop_now = time.monotonic()
        _, outs = await collect(engine, EngineRequest("d", [1, 2], greedy(10_000), deadline=loop_now + 0.05))
        assert outs[-1].finish_reason == "deadline"
        assert engine.load().num_free_kv_blocks == 64
    finally:
        await engine.stop()


async def test_stop_cancels_open_streams():
    engine = await make_engine(delay_s=0.002)
    gen = engine.generate(EngineRequest("x", [1, 2], greedy(10_000)))
    await gen.__anext__()
    await engine.stop()
    rest = [o async for o in gen]
    assert rest[-1].finish_reason == "cancelled"


@pytest.mark.parametrize(
    "params",
    [
        greedy(30),
        SamplingParams(max_tokens=30, temperature=0.8, top_p=0.9, seed=7),
        SamplingParams(max_tokens=30, temperature=1.0),
    ],
)
async def test_export_and_resume_on_another_engine_is_token_identical(params):
    prompt = [5, 6, 7, 8]
    a = await make_engine(use_sampler=True, delay_s=0.001)
    b = await make_engine(use_sampler=True)
    try:
        full, _ = await collect(a, EngineRequest("full", prompt, params))
        # A second run on the same engine draws its seed at admission too; export it mid-way.
        gen = a.generate(EngineRequest("part", prompt, params))
        got: list[int] = []
        while len(got) < 10:
            got += (await gen.__anext__()).new_token_ids
        state = a.export_state("part")
        await gen.aclose()
        if params.seed is not None:
            assert state.output_ids[: len(full)] == full[: len(state.output_ids)]
        # the state survives a msgpack round trip
        import msgpack

        state = RequestState.from_dict(msgpack.unpackb(msgpack.packb(state.to_dict())))
        rest, _ = await collect(b, EngineRequest("resumed", [], params, resume=state))
        # reference: an uninterrupted run with the exported seed
        ref_params = state.params
        c = await make_engine(use_sampler=True)
        try:
            uninterrupted, _ = await collect(c, EngineRequest("ref", prompt, ref_params))
        finally:
            await c.stop()
        assert state.output_ids + rest == uninterrupted
        if params.seed is not None or params.is_greedy:
            assert uninterrupted == full
    finally:
        await a.stop()
        await b.stop()


async def test_real_model_streams_text_and_prompt_logprob_mean(tiny_llama):
    engine = AsyncEngine(EngineOptions(model=str(tiny_llama), num_kv_blocks=64, block_size=4))
    await engine.start()
    try:
        tok = engine.tokenizer
        assert len(engine.tokenizer_fingerprint) == 64 and engine.max_model_len > 0
        ids = tok.encode("hello there", add_special_tokens=True)
        req = EngineRequest("t", ids, greedy(12), want_prompt_logprobs=True)
        outs = [o async for o in engine.generate(req)]
        tokens = [t for o in outs for t in o.new_token_ids]
        assert len(tokens) == 12
        assert "".join(o.text_delta for o in outs) == tok.decode(tokens)
        assert outs[0].prompt_logprob_mean is not None and outs[0].prompt_logprob_mean < 0
        assert all(o.prompt_logprob_mean is None for o in outs[1:])
        assert sum(len(o.entropies) for o in outs) == 12
    finally:
        await engine.stop()
