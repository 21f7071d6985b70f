"""Per-request helpers of the orchestrator: its clock and deadline, and one local engine run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, cast

from isthmus.protocol import (
    Done,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    Route,
    Timings,
    TokenChunk,
    Usage,
    pack_ids,
)
from isthmus.protocol.messages import FinishReason

from .seams import EdgeEngine

if TYPE_CHECKING:  # the engine's output type only: importing it at run time would load the engine
    from isthmus.engine.core.outputs import EngineOutput

T = TypeVar("T")


class RequestClock:
    """Arrival time, deadline and token times of one request (seconds from `now()`)."""

    def __init__(self, now: Callable[[], float], timeout_ms: int | None) -> None:
        self.now = now
        self.arrived = now()
        self.deadline = None if timeout_ms is None else self.arrived + timeout_ms / 1000.0
        self.queue_s: float | None = None
        self.first_token_s: float | None = None  # seconds from arrival to the first token sent
        self._last_token: float | None = None

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` within the deadline; raise `TimeoutError` past it."""
        if self.deadline is None:
            return await awaitable
        left = self.deadline - self.now()
        if left <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise TimeoutError
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that arrives
        # as the awaited item completes, and a cancelled request must stop.
        async with asyncio.timeout(left):
            return await awaitable

    def mark_token(self) -> float | None:
        """Note that tokens were sent now; return the gap since the previous ones (None: first)."""
        now = self.now()
        prev = self._last_token
        self._last_token = now
        if prev is None:
            self.first_token_s = now - self.arrived
            return None
        return now - prev

    def timings(self) -> Timings:
        total = self.now() - self.arrived
        return Timings(
            queue_ms=max(0.0, (self.queue_s or 0.0) * 1000.0),
            first_token_ms=max(0.0, (total if self.first_token_s is None else self.first_token_s) * 1000.0),
            total_ms=max(0.0, total * 1000.0),
        )


class LocalRun:
    """One request on the edge's own engine. Leaving the `async with` aborts it if unfinished."""

    def __init__(
        self,
        engine: EdgeEngine,
        req: GenerateRequest,
        prompt_ids: list[int],
        engine_id: str,
        clock: RequestClock,
        *,
        want_entropy: bool = True,
    ) -> None:
        self.want_entropy = want_entropy  # a hand-over monitor watches this answer's entropies
        self.engine = engine
        self.req = req
        self.prompt_ids = prompt_ids
        self.engine_id = engine_id
        self.clock = clock
        self.streamed_text = ""
        self.streamed_ids: list[int] = []
        self.num_prompt_tokens = len(prompt_ids)
        self.queue_s: float | None = None
        self.is_finished = False
        self.is_first_output = False  # True while the first output is being handled
        self._gen: AsyncIterator[EngineOutput] | None = None
        self._num_outputs = 0

    async def __aenter__(self) -> LocalRun:
        from isthmus.engine.core.async_engine import EngineRequest
        from isthmus.engine.core.convert import params_from_options

        try:
            params = params_from_options(self.req.sampling, entropy=self.want_entropy)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"sampling: {exc}") from exc
        ereq = EngineRequest(
            request_id=self.engine_id,
            prompt_ids=self.prompt_ids,
            params=params,
            priority=self.req.priority,
            deadline=self.clock.deadline,
            want_prompt_logprobs=True,
        )
        self._gen = self.engine.generate(ereq)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.abort()

    async def outputs(self) -> AsyncGenerator[EngineOutput, None]:
        """The engine's outputs, each within the request's deadline."""
        assert self._gen is not None
        while not self.is_finished:
            try:
                out = await self.clock.wait(anext(self._gen))
            except StopAsyncIteration:
                self.is_finished = True
                return
            except (ProtocolError, TimeoutError):
                raise
            except Exception as exc:
                self.is_finished = True  # refused by the engine: nothing to abort
                raise engine_error(exc) from exc
            self.is_first_output = self._num_outputs == 0
            self._num_outputs += 1
            if self.is_first_output and out.queue_s is not None:
                self.queue_s = float(out.queue_s)
                self.clock.queue_s = self.queue_s
            if out.finish_reason is not None:
                self.is_finished = True
            yield out

    def chunk(self, out: EngineOutput, route: Route | None = None) -> TokenChunk | None:
        """The wire chunk for one engine output (None when it holds nothing to send).

        `route` goes on the answer's first chunk (the caller passes it until a chunk is sent).
        """
        ids = list(out.new_token_ids)
        text = out.text_delta or ""
        if not ids and not text:
            return None
        self.streamed_ids.extend(ids)
        self.streamed_text += text
        logprobs = list(out.logprobs) if (self.req.sampling.logprobs is not None and out.logprobs) else None
        return TokenChunk(
            id=self.req.id, token_ids=pack_ids(ids), text=text, logprobs=logprobs, tier="edge", route=route
        )

    @property
    def num_streamed_tokens(self) -> int:
        return len(self.streamed_ids)

    async def abort(self) -> None:
        """Stop the engine request (idempotent) and close its output stream."""
        gen, self._gen = self._gen, None
        if not self.is_finished:
            self.is_finished = True
            await self.engine.abort(self.engine_id)
        if gen is not None and hasattr(gen, "aclose"):
            await gen.aclose()


def engine_error(exc: BaseException) -> ProtocolError:
    """The wire error for an engine refusal (queue full, prompt too long, bad request, stopped)."""
    from isthmus.engine.core.async_engine import EngineNotRunning
    from isthmus.engine.core.scheduler import InvalidRequest, PromptTooLong, QueueFull

    if isinstance(exc, QueueFull):
        return ProtocolError(ErrorCode.OVERLOADED, f"edge queue full: {exc}", retryable=True)
    if isinstance(exc, PromptTooLong):
        return ProtocolError(ErrorCode.PROMPT_TOO_LONG, f"prompt: {exc}")
    if isinstance(exc, InvalidRequest):
        return ProtocolError(ErrorCode.INVALID_MESSAGE, f"request: {exc}")
    if isinstance(exc, EngineNotRunning):
        return ProtocolError(ErrorCode.UNAVAILABLE, "edge engine not running", retryable=True)
    return ProtocolError(ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})")


def finish_done(
    request_id: str, run: LocalRun, route: Route, model: str, finish_reason: str, clock: RequestClock
) -> Done:
    """The `Done` of an answer the edge finished itself."""
    return Done(
        id=request_id,
        finish_reason=cast(FinishReason, finish_reason),  # the caller ended "deadline" as a timeout
        usage=Usage(prompt_tokens=run.num_prompt_tokens, completion_tokens=run.num_streamed_tokens),
        route=route,
        timings=clock.timings(),
        model=model,
    )
