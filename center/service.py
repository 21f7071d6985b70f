"""The center's request handling: Generate, Status and Drain over an `AsyncEngine`.

Transport-free: the gRPC shell (`center/server.py`) decodes bodies and calls these coroutines;
tests can call them directly. Every failure a client can cause becomes a protocol `Error`, never
an exception out of the handler.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from isthmus.center.meter import RateMeter
from isthmus.center.migration import StreamedSoFar, is_migration, migrated_message, resume_state
from isthmus.center.prepare import RequestPreparer
from isthmus.center.request import PreparedRequest
from isthmus.center.seams import CenterEngine, CenterTokenizer
from isthmus.engine.core.async_engine import EngineNotRunning, EngineRequest
from isthmus.engine.core.scheduler import InvalidRequest, PromptTooLong, QueueFull, SchedulerError
from isthmus.engine.core.state import RequestState
from isthmus.protocol import (
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    Migrated,
    ProtocolError,
    Route,
    SamplingOptions,
    Status,
    TokenChunk,
    Usage,
    error_message,
    limits,
    pack_ids,
)
from isthmus.protocol.messages import FinishReason, Timings

log = logging.getLogger(__name__)

ROUTE = Route(tier="center", reason="center", score=0.0)


@dataclass(slots=True)
class InFlight:
    """One Generate being served."""

    engine_id: str
    request_id: str
    aborted_because: ErrorCode | None = None  # why the server aborted it (deadline, drain)
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
    ) -> AsyncGenerator[TokenChunk | Done | Error | Migrated, None]:
        """Stream the answer: TokenChunk ... then Done, or one Error.

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
        try:
            prepared = await self.preparer.prepare(req)
        except ProtocolError as exc:
            yield error_message(req.id, exc)
            return
        flight = InFlight(engine_id=f"{req.id}#{next(self._ids)}", request_id=req.id, sampling=req.sampling)
        t_start = self.clock()
        timeout_s = _earliest(time_remaining, None if req.timeout_ms is None else req.timeout_ms / 1000)
        try:
            engine_req = _engine_request(req, prepared, flight)
        except ProtocolError as exc:
            yield error_message(req.id, exc)
            return
        self.in_flight[flight.engine_id] = flight
        watchdog = None
        if timeout_s is not None:
            watchdog = asyncio.get_running_loop().call_later(
                max(timeout_s, 0.0), self._abort_soon, flight, ErrorCode.DEADLINE_EXCEEDED
            )
        finished = False
        num_generated = 0
        first_token_s: float | None = None
        queue_s = 0.0
        try:
            async for out in self.engine.generate(engine_req):
                if flight.migrated is not None:  # exported: end with what it had, then its state
                    if out.finish_reason is None:
                        continue  # already in the state; the abort `export` began ends the stream
                    finished = True
                    assert flight.exported is not None
                    tail = flight.sent.tail(req.id, flight.exported)
                    if tail is not None:
                        yield tail
                    yield flight.migrated
                    return
                if out.new_token_ids or out.text_delta:
                    flight.sent.add(len(out.new_token_ids), out.text_delta)
                    now = self.clock()
                    if first_token_s is None:
                        first_token_s = now - t_start
                    num_generated += len(out.new_token_ids)
                    self.meter.add(len(out.new_token_ids), now)
                    yield TokenChunk(
                        id=req.id,
                        token_ids=pack_ids(out.new_token_ids),
                        text=out.text_delta,
                        logprobs=_finite(out.logprobs),
                        tier="center",
                    )
                if out.queue_s is not None:
                    queue_s = out.queue_s
                if out.finish_reason is not None:
                    finished = True
                    if out.finish_reason == "deadline":
                        flight.aborted_because = flight.aborted_because or ErrorCode.DEADLINE_EXCEEDED
                    if flight.aborted_because is not None:
                        yield _aborted_error(req.id, flight.aborted_because)
                        return
                    total_s = self.clock() - t_start
                    yield Done(
                        id=req.id,
                        finish_reason=cast(FinishReason, out.finish_reason),  # "deadline" ended above
                        usage=Usage(prompt_tokens=len(prepared.prompt_ids), completion_tokens=num_generated),
                        route=ROUTE,
                        timings=Timings(
                            queue_ms=_ms(queue_s),
                            first_token_ms=_ms(first_token_s or total_s),
                            total_ms=_ms(total_s),
                        ),
                        model=self.model_name,
                    )
                    return
            finished = True  # the stream ended without a finish reason: the engine dropped it
            yield Error(id=req.id, code=ErrorCode.INTERNAL, message="engine ended the request early")
        except (ProtocolError, SchedulerError, EngineNotRunning) as exc:  # refused by the engine
            finished = True
            yield error_message(req.id, _as_protocol_error(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            finished = True
            log.exception("generate %s failed", req.id)
            yield error_message(req.id, exc)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if not finished:  # the caller went away (cancel, deadline, disconnect)
                self._spawn(self._abort(flight.engine_id))
            self.in_flight.pop(flight.engine_id, None)
            flight.done.set()

    def _refusal(self, request_id: str) -> Error | None:
        if self.is_draining:
            return Error(id=request_id, code=ErrorCode.DRAINING, message="center is draining", retryable=True)
        if not self.is_ready:
            return Error(
                id=request_id, code=ErrorCode.UNAVAILABLE, message="center is not ready", retryable=True
            )
        return None

    def _abort_soon(self, flight: InFlight, because: ErrorCode) -> None:
        if flight.aborted_because is None:
            flight.aborted_because = because
        self._spawn(self._abort(flight.engine_id))

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
            self._abort_soon(flight, ErrorCode.DRAINING)
        for flight in leftovers:  # let their streams write the Error before the server stops
            try:
                await asyncio.wait_for(flight.done.wait(), timeout=5.0)
            except TimeoutError:
                pass
        return len(leftovers)


def _engine_request(req: GenerateRequest, prepared: PreparedRequest, flight: InFlight) -> EngineRequest:
    """The engine request for ``req``; a migrated one resumes (raises `ProtocolError` if it cannot)."""
    if is_migration(req):
        state = resume_state(req, prepared.prompt_ids, prepared.num_continuation_tokens,
                             prepared.is_exact_continuation, prepared.params)
        flight.sent = StreamedSoFar(base_ids=len(state.output_ids), base_text=state.text)
        return EngineRequest(request_id=flight.engine_id, prompt_ids=state.prompt_ids, params=prepared.params,
                             priority=req.priority, resume=state)
    continued = None
    if prepared.is_exact_continuation and req.continuation is not None:
        continued = (prepared.num_continuation_tokens, req.continuation.text)
        flight.sent = StreamedSoFar(base_text=req.continuation.text, handover_text=req.continuation.text)
    return EngineRequest(request_id=flight.engine_id, prompt_ids=prepared.prompt_ids, params=prepared.params,
                         priority=req.priority, continued=continued)


def _as_protocol_error(exc: Exception) -> ProtocolError:
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, QueueFull):
        return ProtocolError(ErrorCode.OVERLOADED, f"center overloaded: {exc}", retryable=True)
    if isinstance(exc, PromptTooLong):
        return ProtocolError(ErrorCode.PROMPT_TOO_LONG, str(exc))
    if isinstance(exc, InvalidRequest):
        return ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc))
    return ProtocolError(ErrorCode.UNAVAILABLE, f"center engine unavailable: {exc}", retryable=True)


def _aborted_error(request_id: str, because: ErrorCode) -> Error:
    if because == ErrorCode.DEADLINE_EXCEEDED:
        return Error(id=request_id, code=because, message="deadline exceeded", retryable=False)
    return Error(id=request_id, code=because, message="center drained before the answer finished",
                 retryable=True)


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _ms(seconds: float) -> float:
    return max(seconds, 0.0) * 1000.0


def _finite(values: list[float] | None) -> list[float] | None:
    # -inf logprobs (a token the filters ruled out) cannot travel: the wire takes finite floats.
    if values is None:
        return None
    return [v if math.isfinite(v) else -1e30 for v in values]
