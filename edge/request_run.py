"""Per-request helpers of the orchestrator: its clock and deadline, and one local engine run.

Both are the serving adapter both tiers share (`isthmus.engine.core.serving`); this module only
builds the edge's engine request: sampling params with entropy when a hand-over monitor watches,
the request's deadline passed to the engine, the prompt's logprobs asked for (the router's
after-prefill check reads them).
"""

from __future__ import annotations

from isthmus.engine.core.async_engine import EngineRequest
from isthmus.engine.core.serving import ServingRun
from isthmus.engine.core.serving_clock import RequestClock
from isthmus.engine.core.serving_wire import done_message, sampling_params
from isthmus.engine.core.serving_wire import engine_error as _engine_error
from isthmus.protocol import Done, GenerateRequest, ProtocolError, Route

from .seams import EdgeEngine


class LocalRun(ServingRun):
    """One request on the edge's own engine. Leaving the `async with` aborts it if unfinished.

    Raises `ProtocolError(INVALID_MESSAGE)` for sampling options the engine refuses.
    """

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
        ereq = EngineRequest(
            request_id=engine_id,
            prompt_ids=prompt_ids,
            params=sampling_params(req.sampling, entropy=want_entropy),
            priority=req.priority,
            deadline=clock.deadline,  # the engine ends it "deadline" even while it waits in queue
            want_prompt_logprobs=True,
        )
        wants_logprobs = req.sampling.logprobs is not None
        super().__init__(engine, ereq, req.id, clock, tier="edge", want_logprobs=wants_logprobs)
        self.want_entropy = want_entropy  # a hand-over monitor watches this answer's entropies
        self.req = req
        self.prompt_ids = prompt_ids


def engine_error(exc: BaseException) -> ProtocolError:
    """The wire error for an edge engine refusal (queue full, prompt too long, bad request, stopped)."""
    return _engine_error(exc, "edge")


def finish_done(
    request_id: str, run: LocalRun, route: Route, model: str, finish_reason: str, clock: RequestClock
) -> Done:
    """The `Done` of an answer the edge finished itself."""
    return done_message(
        request_id, finish_reason, num_prompt_tokens=run.num_prompt_tokens,
        num_completion_tokens=run.num_streamed_tokens, route=route, timings=clock.timings(), model=model,
    )


__all__ = ["LocalRun", "RequestClock", "engine_error", "finish_done"]
