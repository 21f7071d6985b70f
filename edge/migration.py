"""Edge side of a live migration: continue a center answer that ended with `Migrated` elsewhere.

`resume_request` (pure) builds the request the next replica gets from the request sent and the
state the exporting replica returned. `follow_migrations` wraps the center pool's stream: when a
replica ends it with `Migrated` (an `Export`, or a `Drain(migrate=true)`), the same request goes on
through the pool on a replica that admits it, and the app sees one unbroken stream. With no replica
left to take it, the answer ends with today's retryable DRAINING error. `MigrationStats` counts.
A `ReplicaTrail` keeps a resumed request off every replica it migrated away from (an `Export` on
a replica that still serves must not land the request there again).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from isthmus.protocol import Done, Error, ErrorCode, GenerateRequest, Migrated, TokenChunk
from isthmus.protocol.limits import TOKEN_ID_SIZE

from .answers import Answer, CenterAnswer

log = logging.getLogger(__name__)

OpenStream = Callable[[GenerateRequest], AsyncIterator[CenterAnswer]]

MAX_MIGRATIONS_PER_REQUEST = 4  # hops one answer may take before it ends with a retryable error


def resume_request(
    sent: GenerateRequest, migrated: Migrated, timeout_ms: int | None = None
) -> GenerateRequest:
    """The request that continues ``migrated`` on another replica.

    ``sent`` is the request the exporting replica was answering (id, priority, api key and user
    are kept); its prompt form is replaced by the exported prompt ids, its sampling by the exported
    one (which carries the seed the first replica drew) and its continuation by the exported
    answer so far. ``timeout_ms``: what is left of the deadline (None keeps the sent one).
    """
    return msgspec.structs.replace(
        sent,
        prompt=None,
        messages=None,
        prompt_ids=migrated.prompt_ids,
        sampling=migrated.sampling,
        continuation=migrated.continuation,
        timeout_ms=sent.timeout_ms if timeout_ms is None else timeout_ms,
    )


def no_target_error(request_id: str, reason: str = "no other center replica can continue it") -> Error:
    """What the app gets when a migrated answer cannot go on: today's retryable DRAINING error."""
    return Error(
        id=request_id,
        code=ErrorCode.DRAINING,
        message=f"center drained before the answer finished ({reason})",
        retryable=True,
    )


@dataclass(slots=True)
class ReplicaTrail:
    """The replicas one answer went through: the pool notes each attempt's replica in `serving`;
    `moved` marks it `left` when its stream ended with `Migrated`, and the pool never picks a
    replica in `left` for that answer again."""

    serving: str | None = None
    left: set[str] = field(default_factory=set)

    def moved(self) -> None:
        if self.serving is not None:
            self.left.add(self.serving)


STALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # seconds


@dataclass(slots=True)
class MigrationStats:
    """Migrations seen by this process's edge, and the stalls they caused.

    The stall of one migration: from its `Migrated` to the next replica's first message.
    ``stall_counts[i]``: stalls <= ``STALL_BUCKETS[i]`` (cumulative, as Prometheus buckets).
    """

    started: int = 0
    finished: int = 0
    failed: int = 0
    stall_s_sum: float = 0.0
    stall_s_max: float = 0.0
    stall_counts: list[int] = field(default_factory=lambda: [0] * len(STALL_BUCKETS))

    def record_start(self) -> None:
        self.started += 1

    def record_finish(self, stall_s: float) -> None:
        self.finished += 1
        stall_s = max(stall_s, 0.0)
        self.stall_s_sum += stall_s
        self.stall_s_max = max(self.stall_s_max, stall_s)
        for i, bound in enumerate(STALL_BUCKETS):
            if stall_s <= bound:
                self.stall_counts[i] += 1

    def record_failure(self) -> None:
        self.failed += 1


class MigrationCollector:
    """Prometheus collector of a `MigrationStats`: counters and the stall histogram."""

    def __init__(self, stats: MigrationStats, namespace: str = "isthmus_edge") -> None:
        self.stats, self.namespace = stats, namespace

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        st, ns = self.stats, self.namespace
        counts = CounterMetricFamily(f"{ns}_migrations", "Live migrations of center answers, by outcome",
                                     labels=["outcome"])
        for outcome, value in (("started", st.started), ("finished", st.finished), ("failed", st.failed)):
            counts.add_metric([outcome], value)
        yield counts
        buckets = [(str(b), float(c)) for b, c in zip(STALL_BUCKETS, st.stall_counts, strict=True)]
        buckets.append(("+Inf", float(st.finished)))
        yield HistogramMetricFamily(f"{ns}_migration_stall_seconds",
                                    "From a replica's Migrated to the next replica's first message",
                                    buckets=buckets, sum_value=st.stall_s_sum)


