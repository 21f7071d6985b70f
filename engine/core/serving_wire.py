"""Between the engine's types and the wire's, for both tiers: params, errors, `Done`, logprobs.

- `sampling_params`: a request's `SamplingOptions` as engine `SamplingParams`; a value the engine
  refuses is INVALID_MESSAGE, never a crash.
- `engine_error`: an engine refusal as a `ProtocolError`, from one table (`ENGINE_ERRORS`); the
  tier's name goes into the message so a client can tell which tier refused.
- `done_message`: the `Done` of a finished answer (usage and timings included).
- `finite_logprobs`: logprobs the wire can carry (it takes finite floats only).
"""

from __future__ import annotations

import logging
import math
from typing import cast

from isthmus.engine.core.async_engine import EngineNotRunning
from isthmus.engine.core.convert import params_from_options
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.scheduler import InvalidRequest, PromptTooLong, QueueFull, SchedulerError
from isthmus.protocol import (
    Done,
    ErrorCode,
    ProtocolError,
    Route,
    SamplingOptions,
    Timings,
    Usage,
)
from isthmus.protocol.messages import FinishReason, Tier

log = logging.getLogger(__name__)

# Engine exception -> (wire code, message, retryable). First match wins (subclasses first);
# "{tier}" is the serving tier, "{exc}" the exception's text.
ENGINE_ERRORS: tuple[tuple[type[Exception], ErrorCode, str, bool], ...] = (
    (QueueFull, ErrorCode.OVERLOADED, "{tier} overloaded: {exc}", True),
    (PromptTooLong, ErrorCode.PROMPT_TOO_LONG, "prompt: {exc}", False),
    (InvalidRequest, ErrorCode.INVALID_MESSAGE, "request: {exc}", False),
    (SchedulerError, ErrorCode.UNAVAILABLE, "{tier} engine unavailable: {exc}", True),
    (EngineNotRunning, ErrorCode.UNAVAILABLE, "{tier} engine not running", True),
)

MIN_WIRE_LOGPROB = -1e30  # stands for -inf (a token the filters ruled out) on the wire


def engine_error(exc: BaseException, tier: Tier) -> ProtocolError:
    """The wire error for an engine refusal (queue full, prompt too long, bad request, stopped).

    A `ProtocolError` is kept as it is; an exception outside `ENGINE_ERRORS` is INTERNAL and
    logged, and only its type name reaches the client (no paths or tensors leak).
    """
    if isinstance(exc, ProtocolError):
        return exc
    for kind, code, message, retryable in ENGINE_ERRORS:
        if isinstance(exc, kind):
            return ProtocolError(code, message.format(tier=tier, exc=exc), retryable=retryable)
    log.error("%s engine failed", tier, exc_info=exc)
    return ProtocolError(ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})")


def sampling_params(opts: SamplingOptions, *, entropy: bool) -> SamplingParams:
    """`opts` as engine params; raises `ProtocolError(INVALID_MESSAGE)` for values it refuses.

    ``entropy``: compute each token's entropy (only a hand-over monitor reads it).
    """
    try:
        return params_from_options(opts, entropy=entropy)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"sampling: {exc}") from exc


def done_message(
    request_id: str,
    finish_reason: str,
    *,
    num_prompt_tokens: int,
    num_completion_tokens: int,
    route: Route,
    timings: Timings,
    model: str,
) -> Done:
    """The `Done` of an answer that finished ("stop", "length" or "cancelled")."""
    if finish_reason not in ("stop", "length", "cancelled"):
        raise ValueError(f"finish_reason: {finish_reason!r} does not end an answer with Done")
    return Done(
        id=request_id,
        finish_reason=cast(FinishReason, finish_reason),
        usage=Usage(prompt_tokens=num_prompt_tokens, completion_tokens=num_completion_tokens),
        route=route,
        timings=timings,
        model=model,
    )


def finite_logprobs(values: list[float]) -> list[float]:
    """`values` with -inf (and NaN) replaced by `MIN_WIRE_LOGPROB`: the wire takes finite floats."""
    return [v if math.isfinite(v) else MIN_WIRE_LOGPROB for v in values]


__all__ = ["ENGINE_ERRORS", "MIN_WIRE_LOGPROB", "done_message", "engine_error", "finite_logprobs",
           "sampling_params"]
