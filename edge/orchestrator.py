"""Answer one request: authenticate, tokenize, route, run here or at the center, hand over.

`Orchestrator.handle(req)` is the edge's whole request path as one async generator of
`TokenChunk ... Done | Error`. The QUIC session and the OpenAI HTTP routes both consume it; closing
the generator early (stream reset, `Cancel`, client gone) aborts the request on whichever tier runs
it: the local engine request is aborted, the center's gRPC call is cancelled.

A request moves to the center at one of three points (the `escalations` metric's `when`):
- `before_prefill`: the router's decision on features, tier wish and load;
- `after_prefill`: the edge's own perplexity on the prompt, before any token is streamed;
- `mid_answer`: the edge's token entropy collapses; the center continues from the prompt plus the
  text already streamed and the first relayed chunk carries the new `route`.
A center that cannot be reached before its first message leaves the answer (or its rest) to the
edge; a request the router meant for the center is then marked degraded.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable

import msgspec
from isthmus.protocol import (
    Continuation,
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    TokenChunk,
    error_message,
    validate,
)

from .answers import Answer
from .confidence import ConfidenceMonitor
from .features import extract_features
from .handover import HandOver, make_continuation
from .prompt_tokens import PromptTokenizer
from .relay import CenterStream, num_chunk_tokens, open_center, relay_center
from .request_run import LocalRun, RequestClock, engine_error, finish_done
from .router import CENTER_UNAVAILABLE, Decision, LoadView, Router
from .seams import Authenticator, CenterPoolLike, EdgeEngine, EdgeTokenizer, RequestMetrics

log = logging.getLogger(__name__)

_engine_ids = itertools.count(1)


class Orchestrator:
    """The request path of one edge node. Collaborators are the node's long-lived parts.

    `engine` is an `AsyncEngine` (or anything with its `generate`/`abort`/`load`/`tokenizer`),
    `pool` a `CenterPool` or None (edge only), `metrics` an edge `Metrics` or None, `auth` an
    `ApiKeyStore` or None (no keys configured: open), `monitor_factory` builds one
    `ConfidenceMonitor` per request (None: no mid-answer hand-over).
    """

    def __init__(
        self,
        engine: EdgeEngine,
        pool: CenterPoolLike | None,
        router: Router,
        metrics: RequestMetrics | None = None,
        auth: Authenticator | None = None,
        *,
        tokenizer: EdgeTokenizer | None = None,
        monitor_factory: Callable[[], ConfidenceMonitor] | None = None,
        model_name: str = "",
        max_prompt_tokens: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.router = router
        self.metrics = metrics
        self.auth = auth
        self.tokenizer: EdgeTokenizer = tokenizer if tokenizer is not None else engine.tokenizer
        self.monitor_factory = monitor_factory
        self.model_name = model_name
        self.max_prompt_tokens = max_prompt_tokens
        self.clock = clock  # time.monotonic: the engine's deadlines use the same clock
        self.num_in_flight = 0
        # large prompts are tokenized off the event loop, after a length check by bytes
        self.prompts = PromptTokenizer(self.tokenizer)

    async def handle(self, req: GenerateRequest) -> AsyncGenerator[Answer, None]:
        """Answer `req`: zero or more `TokenChunk`s then exactly one `Done` or `Error`."""
        clock = RequestClock(self.clock, req.timeout_ms)
        self.num_in_flight += 1
        lease = None
        try:
            if self.auth is not None:  # first: an unknown client learns nothing, and is throttled
                if not isinstance(req.api_key, str | None):
                    raise ProtocolError(ErrorCode.INVALID_MESSAGE, "api_key: expected a string")
                lease = self.auth.acquire(req.api_key)
            self.refuse_oversized(req)  # before the costlier validate
            validate(req)
            async with contextlib.aclosing(self._answer(req, clock)) as items:
                async for msg in items:
                    if isinstance(msg, Error):
                        self._count_error(msg.code)
                    yield msg
        except ProtocolError as exc:
            self._count_error(exc.code)
            yield error_message(req.id, exc)
        except TimeoutError:
            self._count_error(ErrorCode.DEADLINE_EXCEEDED)
            yield Error(id=req.id, code=ErrorCode.DEADLINE_EXCEEDED, message="deadline exceeded")
        except Exception as exc:
            log.exception("request %s failed", req.id)
            self._count_error(ErrorCode.INTERNAL)
            yield error_message(req.id, exc)
        finally:
            self.num_in_flight -= 1
            if lease is not None:
                lease.release()

    def refuse_oversized(self, req: GenerateRequest) -> None:
        """Raise `ProtocolError(PROMPT_TOO_LONG)` for a prompt whose size alone proves it too long.

        Cheap and safe before validation: callers that validate a request themselves (the OpenAI
        API) call it first, as `handle` does.
        """
        self.prompts.refuse_oversized(req, self._prompt_limit())

    def refuse_prompt_bytes(self, num_bytes: int) -> None:
        """Raise `ProtocolError(PROMPT_TOO_LONG)` when a plain prompt of `num_bytes` UTF-8 bytes is
        too long by its size alone: the QUIC listener asks before the prompt has arrived."""
        limit = self._prompt_limit()
        bound = getattr(self.tokenizer, "min_num_tokens", None)
        if limit is not None and callable(bound) and bound(num_bytes) > limit:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt: {num_bytes} bytes are more than {limit} tokens, the edge's limit",
            )

    # --- the paths -------------------------------------------------------------------------------
    async def _answer(self, req: GenerateRequest, clock: RequestClock) -> AsyncGenerator[Answer, None]:
        prompt = await self.prompts.tokenize(req, self._prompt_limit(), self._edge_fingerprint())
        prompt_ids = prompt.ids
        features = extract_features(prompt.text, len(prompt_ids), req.sampling.max_tokens, prompt.num_turns)
        decision = self.router.decide(features, req.tier, self._load_view())
        if decision.tier == "center":
            center = await self._open(req, clock, prompt_ids)
            if center is not None:
                self._record_route(decision, "before_prefill")
                relayed = self._relay(req, clock, center, decision, len(prompt_ids), 0)
                async with contextlib.aclosing(relayed) as items:
                    async for msg in items:
                        yield msg
                return
            decision = Decision("edge", CENTER_UNAVAILABLE, decision.score, is_degraded=True)
        self._record_route(decision, None)
        async with contextlib.aclosing(self._run_local(req, clock, prompt_ids, decision)) as items:
            async for msg in items:
                yield msg

    async def _run_local(
        self, req: GenerateRequest, clock: RequestClock, prompt_ids: list[int], decision: Decision
    ) -> AsyncGenerator[Answer, None]:
        may_escalate = req.tier == "auto" and not decision.is_degraded and self.pool is not None
        monitor = self.monitor_factory() if (may_escalate and self.monitor_factory) else None
        run = LocalRun(self.engine, req, prompt_ids, f"{req.id}#{next(_engine_ids)}", clock,
                       want_entropy=monitor is not None)
        moved: HandOver | None = None  # set once the answer leaves for the center
        async with run, contextlib.aclosing(run.outputs()) as outputs:
            async for out in outputs:
                if run.is_first_output:
                    self._observe_first(run)
                    mean = out.prompt_logprob_mean
                    again = self.router.reconsider(decision, mean) if may_escalate else None
                    if again is not None and again.tier == "center":
                        center = await self._open(req, clock, prompt_ids)
                        if center is not None:
                            moved = HandOver(center, again, "after_prefill", 0)
                            break
                if monitor is not None and out.entropies and monitor.observe(out.entropies):
                    monitor = None  # one hand-over attempt per request
                    center = await self._open_handover(req, clock, prompt_ids, run)
                    if center is not None:
                        handover = self.router.handover(decision)
                        moved = HandOver(center, handover, "mid_answer", run.num_streamed_tokens)
                        break
                chunk = run.chunk(out, decision.route() if run.num_streamed_tokens == 0 else None)
                if chunk is not None:
                    self._observe_tokens(clock, len(out.new_token_ids))
                    yield chunk
                if out.finish_reason == "deadline":
                    raise TimeoutError
                if out.finish_reason is not None:
                    self._record_tokens(run.num_prompt_tokens, run.num_streamed_tokens)
                    route = decision.route()
                    yield finish_done(req.id, run, route, self.model_name, out.finish_reason, clock)
                    return
        # leaving `async with run` aborted the local request: its KV is free before the relay
        if moved is None:
            raise ProtocolError(ErrorCode.INTERNAL, "engine stream ended without a finish reason")
        self._record_route(moved.decision, moved.when)
        async with contextlib.aclosing(
            self._relay(req, clock, moved.center, moved.decision, len(prompt_ids), moved.num_edge_tokens)
        ) as items:
            async for msg in items:
                yield msg

    async def _open(
        self,
        req: GenerateRequest,
        clock: RequestClock,
        prompt_ids: list[int],
        *,
        continuation: Continuation | None = None,
        max_tokens: int | None = None,
    ) -> CenterStream | None:
        if self.pool is None:
            return None
        return await open_center(
            self.pool, req, clock, prompt_ids, self.tokenizer, self._edge_fingerprint(),
            self._center_fingerprint(), continuation=continuation, max_tokens=max_tokens,
        )

    async def _open_handover(
        self, req: GenerateRequest, clock: RequestClock, prompt_ids: list[int], run: LocalRun
    ) -> CenterStream | None:
        """Start the center's continuation of what was streamed so far (None: keep going here)."""
        left = req.sampling.max_tokens - run.num_streamed_tokens
        if left < 1:
            return None
        cont = make_continuation(
            run.streamed_text,
            run.streamed_ids,
            edge_fingerprint=self._edge_fingerprint(),
            center_fingerprint=self._center_fingerprint(),
            reason="confidence_collapse",
        )
        return await self._open(req, clock, prompt_ids, continuation=cont, max_tokens=left)

    async def _relay(
        self,
        req: GenerateRequest,
        clock: RequestClock,
        center: CenterStream,
        decision: Decision,
        num_prompt_tokens: int,
        num_edge_tokens: int,
    ) -> AsyncGenerator[Answer, None]:
        route = decision.route()
        variant_for = getattr(self.pool, "variant_for", None)  # an A/B split (ab_pools.py)
        if callable(variant_for):
            route = msgspec.structs.replace(route, variant=variant_for(req))
        relayed = relay_center(req, clock, center, route, num_prompt_tokens, num_edge_tokens)
        async with contextlib.aclosing(relayed) as items:
            async for msg in items:
                if isinstance(msg, TokenChunk):
                    self._observe_tokens(clock, num_chunk_tokens(msg))
                elif isinstance(msg, Done):
                    self._record_tokens(num_prompt_tokens, msg.usage.completion_tokens)
                yield msg

    # --- helpers ----------------------------------------------------------------------------------
    def _prompt_limit(self) -> int | None:
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        max_len = getattr(self.engine, "max_model_len", None)
        return int(max_len) - 1 if isinstance(max_len, int) else None

    def _load_view(self) -> LoadView:
        center = self.pool.load_view() if self.pool is not None else None
        return LoadView.from_parts(self.engine.load(), center)

    def _edge_fingerprint(self) -> str:
        return str(getattr(self.tokenizer, "fingerprint", "") or "")

    def _center_fingerprint(self) -> str | None:
        fp = getattr(self.pool, "tokenizer_fingerprint", None)
        if callable(fp):
            fp = fp()
        return fp if isinstance(fp, str) else None

    # --- metrics (all optional) -------------------------------------------------------------------
    def _count_error(self, code: int) -> None:
        if self.metrics is not None:
            self.metrics.record_error(ErrorCode(code))

    def _record_route(self, decision: Decision, escalated_when: str | None) -> None:
        if self.metrics is not None:
            self.metrics.record_route(decision.tier, decision.reason)
            if escalated_when is not None:
                self.metrics.record_escalation(escalated_when)

    def _observe_first(self, run: LocalRun) -> None:
        if self.metrics is not None and run.queue_s is not None:
            self.metrics.observe_queue(run.queue_s)

    def _observe_tokens(self, clock: RequestClock, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        gap = clock.mark_token()
        if self.metrics is None:
            return
        if gap is None:
            self.metrics.observe_ttft(clock.first_token_s or 0.0)
        else:
            self.metrics.observe_itl(gap / num_tokens)

    def _record_tokens(self, num_prompt: int, num_completion: int) -> None:
        if self.metrics is not None:
            self.metrics.record_tokens(num_prompt, num_completion)


__all__ = ["Orchestrator", "engine_error"]
