"""`CenterPool`: the edge's connections to the center replicas (each one TP group).

Balancing is by live load: the least-loaded healthy replica whose breaker admits a call gets the
request. A replica that fails before the first token (transport error, garbage, or a retryable
`Error` such as OVERLOADED / DRAINING) is counted against its breaker and the request is retried on
another one, up to `max_attempts`. Once tokens have flowed a failure cannot be retried blindly (the
app has seen part of an answer), so it is reported as an `Error` with retryable=True; the caller
may hand over with a `Continuation` instead. The app's deadline travels as the gRPC timeout and as
the remaining `timeout_ms` of the request the center sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence

import grpc
import msgspec
from isthmus.protocol import (
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    Migrated,
    ProtocolError,
    TokenChunk,
    limits,
)

from .affinity import PrefixAffinity, prompt_bytes
from .answers import CenterAnswer
from .migration import ReplicaTrail
from .pool_digest import DigestGuard
from .replica import CenterTls, PoolOptions, Replica
from .router import LoadView

log = logging.getLogger(__name__)


class CenterUnavailable(Exception):
    """No center replica could start the answer (none healthy, or all failed before a token)."""


class CenterPool:
    """Client side of the center cluster: balancing, health, failover, breakers, deadlines."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: CenterTls | None = None,
        options: PoolOptions | None = None,
        on_health: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        affinity: PrefixAffinity | None = None,
    ) -> None:
        self.options = options or PoolOptions()
        self.affinity = affinity or PrefixAffinity()  # cache-aware preference (edge/affinity.py)
        self.tls = tls
        self.endpoints = list(endpoints)
        self.on_health = on_health  # called with (endpoint, is_healthy) after every check
        self.clock = clock
        self.replicas: list[Replica] = []
        self._ticket = itertools.count()  # round-robin among equally loaded replicas
        self._last_pick: dict[str, int] = {}
        self._health_task: asyncio.Task[None] | None = None
        self.weights: dict[str, float] = {}  # endpoint -> weight (default 1.0; 0: no new requests)
        self._retiring: dict[Replica, asyncio.Task[None]] = {}  # removed, finishing in-flight calls
        self._checks: set[asyncio.Task[None]] = set()
        # one set of weights per pool (pool_digest.py); off with [center] allow_mixed_weights
        self.digests = DigestGuard(enabled=not self.options.allow_mixed_weights)

    async def start(self) -> None:
        """Open the channels and run one health round, so `has_healthy()` is meaningful at once."""
        self.replicas = [Replica(ep, self.options, self.tls) for ep in self.endpoints]
        await self.check_all()
        self._health_task = asyncio.create_task(self._health_loop(), name="center-pool-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        for task in [*self._retiring.values(), *self._checks]:
            task.cancel()
        retiring = list(self._retiring)
        await asyncio.gather(*(r.close() for r in [*self.replicas, *retiring]), return_exceptions=True)

    async def check_all(self) -> None:
        """One health + Status round over every replica, concurrently; judged in pool order (so the
        pool's weights digest is the first replica's that reports one, not the fastest's)."""
        replicas = list(self.replicas)
        results = await asyncio.gather(*(self._poll(r) for r in replicas))
        for replica, healthy in zip(replicas, results, strict=True):
            self._settle(replica, healthy)

    async def _check(self, replica: Replica) -> None:
        self._settle(replica, await self._poll(replica))

    @staticmethod
    async def _poll(replica: Replica) -> bool:
        try:
            return await replica.check()
        except Exception as exc:  # a broken channel must not kill the health loop
            replica.is_healthy, replica.last_error = False, f"{type(exc).__name__}: {exc}"
            return False

    def _settle(self, replica: Replica, healthy: bool) -> None:
        if healthy and replica in self.replicas:  # one removed during the round no longer counts
            healthy = self._judge_digest(replica)
        if not healthy:
            self.affinity.forget(replica.endpoint)  # it may come back restarted, with an empty cache
        if self.on_health is not None:
            self.on_health(replica.endpoint, healthy)

    def _judge_digest(self, replica: Replica) -> bool:
        """False (and the replica marked unhealthy) when it serves other weights than the pool."""
        st = replica.status
        verdict = self.digests.observe(replica.endpoint, st.weights_digest if st is not None else None)
        if verdict.is_mismatch:
            replica.is_healthy = False
            replica.last_error = (
                f"weights digest {verdict.digest} differs from the pool's {verdict.pool_digest}"
            )
            if verdict.changed:
                log.warning(
                    "center replica %s kept out of rotation: weights digest %s, the pool serves %s "
                    "([center] allow_mixed_weights = true to allow)",
                    replica.endpoint, verdict.digest, verdict.pool_digest,
                )
        elif verdict.changed:
            log.info("center replica %s: weights digest %s agrees again", replica.endpoint, verdict.digest)
        return not verdict.is_mismatch

    async def check_joining(self, endpoint: str) -> None:
        """Ask `endpoint` (not yet in the pool) for its Status and raise `WeightsMismatch` when it
        serves other weights than the pool. A replica that cannot be reached is let through: its
        health checks keep it out until it answers, and judge its digest then."""
        if not self.digests.enabled or any(r.endpoint == endpoint for r in self.replicas):
            return
        probe = Replica(endpoint, self.options, self.tls)
        try:
            with contextlib.suppress(Exception):  # unreachable or broken: judged by health checks
                await probe.check()
        finally:
            await probe.close()
        if probe.status is not None:
            self.digests.check_new(endpoint, probe.status.weights_digest)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            await self.check_all()

    # --- runtime changes (admin API, config reload) -----------------------------------------------
    def add_replica(self, endpoint: str, weight: float = 1.0) -> Replica:
        """Add `endpoint` to the pool; it takes requests once its first health check (started now)
        passes. Raises ValueError when it is already in the pool."""
        if any(r.endpoint == endpoint for r in self.replicas):
            raise ValueError(f"endpoint: {endpoint} is already in the pool")
        replica = Replica(endpoint, self.options, self.tls)
        self.replicas.append(replica)
        self.endpoints.append(endpoint)
        self.set_weight(endpoint, weight)
        task = asyncio.get_running_loop().create_task(self._check(replica))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        return replica

    def remove_replica(self, endpoint: str, grace_s: float = 600.0) -> Replica:
        """Take `endpoint` out of the pool: no new request goes to it; calls in flight on it finish
        (up to `grace_s` seconds) before its channel closes. Raises ValueError when it is unknown."""
        replica = next((r for r in self.replicas if r.endpoint == endpoint), None)
        if replica is None:
            raise ValueError(f"endpoint: {endpoint} is not in the pool")
        self.replicas.remove(replica)
        self.endpoints.remove(endpoint)
        self.weights.pop(endpoint, None)
        self.digests.forget(endpoint)
        task = asyncio.get_running_loop().create_task(self._retire(replica, grace_s))
        self._retiring[replica] = task
        task.add_done_callback(lambda _t: self._retiring.pop(replica, None))
        return replica

    async def _retire(self, replica: Replica, grace_s: float) -> None:
        deadline = self.clock() + grace_s
        while replica.num_outstanding > 0 and self.clock() < deadline:
            await asyncio.sleep(0.05)
        await replica.close()

    def set_weight(self, endpoint: str, weight: float) -> None:
        """Share of new requests relative to the others (load is divided by it); 0 sends none."""
        if endpoint not in self.endpoints:
            raise ValueError(f"endpoint: {endpoint} is not in the pool")
        if not (isinstance(weight, int | float) and 0 <= weight <= 1000):
            raise ValueError(f"weight: expected a number in [0, 1000], got {weight!r}")
        self.weights[endpoint] = float(weight)

    def weight(self, endpoint: str) -> float:
        return self.weights.get(endpoint, 1.0)

    @property
    def num_retiring(self) -> int:
        """Removed replicas still finishing calls in flight."""
        return len(self._retiring)

    # --- views -----------------------------------------------------------------------------------
    def _usable(self, now: float) -> list[Replica]:
        return [r for r in self.replicas if r.is_healthy and r.breaker.can_try(now)]

    def has_healthy(self) -> bool:
        """True when some replica is healthy and its breaker would admit a call now."""
        return bool(self._usable(self.clock()))

    def load_view(self) -> LoadView:
        """Center fields of the router's `LoadView` (edge fields zero: see `LoadView.from_parts`)."""
        usable = self._usable(self.clock())
        if not usable:
            return LoadView(is_center_healthy=False)
        return LoadView(is_center_healthy=True, center_load=min(r.load_fraction() for r in usable))

    def tokenizer_fingerprint(self) -> str | None:
        """The tokenizer fingerprint a healthy replica reports (None if none reported one)."""
        for r in self._usable(self.clock()):
            if r.status is not None and r.status.tokenizer_fingerprint:
                return r.status.tokenizer_fingerprint
        return None

    def pick(self, exclude: Collection[str] = (), prefix: Sequence[int] = ()) -> Replica | None:
        """The usable replica not in `exclude` likely to hold `prefix` (block hashes, see
        `PrefixAffinity`) unless loads are imbalanced; else the least loaded (ties: least recently
        picked)."""
        now = self.clock()
        usable = self._usable(now)
        candidates = [r for r in usable if r.endpoint not in exclude and self.weight(r.endpoint) > 0]
        if not candidates:
            return None
        preferred = self.affinity.choose({r.endpoint: r.load_score() for r in candidates}, prefix)
        def rank(r: Replica) -> tuple[bool, float, int]:
            score = r.load_score() / self.weight(r.endpoint)  # weight 2: looks half as loaded
            return (r.endpoint != preferred, score, self._last_pick.get(r.endpoint, -1))

        best = min(candidates, key=rank)
        self._last_pick[best.endpoint] = next(self._ticket)
        self.affinity.record(best.endpoint, prefix)
        return best

    # --- generate --------------------------------------------------------------------------------
    async def generate(
        self, req: GenerateRequest, trail: ReplicaTrail | None = None
    ) -> AsyncIterator[CenterAnswer]:
        """Stream the center's answer to `req`: `TokenChunk`s, then one `Done` or `Error`.

        Raises `CenterUnavailable` when no replica starts the answer. Closing the iterator (or
        cancelling its consumer) cancels the gRPC call, which aborts the request on the center.
        `trail` (a live migration's): replicas in `trail.left` are never tried; each attempt's
        replica is noted in `trail.serving`.
        """
        start = self.clock()
        deadline = start + req.timeout_ms / 1000 if req.timeout_ms is not None else None
        tried: set[str] = set(trail.left) if trail is not None else set()
        last_failure = "no healthy center replica"
        last_error: Error | None = None
        prefix = self.affinity.block_hashes(prompt_bytes(req)) if self.affinity.options.enabled else []
        for _ in range(max(1, self.options.max_attempts)):
            timeout_s: float | None = None
            if deadline is not None:
                timeout_s = deadline - self.clock()
                if timeout_s <= 0:
                    yield Error(id=req.id, code=ErrorCode.DEADLINE_EXCEEDED, message="deadline exceeded")
                    return
            replica = self.pick(tried, prefix)
            if replica is None or not replica.breaker.allow(self.clock()):
                break
            tried.add(replica.endpoint)
            if trail is not None:
                trail.serving = replica.endpoint
            attempt = _with_timeout(req, timeout_s)
            outcome = _Attempt()
            replica.num_outstanding += 1
            call = replica.generate(attempt, timeout_s)
            try:
                async for msg in self._relay(replica, call, req.id, outcome):
                    yield msg
            finally:
                replica.num_outstanding -= 1
                if not outcome.is_finished:
                    call.cancel()
                    if not outcome.is_judged:
                        replica.breaker.release(self.clock())
            if outcome.is_finished:
                return
            last_failure = f"{replica.endpoint}: {outcome.failure}"
            last_error = outcome.error or last_error
            if outcome.is_deadline:
                yield Error(id=req.id, code=ErrorCode.DEADLINE_EXCEEDED, message="deadline exceeded")
                return
        if last_error is not None:
            yield last_error  # every replica refused it with a retryable error: pass the last one on
            return
        raise CenterUnavailable(last_failure)

    async def _relay(
        self, replica: Replica, call: object, req_id: str, outcome: _Attempt
    ) -> AsyncIterator[CenterAnswer]:
        """Relay one attempt. Sets `outcome`; yields nothing if it failed before the first token."""
        breaker = replica.breaker
        try:
            async for msg in call:  # type: ignore[attr-defined]
                if isinstance(msg, ProtocolError):
                    raise _BadReply(str(msg))
                if not isinstance(msg, (TokenChunk, Done, Error, Migrated)):
                    raise _BadReply(f"unexpected {type(msg).__name__}")
                if not outcome.has_started and isinstance(msg, Error) and msg.retryable:
                    breaker.record_failure(self.clock())
                    outcome.fail(f"refused: {ErrorCode(msg.code).name}", error=msg)
                    return
                outcome.has_started = True
                if isinstance(msg, (Done, Error, Migrated)):  # Migrated: it goes on elsewhere
                    breaker.record_success(self.clock())  # the replica works, whatever it answered
                    outcome.finish()
                    yield msg
                    return
                yield msg
            raise _BadReply("stream ended without Done or Error")
        except (grpc.aio.AioRpcError, _BadReply) as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
            text = f"{code.name}: {exc.details()}" if code is not None else str(exc)  # type: ignore[union-attr]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                outcome.is_deadline = True
            else:
                breaker.record_failure(self.clock())
            if code == grpc.StatusCode.UNAVAILABLE:
                replica.is_healthy = False  # route around it until the next health check says otherwise
            replica.last_error = text
            log.warning("center replica %s failed (%s): %s", replica.endpoint, req_id, text)
            outcome.fail(text)
            if outcome.has_started:
                # the app has part of an answer: report, do not retry blindly
                outcome.finish()
                if outcome.is_deadline:
                    yield Error(id=req_id, code=ErrorCode.DEADLINE_EXCEEDED, message="deadline exceeded")
                else:
                    message = f"center replica failed mid-answer ({text})"[: limits.MAX_ERROR_MESSAGE_LEN]
                    yield Error(id=req_id, code=ErrorCode.UNAVAILABLE, message=message, retryable=True)


class _BadReply(Exception):
    """The replica sent something that is not a valid answer message."""


class _Attempt:
    """What became of one attempt on one replica."""

    def __init__(self) -> None:
        self.has_started = False  # a message reached the caller
        self.is_finished = False  # the request's answer ended (no retry)
        self.is_judged = False  # the breaker got a success or failure for it
        self.is_deadline = False
        self.failure = ""
        self.error: Error | None = None

    def fail(self, failure: str, error: Error | None = None) -> None:
        self.is_judged, self.failure, self.error = True, failure, error

    def finish(self) -> None:
        self.is_judged = self.is_finished = True


def _with_timeout(req: GenerateRequest, timeout_s: float | None) -> GenerateRequest:
    """The request with the deadline that is left, so the center can refuse work it cannot finish."""
    if timeout_s is None:
        return req
    timeout_ms = min(limits.MAX_TIMEOUT_MS, max(limits.MIN_TIMEOUT_MS, math.ceil(timeout_s * 1000)))
    return msgspec.structs.replace(req, timeout_ms=timeout_ms)
