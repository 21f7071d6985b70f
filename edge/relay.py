"""Open a center answer and relay it as the app's own stream.

`open_center` starts `CenterPool.generate` and waits for the center's first message: only then is
the escalation committed (the caller aborts its local run). No reachable replica, or a retryable
error before any token, gives None and the caller answers locally. `relay_center` rewrites the
center's messages into this request's: the app's id, the route on the first relayed chunk, usage
counted across both tiers and the edge's own timings.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from isthmus.protocol import (
    Continuation,
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    Route,
    TokenChunk,
    Usage,
)
from isthmus.protocol.limits import TOKEN_ID_SIZE

from .answers import Answer
from .handover import escalated_request, remaining_ms
from .migration import OpenStream, ReplicaTrail, follow_migrations
from .pool import CenterPool, CenterUnavailable
from .request_run import RequestClock
from .seams import CenterPoolLike, EdgeTokenizer

CenterStream = tuple[AsyncGenerator[Answer, None], Answer]  # the open stream and its first message


async def open_center(
    pool: CenterPoolLike,
    req: GenerateRequest,
    clock: RequestClock,
    prompt_ids: list[int],
    tokenizer: EdgeTokenizer,
    edge_fingerprint: str,
    center_fingerprint: str | None,
    *,
    continuation: Continuation | None = None,
    max_tokens: int | None = None,
) -> CenterStream | None:
    """Start the center's answer; None when no center takes it before its first message."""
    if not pool.has_healthy():
        return None
    prompt_text = None
    if req.prompt_ids is not None and center_fingerprint != edge_fingerprint:
        # ids mean different tokens there: send the text they stand for
        prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    creq = escalated_request(
        req,
        timeout_ms=remaining_ms(clock.deadline, clock.now()),
        continuation=continuation,
        max_tokens=max_tokens,
        prompt_text=prompt_text,
    )
    # a replica may end the stream with Migrated (export, migrating drain): it goes on on another,
    # never on one it left (the trail: a bare Export leaves the source replica serving)
    trail = ReplicaTrail()
    gen = follow_migrations(_opener(pool, trail), creq, trail=trail,
                            timeout_ms=lambda: remaining_ms(clock.deadline, clock.now()))
    try:
        first = await clock.wait(anext(gen))
    except (StopAsyncIteration, CenterUnavailable):
        await gen.aclose()
        return None
    except BaseException:
        await gen.aclose()
        raise
    if isinstance(first, Error) and first.retryable:
        await gen.aclose()
        return None
    return gen, first


def _opener(pool: CenterPoolLike, trail: ReplicaTrail) -> OpenStream:
    """``pool.generate`` that keeps to ``trail`` (a `CenterPool`'s; other pools pick by themselves)."""
    if isinstance(pool, CenterPool):
        return lambda r: pool.generate(r, trail)
    return pool.generate


async def relay_center(
    req: GenerateRequest,
    clock: RequestClock,
    center: CenterStream,
    route: Route,
    num_prompt_tokens: int,
    num_edge_tokens: int,
) -> AsyncGenerator[Answer, None]:
    """The center's answer as this request's stream; closing it cancels the center's call."""
    gen, first = center
    is_first_chunk = True
    async with contextlib.aclosing(gen):
        msg: Answer | None = first
        while msg is not None:
            if isinstance(msg, TokenChunk):
                yield TokenChunk(
                    id=req.id,
                    token_ids=msg.token_ids,
                    text=msg.text,
                    logprobs=msg.logprobs if req.sampling.logprobs is not None else None,
                    tier="center",
                    route=route if is_first_chunk else msg.route,
                )
                is_first_chunk = False
            elif isinstance(msg, Done):
                yield Done(
                    id=req.id,
                    finish_reason=msg.finish_reason,
                    usage=Usage(
                        prompt_tokens=num_prompt_tokens,
                        completion_tokens=num_edge_tokens + msg.usage.completion_tokens,
                    ),
                    route=route,
                    timings=clock.timings(),
                    model=msg.model,
                )
                return
            else:
                yield Error(id=req.id, code=msg.code, message=msg.message, retryable=msg.retryable)
                return
            try:
                msg = await clock.wait(anext(gen))
            except StopAsyncIteration:
                msg = None
    raise ProtocolError(ErrorCode.UNAVAILABLE, "center stream ended without done", retryable=True)


def num_chunk_tokens(chunk: TokenChunk) -> int:
    return len(chunk.token_ids) // TOKEN_ID_SIZE
