"""Prometheus metrics of one edge node, in their own `CollectorRegistry`.

Each node (and each test) gets a fresh registry, so two nodes in one process never collide on the
global default registry. Recording methods never raise on odd input: metrics must not be able to
break the request path.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .migration import STATS, MigrationCollector

# seconds: time to first token spans a queued prefill on a busy node up to a slow escalation
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# seconds: gaps between streamed tokens
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)  # seconds

# When an answer moved to the center: before running at all, after the edge's own prefill
# (prompt perplexity), or mid-answer (confidence collapse).
ESCALATION_WHEN = ("before", "after_prefill", "mid_answer")
_WHEN_ALIASES = {"before_prefill": "before", "prefill": "after_prefill", "handover": "mid_answer"}

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All series of the edge; `render()` gives the text exposition for `/metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "isthmus_edge") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ns = self.registry, namespace
        r.register(MigrationCollector(STATS, ns))  # live migrations (process-wide counts)
        self.ttft = Histogram(
            "ttft_seconds", "Time to first token", namespace=ns, registry=r, buckets=TTFT_BUCKETS
        )
        self.itl = Histogram(
            "inter_token_seconds",
            "Gap between streamed tokens",
            namespace=ns,
            registry=r,
            buckets=ITL_BUCKETS,
        )
        self.queue_time = Histogram(
            "queue_seconds",
            "Time queued before the first step",
            namespace=ns,
            registry=r,
            buckets=QUEUE_BUCKETS,
        )
        self.tokens_in = Counter("tokens_in", "Prompt tokens received", namespace=ns, registry=r)
        self.tokens_out = Counter("tokens_out", "Completion tokens streamed", namespace=ns, registry=r)
        self.requests = Counter(
            "requests",
            "Requests by answering tier and route reason",
            ["tier", "reason"],
            namespace=ns,
            registry=r,
        )
        self.escalations = Counter(
            "escalations", "Requests moved to the center, by when", ["when"], namespace=ns, registry=r
        )
        self.errors = Counter("errors", "Errors returned, by error code", ["code"], namespace=ns, registry=r)
        self.queue_depth = Gauge("queue_depth", "Edge requests waiting", namespace=ns, registry=r)
        self.num_running = Gauge("running", "Edge requests running", namespace=ns, registry=r)
        self.kv_usage = Gauge(
            "kv_usage_ratio", "Fraction of KV cache blocks in use", namespace=ns, registry=r
        )
        self.replica_health = Gauge(
            "center_replica_healthy",
            "1 if the center replica is healthy",
            ["endpoint"],
            namespace=ns,
            registry=r,
        )
        self.connections = Gauge("quic_connections", "Open QUIC connections", namespace=ns, registry=r)
        self._add_prefix_cache(r, ns)
        self.slow_readers = Counter(
            "slow_readers", "Requests cancelled for a slow reader", namespace=ns, registry=r
        )
        for when in ESCALATION_WHEN:
            self.escalations.labels(when=when)  # export zeros so dashboards see every series
        self._add_ab(r, ns)

    def _add_prefix_cache(self, r: CollectorRegistry, ns: str) -> None:
        self.prefix_hit_rate = Gauge(
            "prefix_cache_hit_ratio", "Prompt tokens reused from the KV cache / prompt tokens",
            namespace=ns, registry=r,
        )
        self.prefix_blocks = Gauge(
            "prefix_cache_blocks", "KV blocks held in the prefix cache", namespace=ns, registry=r
        )
        self.prefix_evictions = Gauge(
            "prefix_cache_evictions", "Cached KV blocks reclaimed since start", namespace=ns, registry=r
        )

    def _add_ab(self, r: CollectorRegistry, ns: str) -> None:
        """A/B split between center pools (ab_pools.py): per variant ("stable", "candidate")."""
        self.ab_requests = Counter("ab_requests", "Center requests by A/B variant", ["variant"],
                                   namespace=ns, registry=r)
        self.ab_errors = Counter("ab_errors", "Center requests that failed, by A/B variant", ["variant"],
                                 namespace=ns, registry=r)
        self.ab_ttft = Histogram("ab_ttft_seconds", "Center time to first token by A/B variant", ["variant"],
                                 namespace=ns, registry=r, buckets=TTFT_BUCKETS)
        self.ab_tokens = Counter("ab_tokens_out", "Center completion tokens by A/B variant (rate: tokens/s)",
                                 ["variant"], namespace=ns, registry=r)

    # --- latency ---------------------------------------------------------------------------------
    def observe_ttft(self, seconds: float) -> None:
        if _ok(seconds):
            self.ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        if _ok(seconds):
            self.itl.observe(seconds)

    def observe_queue(self, seconds: float) -> None:
        if _ok(seconds):
            self.queue_time.observe(seconds)

    # --- counts ----------------------------------------------------------------------------------
    def record_tokens(self, num_prompt: int, num_completion: int) -> None:
        if num_prompt > 0:
            self.tokens_in.inc(num_prompt)
        if num_completion > 0:
            self.tokens_out.inc(num_completion)

    def record_route(self, tier: str, reason: str) -> None:
        self.requests.labels(tier=tier, reason=reason or "unknown").inc()

    def record_escalation(self, when: str) -> None:
        """`when`: "before", "after_prefill" or "mid_answer" (a few aliases accepted)."""
        when = _WHEN_ALIASES.get(when, when)
        self.escalations.labels(when=when if when in ESCALATION_WHEN else "other").inc()

    def record_error(self, code: str | int) -> None:
        """`code`: an `ErrorCode` name (preferred) or value."""
        self.errors.labels(code=_code_name(code)).inc()

    def record_slow_reader(self) -> None:
        self.slow_readers.inc()

    def record_variant(
        self, variant: str, *, is_request: bool = False, is_error: bool = False,
        ttft_s: float | None = None, num_tokens: int = 0,
    ) -> None:
        """One A/B event for `variant`: a request started, an error, a first token, tokens."""
        if is_request:
            self.ab_requests.labels(variant=variant).inc()
        if is_error:
            self.ab_errors.labels(variant=variant).inc()
        if ttft_s is not None and _ok(ttft_s):
            self.ab_ttft.labels(variant=variant).observe(ttft_s)
        if num_tokens > 0:
            self.ab_tokens.labels(variant=variant).inc(num_tokens)

    # --- gauges ----------------------------------------------------------------------------------
    def set_load(
        self, num_waiting: int, num_running: int, num_free_kv_blocks: int, num_total_kv_blocks: int
    ) -> None:
        self.queue_depth.set(max(0, num_waiting))
        self.num_running.set(max(0, num_running))
        if num_total_kv_blocks > 0:
            used = num_total_kv_blocks - max(0, num_free_kv_blocks)
            self.kv_usage.set(min(1.0, max(0.0, used / num_total_kv_blocks)))

    def set_prefix_cache(self, hit_rate: float, num_cached_blocks: int, num_evictions: int) -> None:
        """The edge engine's prefix cache: hit rate since start, blocks cached now, evictions."""
        self.prefix_hit_rate.set(min(1.0, max(0.0, hit_rate)))
        self.prefix_blocks.set(max(0, num_cached_blocks))
        self.prefix_evictions.set(max(0, num_evictions))

    def set_replica_health(self, endpoint: str, is_healthy: bool) -> None:
        self.replica_health.labels(endpoint=endpoint).set(1.0 if is_healthy else 0.0)

    def set_connections(self, num_connections: int) -> None:
        self.connections.set(max(0, num_connections))

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


def _ok(seconds: float) -> bool:
    return isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0


def _code_name(code: str | int) -> str:
    from isthmus.protocol import ErrorCode

    if isinstance(code, str) and not code.isdigit():
        return code
    try:
        return ErrorCode(int(code)).name
    except ValueError:
        return str(code)
