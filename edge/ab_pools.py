"""`AbPools`: two center pools (stable, candidate) behind one pool-like face, split per request.

The orchestrator uses it where it would use a `CenterPool`: `generate(req)` asks the `AbSplit`
(ab_split.py) which variant the request's sticky id belongs to and streams that pool's answer,
counting per-variant requests, errors, first-token latency and tokens in the edge metrics and
telling each `observers` callable ``(variant, is_error, ttft_s)`` once per request (the canary
rollout watches the candidate that way). `variant_for(req)` says which variant an open request
went to, for its `Route.variant` and the OpenAI ``x-isthmus-variant`` header. `split` may be
replaced at any time (reload, rollout step); a request keeps the variant it started on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from isthmus.protocol import Error, GenerateRequest, TokenChunk
from isthmus.protocol.limits import TOKEN_ID_SIZE

from .ab_split import CANDIDATE, STABLE, AbSplit
from .answers import CenterAnswer
from .router import LoadView

if TYPE_CHECKING:  # the node imports this module; pools and metrics are built elsewhere
    from .metrics import Metrics
    from .node import EdgeNode
    from .pool import CenterPool

Observer = Callable[[str, bool, "float | None"], None]


class AbPools:
    """Stable and candidate `CenterPool`s split by `split`; the pool API the orchestrator needs."""

    def __init__(
        self,
        stable: CenterPool,
        candidate: CenterPool,
        split: AbSplit,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools = {STABLE: stable, CANDIDATE: candidate}
        self.split = split
        self.metrics = metrics
        self.clock = clock
        self.observers: list[Observer] = []
        self._chosen: dict[str, str] = {}  # request id -> variant, while its answer is open

    @property
    def stable(self) -> CenterPool:
        return self.pools[STABLE]

    @property
    def candidate(self) -> CenterPool:
        return self.pools[CANDIDATE]

    def has_healthy(self) -> bool:
        return any(p.has_healthy() for p in self.pools.values())

    def load_view(self) -> LoadView:
        """The stable pool's load (it carries most traffic), else the candidate's."""
        view: LoadView = self.stable.load_view()
        return view if view.is_center_healthy else self.candidate.load_view()

    def tokenizer_fingerprint(self) -> str | None:
        return self.stable.tokenizer_fingerprint() or self.candidate.tokenizer_fingerprint()

    def variant_for(self, req: GenerateRequest) -> str:
        """The variant `req` went to (while its answer is open), else the one it would go to."""
        return self._chosen.get(req.id) or self.split.choose(req)

    async def generate(self, req: GenerateRequest) -> AsyncIterator[CenterAnswer]:
        """The chosen variant's `CenterPool.generate(req)`, counted per variant."""
        variant = self.split.choose(req)
        self._chosen[req.id] = variant
        start = self.clock()
        ttft_s: float | None = None
        # None until the answer ends: an answer the app abandons counts neither way
        is_error: bool | None = None
        self._record(variant, is_request=True)
        try:
            async for msg in self.pools[variant].generate(req):
                if isinstance(msg, TokenChunk):
                    if ttft_s is None:
                        ttft_s = self.clock() - start
                        self._record(variant, ttft_s=ttft_s)
                    self._record(variant, num_tokens=len(msg.token_ids) // TOKEN_ID_SIZE)
                else:  # Done or Error ends the answer
                    is_error = isinstance(msg, Error)
                yield msg
        except Exception:  # CenterUnavailable and transport failures
            is_error = True
            raise
        finally:
            self._chosen.pop(req.id, None)
            if is_error:
                self._record(variant, is_error=True)
            if is_error is not None:
                for observe in self.observers:
                    observe(variant, is_error, ttft_s)

    def _record(self, variant: str, **kw: Any) -> None:
        if self.metrics is not None:
            self.metrics.record_variant(variant, **kw)


async def start_ab_pools(node: EdgeNode) -> AbPools | None:
    """The node's A/B pools when ``[ab]`` is on: its `[center]` pool as stable (an empty one if it
    has none) and a started candidate pool with the same TLS and options; None when off."""
    cfg = node.config
    if not cfg.ab.enabled:
        return None
    from .pool import CenterPool
    from .reload_apply import apply_weights

    on_health = node.metrics.set_replica_health if node.metrics is not None else None

    def make(endpoints: list[str]) -> CenterPool:
        return CenterPool(endpoints, on_health=on_health, **cfg.center.pool_kwargs())

    if node.pool is None:
        node.pool = make([])
        await node.pool.start()
    candidate = make(list(cfg.ab.candidate_endpoints))
    await candidate.start()
    apply_weights(candidate, cfg.ab.candidate_endpoints, cfg.ab.candidate_weights)
    return AbPools(node.pool, candidate, cfg.ab.split(), metrics=node.metrics)