STATS = MigrationStats()  # this process's migrations (read by metrics)


async def follow_migrations(
    open_stream: OpenStream,
    req: GenerateRequest,
    *,
    timeout_ms: Callable[[], int | None] = lambda: None,
    stats: MigrationStats = STATS,
    clock: Callable[[], float] = time.monotonic,
    trail: ReplicaTrail | None = None,
) -> AsyncGenerator[Answer, None]:
    """``open_stream(req)``'s answer, continued through ``open_stream`` after each `Migrated`.

    What the first stream raises (e.g. no replica at all) propagates; a later stream that cannot
    start, or refuses before its first token, ends the answer with `no_target_error`. A `Done`
    counts the tokens of every hop. ``timeout_ms()``: the deadline left, for each resumed request.
    ``trail``: the one ``open_stream`` passes to the pool; each `Migrated` marks the replica that
    sent it as left, so the resumed request goes elsewhere.
    """
    current, hops, earlier = req, 0, 0
    migrated_at: float | None = None  # when the latest Migrated arrived (None: its stall recorded)
    while True:
        hop = _Hop(hops=hops, earlier=earlier)
        try:
            async with contextlib.aclosing(hop.relay(open_stream, current)) as gen:
                async for msg in gen:
                    if hops and migrated_at is not None:
                        stats.record_finish(clock() - migrated_at)
                        migrated_at = None
                    yield msg
        except _NoTarget as exc:
            stats.record_failure()
            log.warning("migrated request %s has no replica to go on: %s", req.id, exc)
            yield no_target_error(req.id, str(exc))
            return
        except Exception as exc:  # the pool found no replica (CenterUnavailable) or failed
            if not hops:
                raise
            stats.record_failure()
            log.warning("migrated request %s could not go on: %s", req.id, exc)
            yield no_target_error(req.id)
            return
        if hop.migrated is None:
            return
        if trail is not None:
            trail.moved()
        hops += 1
        if hops > MAX_MIGRATIONS_PER_REQUEST:
            stats.record_failure()
            yield no_target_error(req.id, f"moved more than {MAX_MIGRATIONS_PER_REQUEST} times")
            return
        stats.record_start()
        migrated_at = clock()
        earlier += hop.num_tokens
        current = resume_request(current, hop.migrated, timeout_ms())


@dataclass(slots=True)
class _Hop:
    """One replica's part of an answer: ``hops`` moves before it, ``earlier`` tokens sent before it."""

    hops: int
    earlier: int
    num_tokens: int = 0
    migrated: Migrated | None = None  # how it ended, when it moved on

    async def relay(self, open_stream: OpenStream, req: GenerateRequest) -> AsyncGenerator[Answer, None]:
        """The replica's messages up to its `Migrated` (kept in `migrated`, not yielded); a `Done`
        counts the earlier hops' tokens. Raises `_NoTarget` when a resumed request is refused
        before its first token."""
        async with contextlib.aclosing(_stream(open_stream, req)) as gen:
            async for msg in gen:
                if isinstance(msg, Migrated):
                    self.migrated = msg
                    return
                if self.hops and self.num_tokens == 0 and isinstance(msg, Error) and msg.retryable:
                    raise _NoTarget(f"{ErrorCode(msg.code).name}: {msg.message}")
                if isinstance(msg, TokenChunk):
                    self.num_tokens += len(msg.token_ids) // TOKEN_ID_SIZE
                elif isinstance(msg, Done) and self.earlier:
                    usage = msgspec.structs.replace(
                        msg.usage, completion_tokens=msg.usage.completion_tokens + self.earlier
                    )
                    msg = msgspec.structs.replace(msg, usage=usage)
                yield msg


async def _stream(open_stream: OpenStream, req: GenerateRequest) -> AsyncGenerator[CenterAnswer, None]:
    gen = open_stream(req)
    try:
        async for msg in gen:
            yield msg
    finally:
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            await aclose()


class _NoTarget(Exception):
    """Every replica refused the migrated request before its first token."""
