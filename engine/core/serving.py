"""One engine request served as wire messages: the adapter both tiers use.

The edge's local answers and the center's `Generate` run an `AsyncEngine` request the same way:

    run = ServingRun(engine, engine_request, request_id, clock, tier="center", want_logprobs=False)
    async with contextlib.aclosing(run.messages(route, model)) as answer:
        async for msg in answer:
            ...  # TokenChunk ... then exactly one Done or Error

- every engine output is awaited within the request's deadline (`RequestClock.wait`): past it
  the answer ends with DEADLINE_EXCEEDED, as it does when the engine itself ends it "deadline";
- engine refusals become protocol errors through one table (`serving_wire.ENGINE_ERRORS`);
- closing the answer (it finished, failed, or its consumer went away: cancel, disconnect)
  aborts the engine request if it has not finished, so its KV blocks are freed;
- `interrupt(error)` lets the server end an answer early with its own error (a drain).

A caller that must look at each engine output itself (the edge's hand-over monitor reads
entropies and the prompt's perplexity) iterates `outputs()` inside `async with run` (leaving it
aborts an unfinished request) and turns them into messages with `chunk()` and `final()`, the
pieces `messages()` is made of.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from isthmus.engine.core.async_engine import EngineRequest
from isthmus.engine.core.outputs import EngineOutput
from isthmus.engine.core.serving_clock import RequestClock
from isthmus.engine.core.serving_wire import done_message, engine_error, finite_logprobs
from isthmus.protocol import Done, Error, ErrorCode, ProtocolError, Route, TokenChunk, error_message, pack_ids
from isthmus.protocol.messages import Tier

ServedMessage = TokenChunk | Done | Error
ENDED_EARLY = "engine ended the request early"  # its stream stopped without a finish reason


class ServingEngine(Protocol):
    """What serving needs of an engine: `AsyncEngine`'s request API."""

    def generate(self, req: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    async def abort(self, request_id: str) -> bool: ...


def deadline_error(request_id: str) -> Error:
    """The answer's end when its deadline passed."""
    return Error(id=request_id, code=ErrorCode.DEADLINE_EXCEEDED, message="deadline exceeded")


class ServingRun:
    """One engine request and what its answer has sent so far (see the module doc)."""

    def __init__(
        self,
        engine: ServingEngine,
        request: EngineRequest,
        request_id: str,
        clock: RequestClock,
        *,
        tier: Tier,
        want_logprobs: bool,
        num_prompt_tokens: int | None = None,
    ) -> None:
        self.engine = engine
        self.request = request
        self.request_id = request_id  # the wire's id (the engine's is `request.request_id`)
        self.clock = clock
        self.tier: Tier = tier
        self.want_logprobs = want_logprobs
        self.num_prompt_tokens = len(request.prompt_ids) if num_prompt_tokens is None else num_prompt_tokens
        self.streamed_text = ""
        self.streamed_ids: list[int] = []
        self.queue_s: float | None = None
        self.is_finished = False
        self.is_first_output = False  # True while the first output is being handled
        self.interrupted: ProtocolError | None = None  # set by `interrupt`: how the answer ends
        self._gen: AsyncIterator[EngineOutput] | None = None
        self._num_outputs = 0

    @property
    def engine_id(self) -> str:
        return self.request.request_id

    @property
    def num_streamed_tokens(self) -> int:
        return len(self.streamed_ids)

    async def __aenter__(self) -> ServingRun:
        self._gen = self.engine.generate(self.request)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.abort()

    async def outputs(self) -> AsyncGenerator[EngineOutput, None]:
        """The engine's outputs, each within the deadline (`TimeoutError` past it).

        An engine refusal or failure raises its `ProtocolError` (`engine_error`).
        """
        gen = self._gen
        if gen is None:
            raise RuntimeError("ServingRun.outputs() outside `async with`")
        while not self.is_finished:
            try:
                out = await self.clock.wait(anext(gen))
            except StopAsyncIteration:
                self.is_finished = True
                return
            except (ProtocolError, TimeoutError):
                raise
            except Exception as exc:
                self.is_finished = True  # refused by (or lost with) the engine: nothing to abort
                raise engine_error(exc, self.tier) from exc
            self.is_first_output = self._num_outputs == 0
            self._num_outputs += 1
            if self.queue_s is None and out.queue_s is not None:
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
        logprobs = finite_logprobs(out.logprobs) if (self.want_logprobs and out.logprobs) else None
        return TokenChunk(
            id=self.request_id, token_ids=pack_ids(ids), text=text, logprobs=logprobs, tier=self.tier,
            route=route,
        )

    def done(self, finish_reason: str, route: Route, model: str) -> Done:
        """The `Done` of this answer: usage counts what it streamed, timings come from its clock."""
        return done_message(
            self.request_id, finish_reason, num_prompt_tokens=self.num_prompt_tokens,
            num_completion_tokens=self.num_streamed_tokens, route=route, timings=self.clock.timings(),
            model=model,
        )

    def final(self, finish_reason: str, route: Route, model: str) -> Done | Error:
        """How an answer whose engine request finished ends: `Done`, or the reason it was cut."""
        if self.interrupted is not None:
            return error_message(self.request_id, self.interrupted)
        if finish_reason == "deadline":
            return deadline_error(self.request_id)
        return self.done(finish_reason, route, model)

    async def messages(
        self, route: Route, model: str, *, first_chunk_route: Route | None = None
    ) -> AsyncGenerator[ServedMessage, None]:
        """The whole answer: `TokenChunk`s, then one `Done` (with `route`, `model`) or `Error`.

        Enters and leaves the run itself: closing this generator early aborts the engine request,
        and so does a terminal `Error` (before it is yielded). Each chunk marks the clock
        (first-token time); `first_chunk_route` goes on the first chunk.
        """
        end: Error | None = None
        async with self, contextlib.aclosing(self.outputs()) as outputs:
            try:
                async for out in outputs:
                    if self.interrupted is not None:
                        break
                    chunk = self.chunk(out, first_chunk_route if self.num_streamed_tokens == 0 else None)
                    if chunk is not None:
                        self.clock.mark_token()
                        yield chunk
                    if out.finish_reason is not None:
                        final = self.final(out.finish_reason, route, model)
                        if isinstance(final, Done):
                            yield final
                            return
                        end = final
                        break
            except ProtocolError as exc:
                end = error_message(self.request_id, exc)
            except TimeoutError:
                end = deadline_error(self.request_id)
            if end is None and self.interrupted is not None:
                end = error_message(self.request_id, self.interrupted)
            await self.abort()
            yield end or Error(id=self.request_id, code=ErrorCode.INTERNAL, message=ENDED_EARLY)

    async def interrupt(self, error: ProtocolError) -> None:
        """End the answer early with ``error`` (the first reason given wins); frees its KV blocks.

        Safe from another task while `messages()` runs: the engine ends the stream and the
        answer's last message is ``error``.
        """
        if self.interrupted is None:
            self.interrupted = error
        if not self.is_finished:
            await self.engine.abort(self.engine_id)

    async def abort(self) -> None:
        """Stop the engine request (idempotent) and close its output stream."""
        gen, self._gen = self._gen, None
        if not self.is_finished:
            self.is_finished = True
            await self.engine.abort(self.engine_id)
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            await aclose()


__all__ = ["ServedMessage", "ServingEngine", "ServingRun", "deadline_error"]
