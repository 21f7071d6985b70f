"""The center's request handling: Generate, Status and Drain over an `AsyncEngine`.

Transport-free: the gRPC shell (`center/server.py`) decodes bodies and calls these coroutines;
tests can call them directly. Every failure a client can cause becomes a protocol `Error`, never
an exception out of the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from isthmus.center.kv_fetch import KVFetcher, KVTicketDesk, resolve_kv
from isthmus.center.kv_migration import KVPolicy, kv_of, with_kv
from isthmus.center.meter import RateMeter
from isthmus.center.migration import StreamedSoFar, is_migration, migrated_message, resume_state
from isthmus.center.prepare import RequestPreparer
from isthmus.center.request import PreparedRequest
from isthmus.center.seams import CenterEngine, CenterTokenizer
from isthmus.engine.core.async_engine import EngineRequest
from isthmus.engine.core.serving import ServedMessage, ServingRun
from isthmus.engine.core.serving_clock import RequestClock
from isthmus.engine.core.state import RequestState
from isthmus.protocol import (
    Error,
    ErrorCode,
    GenerateRequest,
    Migrated,
    ProtocolError,
    Route,
    SamplingOptions,
    Status,
    TokenChunk,
    error_message,
    limits,
    num_ids,
)

log = logging.getLogger(__name__)

ROUTE = Route(tier="center", reason="center", score=0.0)
DRAINED = ProtocolError(ErrorCode.DRAINING, "center drained before the answer finished", retryable=True)


@dataclass(slots=True)
class InFlight:
    """One Generate being served."""

    engine_id: str
    request_id: str
    run: ServingRun | None = None  # the engine request being served (set once it is prepared)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    sent: StreamedSoFar = field(default_factory=StreamedSoFar)  # what the stream has sent
    exported: RequestState | None = None  # set by `export`: the stream ends with `migrated`
    migrated: Migrated | None = None


class CenterService:
    """Generate / Status / Drain over one engine (TP or not: the engine hides it).

    ``engine`` is an `isthmus.engine.core.async_engine.AsyncEngine` already started; ``tokenizer`` an
    `isthmus.tokenizer.Tokenizer`. ``on_drained`` is called once, after a drain finished.
    """

    def __init__(
        self,
        engine: CenterEngine,
        tokenizer: CenterTokenizer,
        model_name: str,
        max_model_len: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        weights_digest: str | None = None,
    ) -> None:
        self.engine = engine
        if weights_digest is None:  # the model folder's manifest digest, reported in Status
            from isthmus.engine.model.weights_sync import folder_digest

            model = getattr(getattr(engine, "options", None), "model", "")
            weights_digest = folder_digest(model) if model else ""
        self.weights_digest = weights_digest
        self.tokenizer = tokenizer
        self.model_name = model_name[: limits.MAX_MODEL_NAME_LEN]
        self.max_model_len = max_model_len
        self.clock = clock
        self.is_ready = False
        self.is_draining = False
        self.meter = RateMeter()
        self.in_flight: dict[str, InFlight] = {}
        self.kv_policy = KVPolicy()  # how `export` migrates: ids only, or with KV blocks (--migrate-kv)
        self.kv_desk: KVTicketDesk | None = None  # holds exported KV too large for the message
        self.kv_fetcher: KVFetcher | None = None  # fetches such KV from the exporting replica
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        # large prompts are tokenized in worker threads: Status and other calls keep being answered
        self.preparer = RequestPreparer(tokenizer, max_model_len)

    def close(self) -> None:
        """Release the tokenizer threads (the engine is the caller's to stop)."""
        self.preparer.close()

    # --- Generate ---------------------------------------------------------------------------------

    async def generate(
        self, req: GenerateRequest | ProtocolError, time_remaining: float | None = None
    ) -> AsyncGenerator[ServedMessage | Migrated, None]:
        """Stream the answer: TokenChunk ... then Done, or one Error (or `Migrated`: `export`).

        ``req`` may be the `ProtocolError` its decoding raised (answered with that error).
        ``time_remaining`` (seconds) is the transport's deadline; ``req.timeout_ms`` another; the
        earlier wins. Cancelling the consumer (``aclose`` / task cancel) aborts the engine request.
        """
        if isinstance(req, ProtocolError):
            yield error_message("", req)
            return
        refusal = self._refusal(req.id)
        if refusal is not None:
            yield refusal
            return
        clock = RequestClock(self.clock, req.timeout_ms, time_remaining_s=time_remaining)
        req = await resolve_kv(req, self.kv_fetcher, getattr(self.engine, "kv_spec", None))
        flight = InFlight(engine_id=f"{req.id}#{next(self._ids)}", request_id=req.id, sampling=req.sampling)
        try:
            prepared = await self.preparer.prepare(req)
            engine_req = _engine_request(req, prepared, flight)
        except ProtocolError as exc:
            yield error_message(req.id, exc)
            return
        flight.run = ServingRun(self.engine, engine_req, req.id, clock, tier="center",
                                want_logprobs=req.sampling.logprobs is not None,
                                num_prompt_tokens=len(prepared.prompt_ids))
        self.in_flight[flight.engine_id] = flight
        try:
            async with contextlib.aclosing(flight.run.messages(ROUTE, self.model_name)) as answer:
                async for msg in answer:
                    if flight.migrated is not None:  # exported: end with what it had, then its state
                        if not isinstance(msg, TokenChunk):  # already in the state otherwise
                            for last in self._migrated_end(flight):
                                yield last
                            return
                        continue
                    if isinstance(msg, TokenChunk):
                        flight.sent.add(num_ids(msg.token_ids), msg.text)
                        self.meter.add(num_ids(msg.token_ids), self.clock())
                    yield msg
        finally:
            self.in_flight.pop(flight.engine_id, None)
            flight.done.set()

    @staticmethod
    def _migrated_end(flight: InFlight) -> list[TokenChunk | Migrated]:
        """An exported request's last messages: what its state holds that was not sent, then it."""
        assert flight.exported is not None and flight.migrated is not None
        tail = flight.sent.tail(flight.request_id, flight.exported)
        return ([] if tail is None else [tail]) + [flight.migrated]

    def _refusal(self, request_id: str) -> Error | None:
        if self.is_draining:
            return Error(id=request_id, code=ErrorCode.DRAINING, message="center is draining", retryable=True)
        if not self.is_ready:
            return Error(
                id=request_id, code=ErrorCode.UNAVAILABLE, message="center is not ready", retryable=True
            )
        return None

    async def _abort(self, engine_id: str) -> None:
        try:
            await self.engine.abort(engine_id)
        except Exception:
            log.exception("abort %s failed", engine_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Export (live migration) -----------------------------------------------------------------

    def export(self, request_id: str) -> Migrated | Error:
        """End in-flight request ``request_id`` here and return its state (NOT_FOUND if none).

        Its stream sends what the state holds that it had not sent yet, then the same `Migrated`;
        the engine request is aborted (its KV blocks freed).
        """
        flight = next(
            (f for f in self.in_flight.values() if f.request_id == request_id and f.migrated is None), None
        )
        if flight is None:
            return Error(id=request_id, code=ErrorCode.NOT_FOUND, message="no such request in flight here")
        try:
            state = self.engine.export_state(flight.engine_id)
        except KeyError:
            return Error(id=request_id, code=ErrorCode.NOT_FOUND,
                         message="request is not running here (finished, or not admitted yet)")
        flight.exported = state
        flight.migrated = migrated_message(
            request_id, state, flight.sampling, self.tokenizer.fingerprint, flight.sent.handover_text
        )
        flight.migrated = with_kv(flight.migrated, self.engine, flight.engine_id, self.kv_policy,
                                  self.kv_desk)
        self._spawn(self._abort(flight.engine_id))
        return flight.migrated

    def export_all(self) -> int:
        """Export every in-flight request (a migrating drain); returns how many were exported."""
        ids = {f.request_id for f in self.in_flight.values()}
        return sum(1 for rid in ids if isinstance(self.export(rid), Migrated))

    # --- Status -----------------------------------------------------------------------------------

    def status(self) -> Status:
        load = self.engine.load()
        return Status(
            tier="center",
            model=self.model_name,
            tokenizer_fingerprint=self.tokenizer.fingerprint,
            num_running=load.num_running,
            num_waiting=load.num_waiting,
            num_free_kv_blocks=load.num_free_kv_blocks,
            num_total_kv_blocks=load.num_total_kv_blocks,
            tokens_per_s=self.meter.rate(self.clock()),
            is_ready=self.is_ready and not self.is_draining,
            is_draining=self.is_draining,
            prefix_cache_hit_rate=load.prefix_cache_hit_rate,
            num_cached_kv_blocks=load.num_cached_kv_blocks,
            num_prefix_evictions=load.num_prefix_evictions,
            weights_digest=self.weights_digest,
        )

    # --- Drain ------------------------------------------------------------------------------------

    def begin_drain(self) -> int:
        """Stop admitting new requests; returns how many are in flight."""
        self.is_draining = True
        return len(self.in_flight)

    async def finish_in_flight(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for in-flight requests, then abort the rest (retryable DRAINING).

        Returns how many had to be aborted.
        """
        deadline = self.clock() + grace_s
        while self.in_flight and self.clock() < deadline:
            waits = [asyncio.ensure_future(f.done.wait()) for f in list(self.in_flight.values())]
            _, pending = await asyncio.wait(waits, timeout=max(deadline - self.clock(), 0.0),
                                            return_when=asyncio.ALL_COMPLETED)
            for w in pending:
                w.cancel()
        leftovers = list(self.in_flight.values())
        for flight in leftovers:
            if flight.run is not None:
                await flight.run.interrupt(DRAINED)
        for flight in leftovers:  # let their streams write the Error before the server stops
            try:
                await asyncio.wait_for(flight.done.wait(), timeout=5.0)
            except TimeoutError:
                pass
        return len(leftovers)


def _engine_request(req: GenerateRequest, prepared: PreparedRequest, flight: InFlight) -> EngineRequest:
    """The engine request for ``req``. A migrated one resumes its exported state (raises
    `ProtocolError` if it cannot); an exact hand-over resumes the edge's answer as
    `RequestState.handed_over` (its text was streamed already: it is not sent again)."""
    state: RequestState | None = None
    if is_migration(req):
        state = resume_state(req, prepared.prompt_ids, prepared.num_continuation_tokens,
                             prepared.is_exact_continuation, prepared.params)
        flight.sent = StreamedSoFar(base_ids=len(state.output_ids), base_text=state.text)
    elif prepared.is_exact_continuation and req.continuation is not None:
        text, split = req.continuation.text, len(prepared.prompt_ids) - prepared.num_continuation_tokens
        state = RequestState.handed_over(req.id, prepared.prompt_ids[:split], prepared.prompt_ids[split:],
                                         text, prepared.params, priority=req.priority)
        flight.sent = StreamedSoFar(base_text=text, handover_text=text)
    prompt_ids = state.prompt_ids if state is not None else prepared.prompt_ids
    return EngineRequest(request_id=flight.engine_id, prompt_ids=prompt_ids, params=prepared.params,
                         priority=req.priority, resume=state, kv=kv_of(req))
