"""Orchestrator paths with a scripted engine and center (no model, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from isthmus.edge.orchestrator import Orchestrator
from isthmus.edge.pool import CenterUnavailable
from isthmus.edge.router import Decision, LoadView, Router
from isthmus.engine.core.outputs import EngineLoad, EngineOutput
from isthmus.protocol import (
    ChatMessage,
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    Route,
    SamplingOptions,
    TokenChunk,
    Usage,
    pack_ids,
    unpack_ids,
)

pytestmark = pytest.mark.timeout(30)


class FakeTokenizer:
    fingerprint = "edge-fp"
    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


class FakeEngine:
    """Answers with the letters a, b, c, ... one per output; entropy per token from `entropies`."""

    def __init__(self, entropies: list[float] | None = None, prompt_logprob_mean: float = -1.0) -> None:
        self.tokenizer = FakeTokenizer()
        self.entropies = entropies
        self.prompt_logprob_mean = prompt_logprob_mean
        self.requests: list[Any] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.delay = 0.0

    def load(self) -> EngineLoad:
        return EngineLoad(len(self.running), 0, 10, 10, 0.0)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    async def generate(self, req: Any) -> AsyncIterator[EngineOutput]:
        self.requests.append(req)
        self.running.add(req.request_id)
        n = req.params.max_tokens
        try:
            for i in range(n):
                await asyncio.sleep(self.delay)
                if req.request_id not in self.running:
                    return
                ent = self.entropies[i] if self.entropies else 0.1
                last = i == n - 1
                yield EngineOutput(
                    request_id=req.request_id,
                    new_token_ids=[97 + i],
                    text_delta=chr(97 + i),
                    logprobs=[-0.5],
                    entropies=[ent],
                    finish_reason="length" if last else None,
                    num_prompt_tokens=len(req.prompt_ids),
                    num_completion_tokens=i + 1,
                    prompt_logprob_mean=self.prompt_logprob_mean if i == 0 else None,
                    queue_s=0.001 if i == 0 else None,
                    first_token_s=0.002 if i == 0 else None,
                )
        finally:
            self.running.discard(req.request_id)


class FakeRouter(Router):
    """Routes every auto request to `tier`; `reconsider_to="center"` escalates after prefill."""

    def __init__(self, tier: str = "edge", reconsider_to: str | None = None) -> None:
        super().__init__()
        self.tier = tier
        self.reconsider_to = reconsider_to
        self.prompt_logprob_means: list[float | None] = []

    def decide(self, features: Any, wish: str, load: LoadView) -> Decision:
        if wish != "auto":
            return super().decide(features, wish, load)
        if self.tier == "center":
            return Decision("center", "score_above_threshold", 0.5)
        return Decision("edge", "score_below_threshold", 0.5)

    def reconsider(
        self, decision: Decision, mean: float | None, load: LoadView | None = None
    ) -> Decision | None:
        self.prompt_logprob_means.append(mean)
        if self.reconsider_to is None:
            return None
        return Decision("center", "prompt_perplexity", 0.9)


@dataclass
class FakePool:
    """A center answering 'XYZ' (one chunk per letter) or, with `is_down`, unreachable."""

    is_down: bool = False
    text: str = "XYZ"
    requests: list[GenerateRequest] = field(default_factory=list)
    num_closed: int = 0
    tokenizer_fingerprint: str = "center-fp"

    def has_healthy(self) -> bool:
        return True

    def load_view(self) -> LoadView:
        return LoadView(is_center_healthy=True)

    async def generate(self, req: GenerateRequest) -> AsyncIterator[TokenChunk | Done | Error]:
        self.requests.append(req)
        if self.is_down:
            raise CenterUnavailable("no replica")
        try:
            for c in self.text:
                yield TokenChunk(id=req.id, token_ids=pack_ids([ord(c)]), text=c, tier="center")
            yield Done(
                id=req.id,
                finish_reason="length",
                usage=Usage(prompt_tokens=99, completion_tokens=len(self.text)),
                route=Route(tier="center", reason="wish_center"),
                model="center-model",
            )
        finally:
            self.num_closed += 1


class Monitor:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def observe(self, entropies: list[float]) -> bool:
        return any(e > self.threshold for e in entropies)


def make(engine: FakeEngine | None = None, pool: FakePool | None = None, router: FakeRouter | None = None,
         **kw: Any) -> tuple[Orchestrator, FakeEngine, FakePool]:
    engine = engine or FakeEngine()
    pool = pool or FakePool()
    orch = Orchestrator(engine, pool, router or FakeRouter(), model_name="edge-model", **kw)
    return orch, engine, pool


def request(prompt: str = "hello", max_tokens: int = 4, tier: str = "auto", **kw: Any) -> GenerateRequest:
    sampling = SamplingOptions(max_tokens=max_tokens)
    return GenerateRequest(id="r", prompt=prompt, sampling=sampling, tier=tier, **kw)


async def collect(orch: Orchestrator, req: GenerateRequest) -> list[Any]:
    return [m async for m in orch.handle(req)]


async def test_local_answer_streams_then_done_with_route_usage_timings() -> None:
    orch, engine, pool = make()
    msgs = await collect(orch, request("hello", max_tokens=3))
    assert [m.text for m in msgs[:-1]] == ["a", "b", "c"]
    assert all(m.tier == "edge" for m in msgs[:-1])
    assert msgs[0].route == msgs[-1].route and all(m.route is None for m in msgs[1:-1])
    done = msgs[-1]
    assert isinstance(done, Done) and done.finish_reason == "length"
    assert done.route.tier == "edge" and not done.route.is_degraded
    assert done.usage == Usage(prompt_tokens=5, completion_tokens=3)
    assert done.model == "edge-model" and done.timings.total_ms >= done.timings.first_token_ms
    assert engine.requests[0].want_prompt_logprobs
    assert pool.requests == []


async def test_chat_messages_use_the_chat_template_and_prompt_ids_pass_through() -> None:
    orch, engine, _ = make()
    await collect(orch, GenerateRequest(id="m", messages=[ChatMessage("user", "hi")],
                                        sampling=SamplingOptions(max_tokens=1)))
    assert engine.requests[0].prompt_ids == FakeTokenizer().encode("<user>hi")
    await collect(orch, GenerateRequest(id="p", prompt_ids=pack_ids([5, 6, 7]),
                                        sampling=SamplingOptions(max_tokens=1)))
    assert engine.requests[1].prompt_ids == [5, 6, 7]


async def test_escalated_before_running_relays_the_center() -> None:
    orch, engine, pool = make(router=FakeRouter(tier="center"))
    msgs = await collect(orch, request("prove it", api_key="secret"))
    assert "".join(m.text for m in msgs[:-1]) == "XYZ"
    assert msgs[0].route is not None and msgs[0].route.tier == "center"
    done = msgs[-1]
    assert done.route.tier == "center" and done.route.reason == "score_above_threshold"
    assert done.usage == Usage(prompt_tokens=8, completion_tokens=3) and done.model == "center-model"
    assert engine.requests == []
    assert pool.requests[0].tier == "center" and pool.requests[0].api_key is None


async def test_center_unavailable_answers_locally_degraded() -> None:
    orch, _, _ = make(pool=FakePool(is_down=True), router=FakeRouter(tier="center"))
    msgs = await collect(orch, request())
    done = msgs[-1]
    assert isinstance(done, Done)
    assert done.route.tier == "edge" and done.route.is_degraded and done.route.reason == "center_unavailable"


async def test_after_prefill_escalation_streams_nothing_local() -> None:
    router = FakeRouter(reconsider_to="center")
    engine = FakeEngine(prompt_logprob_mean=-7.5)
    orch, engine, _ = make(engine=engine, router=router)
    msgs = await collect(orch, request())
    assert router.prompt_logprob_means == [-7.5]
    assert all(m.tier == "center" for m in msgs[:-1])
    assert msgs[-1].route.reason == "prompt_perplexity"
    assert engine.aborted and not engine.running


async def test_confidence_collapse_hands_over_mid_answer() -> None:
    engine = FakeEngine(entropies=[0.1, 0.1, 5.0, 5.0, 5.0, 5.0])
    orch, engine, pool = make(engine=engine, monitor_factory=lambda: Monitor(1.0))
    msgs = await collect(orch, request(max_tokens=6))
    texts = [(m.tier, m.text) for m in msgs[:-1]]
    assert texts == [("edge", "a"), ("edge", "b"), ("center", "X"), ("center", "Y"), ("center", "Z")]
    assert msgs[2].route == Route(tier="center", reason="confidence_collapse", score=0.5)
    cont = pool.requests[0].continuation
    assert cont.text == "ab" and cont.reason == "confidence_collapse"
    assert cont.token_ids == b""  # fingerprints differ: text only
    assert pool.requests[0].sampling.max_tokens == 4
    done = msgs[-1]
    assert done.route.reason == "confidence_collapse" and done.usage.completion_tokens == 5
    assert engine.aborted and not engine.running


async def test_handover_carries_ids_when_fingerprints_match() -> None:
    engine = FakeEngine(entropies=[0.1, 5.0, 5.0])
    orch, _, pool = make(engine=engine, pool=FakePool(tokenizer_fingerprint="edge-fp"),
                         monitor_factory=lambda: Monitor(1.0))
    await collect(orch, request(max_tokens=3))
    cont = pool.requests[0].continuation
    assert unpack_ids(cont.token_ids) == [97] and cont.tokenizer_fingerprint == "edge-fp"


async def test_collapse_with_center_down_keeps_answering_locally() -> None:
    engine = FakeEngine(entropies=[5.0, 5.0, 5.0])
    orch, _, _ = make(engine=engine, pool=FakePool(is_down=True), monitor_factory=lambda: Monitor(1.0))
    msgs = await collect(orch, request(max_tokens=3))
    assert "".join(m.text for m in msgs[:-1]) == "abc"
    assert isinstance(msgs[-1], Done) and msgs[-1].route.tier == "edge"


class RefusingKeys:
    def acquire(self, key: str | None) -> Any:
        raise ProtocolError(ErrorCode.UNAUTHENTICATED, "api_key: unknown")


async def test_unauthenticated_runs_nothing() -> None:
    orch, engine, pool = make(auth=RefusingKeys())
    msgs = await collect(orch, request())
    assert len(msgs) == 1 and isinstance(msgs[0], Error) and msgs[0].code == ErrorCode.UNAUTHENTICATED
    assert engine.requests == [] and pool.requests == []


async def test_prompt_too_long() -> None:
    orch, engine, _ = make(max_prompt_tokens=4)
    msgs = await collect(orch, request("hello"))
    assert msgs[-1].code == ErrorCode.PROMPT_TOO_LONG and engine.requests == []


async def test_deadline_exceeded_aborts_the_engine_request() -> None:
    engine = FakeEngine()
    engine.delay = 0.05
    orch, engine, _ = make(engine=engine)
    msgs = await collect(orch, request(max_tokens=50, timeout_ms=120))
    assert any(isinstance(m, TokenChunk) for m in msgs)
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DEADLINE_EXCEEDED
    assert not engine.running and engine.aborted


async def test_closing_the_stream_early_aborts_local_and_center() -> None:
    engine = FakeEngine()
    orch, engine, _ = make(engine=engine)
    gen = orch.handle(request(max_tokens=10))
    await anext(gen)
    await gen.aclose()
    assert engine.aborted and not engine.running

    orch, _, pool = make(router=FakeRouter(tier="center"))
    gen = orch.handle(request())
    await anext(gen)
    await gen.aclose()
    assert pool.num_closed == 1
    assert orch.num_in_flight == 0


async def test_metrics_record_routes_escalations_tokens_and_errors() -> None:
    from isthmus.edge.metrics import Metrics

    metrics = Metrics()
    engine = FakeEngine(entropies=[0.1, 5.0, 5.0, 5.0])
    orch, _, _ = make(engine=engine, metrics=metrics, monitor_factory=lambda: Monitor(1.0))
    await collect(orch, request(max_tokens=4))
    await collect(orch, request(max_tokens=1))
    orch.auth = RefusingKeys()
    await collect(orch, request())
    text = metrics.render().decode()
    assert 'isthmus_edge_escalations_total{when="mid_answer"} 1.0' in text
    assert 'isthmus_edge_requests_total{reason="confidence_collapse",tier="center"} 1.0' in text
    assert 'isthmus_edge_errors_total{code="UNAUTHENTICATED"} 1.0' in text
    assert "isthmus_edge_tokens_out_total 5.0" in text  # 1 edge + 3 center, then 1 local
    assert "isthmus_edge_ttft_seconds_count 2.0" in text
