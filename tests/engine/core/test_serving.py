"""The serving adapter both tiers use: sans-IO pieces, a scripted engine, then a real `AsyncEngine`."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import pytest
from isthmus.engine.core.async_engine import AsyncEngine, EngineNotRunning, EngineRequest
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.outputs import EngineOutput
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.scheduler import InvalidRequest, PromptTooLong, QueueFull, SchedulerError
from isthmus.engine.core.serving import ENDED_EARLY, ServedMessage, ServingRun
from isthmus.engine.core.serving_clock import RequestClock, earliest
from isthmus.engine.core.serving_wire import (
    MIN_WIRE_LOGPROB,
    done_message,
    engine_error,
    finite_logprobs,
    sampling_params,
)
from isthmus.protocol import (
    Done,
    Error,
    ErrorCode,
    ProtocolError,
    Route,
    SamplingOptions,
    Timings,
    TokenChunk,
    encode,
    unpack_ids,
)

from tests.engine.fake_runner import FakeRunner, reference_output

pytestmark = pytest.mark.timeout(60)
ROUTE = Route(tier="center", reason="center")
VOCAB = 50


class FakeNow:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- sans-IO: clock, params, errors, Done ------------------------------------------------------


def test_clock_deadline_is_the_earlier_limit_from_arrival() -> None:
    now = FakeNow()
    assert RequestClock(now, None).deadline is None
    assert RequestClock(now, 2000).deadline == 102.0
    assert RequestClock(now, 2000, time_remaining_s=0.5).deadline == 100.5
    assert RequestClock(now, None, time_remaining_s=3.0).deadline == 103.0
    assert earliest(None, None) is None and earliest(1.0, None) == 1.0 and earliest(4.0, 2.0) == 2.0


def test_clock_timings_and_token_gaps() -> None:
    now = FakeNow()
    clock = RequestClock(now, None)
    clock.queue_s = 0.01
    now.t = 100.25
    assert clock.mark_token() is None and clock.first_token_s == 0.25
    now.t = 100.5
    assert clock.mark_token() == 0.25
    assert clock.timings() == Timings(queue_ms=10.0, first_token_ms=250.0, total_ms=500.0)
    no_tokens = RequestClock(now, None)
    now.t = 101.0
    assert no_tokens.timings() == Timings(queue_ms=0.0, first_token_ms=500.0, total_ms=500.0)


async def test_clock_wait_past_the_deadline_raises_without_running_the_awaitable() -> None:
    now = FakeNow()
    clock = RequestClock(now, 1000)
    ran = []

    async def work() -> int:
        ran.append(1)
        return 7

    assert await clock.wait(work()) == 7
    now.t = 101.5
    with pytest.raises(TimeoutError):
        await clock.wait(work())
    assert ran == [1]


def test_sampling_params_refusals_are_invalid_message() -> None:
    opts = SamplingOptions(max_tokens=5, temperature=0.0, stop_token_ids=b"")
    params = sampling_params(opts, entropy=False)
    assert params.max_tokens == 5 and params.is_greedy and not params.entropy
    with pytest.raises(ProtocolError) as info:
        sampling_params(SamplingOptions(max_tokens=0), entropy=True)  # not validated: the engine refuses
    assert info.value.code == ErrorCode.INVALID_MESSAGE and "max_tokens" in info.value.message


@pytest.mark.parametrize(
    ("exc", "code", "retryable"),
    [
        (QueueFull("64 waiting"), ErrorCode.OVERLOADED, True),
        (PromptTooLong("too long"), ErrorCode.PROMPT_TOO_LONG, False),
        (InvalidRequest("bad"), ErrorCode.INVALID_MESSAGE, False),
        (SchedulerError("odd"), ErrorCode.UNAVAILABLE, True),
        (EngineNotRunning("stopped"), ErrorCode.UNAVAILABLE, True),
        (RuntimeError("/secret/path"), ErrorCode.INTERNAL, False),
    ],
)
def test_engine_errors_map_through_one_table(exc: Exception, code: ErrorCode, retryable: bool) -> None:
    for tier in ("edge", "center"):
        err = engine_error(exc, tier)  # type: ignore[arg-type]
        assert err.code == code and err.retryable == retryable
    assert "/secret/path" not in engine_error(RuntimeError("/secret/path"), "edge").message
    assert engine_error(QueueFull("x"), "center").message.startswith("center")
    kept = ProtocolError(ErrorCode.NOT_FOUND, "gone")
    assert engine_error(kept, "edge") is kept


def test_done_message_and_finite_logprobs() -> None:
    done = done_message("r", "length", num_prompt_tokens=3, num_completion_tokens=4, route=ROUTE,
                        timings=Timings(total_ms=1.0), model="m")
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 4 and done.model == "m"
    encode(done)
    with pytest.raises(ValueError):
        done_message("r", "deadline", num_prompt_tokens=0, num_completion_tokens=0, route=ROUTE,
                     timings=Timings(), model="")
    assert finite_logprobs([-0.5, -math.inf, math.nan]) == [-0.5, MIN_WIRE_LOGPROB, MIN_WIRE_LOGPROB]


# --- a scripted engine (no threads) ------------------------------------------------------------


class ScriptedEngine:
    """Yields `outputs` one by one; `fail` raises on the first item; `hang` waits forever after them."""

    def __init__(self, outputs: list[EngineOutput], *, fail: Exception | None = None, hang: bool = False):
        self.outputs = outputs
        self.fail = fail
        self.hang = hang
        self.aborted: list[str] = []
        self.closed = 0
        self._ended = asyncio.Event()

    async def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        self._ended.set()
        return True

    async def generate(self, req: EngineRequest) -> AsyncIterator[EngineOutput]:
        try:
            if self.fail is not None:
                raise self.fail
            for out in self.outputs:
                await asyncio.sleep(0)
                yield out
            if self.hang:
                await self._ended.wait()
                yield EngineOutput(req.request_id, finish_reason="cancelled")
        finally:
            self.closed += 1


def out(ids: list[int], finish: str | None = None, **kw: object) -> EngineOutput:
    text = "".join(chr(97 + i) for i in ids)
    return EngineOutput("e1", new_token_ids=ids, text_delta=text, logprobs=[-0.5] * len(ids),
                        finish_reason=finish, **kw)  # type: ignore[arg-type]


def make_run(engine: ScriptedEngine, *, timeout_ms: int | None = None, logprobs: bool = False) -> ServingRun:
    req = EngineRequest("e1", [1, 2, 3], SamplingParams(max_tokens=4))
    return ServingRun(engine, req, "wire-1", RequestClock(asyncio.get_running_loop().time, timeout_ms),
                      tier="edge", want_logprobs=logprobs)


async def answer(run: ServingRun, **kw: Route) -> list[ServedMessage]:
    async with contextlib.aclosing(run.messages(ROUTE, "tiny", **kw)) as msgs:
        return [m async for m in msgs]


async def test_messages_stream_chunks_then_done_with_usage() -> None:
    engine = ScriptedEngine([out([0], queue_s=0.002), out([], None), out([1, 2], "length")])
    first = Route(tier="edge", reason="score_below_threshold")
    msgs = await answer(make_run(engine, logprobs=True), first_chunk_route=first)
    chunks, done = msgs[:-1], msgs[-1]
    assert [unpack_ids(c.token_ids) for c in chunks if isinstance(c, TokenChunk)] == [[0], [1, 2]]
    assert [c.route for c in chunks if isinstance(c, TokenChunk)] == [first, None]
    assert all(isinstance(c, TokenChunk) and c.logprobs and c.id == "wire-1" for c in chunks)
    assert isinstance(done, Done) and done.finish_reason == "length" and done.route == ROUTE
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 3 and done.model == "tiny"
    assert done.timings.queue_ms == 2.0 and done.timings.first_token_ms <= done.timings.total_ms
    assert engine.aborted == [] and engine.closed == 1  # finished: nothing to abort


async def test_logprobs_only_when_asked() -> None:
    msgs = await answer(make_run(ScriptedEngine([out([0], "stop")])))
    assert isinstance(msgs[0], TokenChunk) and msgs[0].logprobs is None


@pytest.mark.parametrize(
    ("fail", "code"),
    [(QueueFull("full"), ErrorCode.OVERLOADED), (PromptTooLong("long"), ErrorCode.PROMPT_TOO_LONG),
     (EngineNotRunning("down"), ErrorCode.UNAVAILABLE), (RuntimeError("boom"), ErrorCode.INTERNAL)],
)
async def test_engine_refusal_is_one_error(fail: Exception, code: ErrorCode) -> None:
    engine = ScriptedEngine([], fail=fail)
    msgs = await answer(make_run(engine))
    assert len(msgs) == 1 and isinstance(msgs[0], Error) and msgs[0].code == code
    assert engine.aborted == []  # refused: never admitted


async def test_stream_without_finish_reason_is_internal() -> None:
    msgs = await answer(make_run(ScriptedEngine([out([0])])))
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.INTERNAL
    assert msgs[-1].message == ENDED_EARLY


async def test_engine_deadline_finish_is_deadline_exceeded() -> None:
    msgs = await answer(make_run(ScriptedEngine([out([0]), out([], "deadline")])))
    assert isinstance(msgs[0], TokenChunk)
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DEADLINE_EXCEEDED


async def test_deadline_while_waiting_aborts_the_engine_request() -> None:
    engine = ScriptedEngine([out([0])], hang=True)
    msgs = await answer(make_run(engine, timeout_ms=50))
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DEADLINE_EXCEEDED
    assert engine.aborted == ["e1"]


async def test_interrupt_ends_the_answer_with_its_error() -> None:
    engine = ScriptedEngine([out([0])], hang=True)
    run = make_run(engine)
    drained = ProtocolError(ErrorCode.DRAINING, "drained", retryable=True)
    async with contextlib.aclosing(run.messages(ROUTE, "tiny")) as msgs:
        assert isinstance(await anext(msgs), TokenChunk)
        await run.interrupt(drained)
        await run.interrupt(ProtocolError(ErrorCode.INTERNAL, "later"))  # the first reason wins
        rest = [m async for m in msgs]
    assert len(rest) == 1 and isinstance(rest[0], Error)
    assert rest[0].code == ErrorCode.DRAINING and rest[0].retryable
    assert engine.aborted[0] == "e1"


async def test_closing_early_aborts_and_closes_the_engine_stream() -> None:
    engine = ScriptedEngine([out([0]), out([1])], hang=True)
    run = make_run(engine)
    async with contextlib.aclosing(run.messages(ROUTE, "tiny")) as msgs:
        assert isinstance(await anext(msgs), TokenChunk)
    assert engine.aborted == ["e1"] and engine.closed == 1 and run.is_finished


# --- a real AsyncEngine on the fake runner: KV blocks --------------------------------------------


@contextlib.asynccontextmanager
async def real_engine(delay_s: float = 0.0) -> AsyncIterator[AsyncEngine]:
    runner = FakeRunner(64, 4, VOCAB, delay_s=delay_s)
    engine = AsyncEngine(EngineOptions(model="/nonexistent/fake-model"), runner=runner)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def real_run(engine: AsyncEngine, name: str, max_tokens: int, timeout_ms: int | None = None) -> ServingRun:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    req = EngineRequest(name, list(range(20)), params)
    clock = RequestClock(asyncio.get_running_loop().time, timeout_ms)
    return ServingRun(engine, req, name, clock, tier="center", want_logprobs=False)


def all_free(engine: AsyncEngine) -> bool:
    load = engine.load()
    return load.num_free_kv_blocks == load.num_total_kv_blocks and load.num_running == 0


async def test_real_engine_answer_matches_the_reference() -> None:
    async with real_engine() as engine:
        msgs = await answer(real_run(engine, "ok", 10))
        ids = [t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)]
        assert ids == reference_output(list(range(20)), 10, VOCAB)
        assert isinstance(msgs[-1], Done) and msgs[-1].usage.completion_tokens == 10
        assert all_free(engine)


async def test_real_engine_cancel_deadline_and_interrupt_free_kv_blocks() -> None:
    async with real_engine(delay_s=0.002) as engine:
        run = real_run(engine, "cancel", 500)
        async with contextlib.aclosing(run.messages(ROUTE, "m")) as msgs:
            assert isinstance(await anext(msgs), TokenChunk)
            assert not all_free(engine)
        assert all_free(engine)  # abort frees the blocks before it returns

        msgs_d = await answer(real_run(engine, "deadline", 500, timeout_ms=100))
        assert isinstance(msgs_d[-1], Error) and msgs_d[-1].code == ErrorCode.DEADLINE_EXCEEDED
        assert all_free(engine)

        run = real_run(engine, "drain", 500)
        async with contextlib.aclosing(run.messages(ROUTE, "m")) as msgs:
            assert isinstance(await anext(msgs), TokenChunk)
            await run.interrupt(ProtocolError(ErrorCode.DRAINING, "drained", retryable=True))
            assert all_free(engine)
            last = [m async for m in msgs][-1]
        assert isinstance(last, Error) and last.code == ErrorCode.DRAINING
