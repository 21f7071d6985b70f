"""What the engine hands back: per-step stream items, whole results and a load snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenUsage:
    """Tokens a request read and wrote (the engine's own; the wire's is `isthmus.protocol.Usage`)."""

    prompt_tokens: int
    completion_tokens: int


Usage = TokenUsage  # deprecated alias: the old name, kept for importers of isthmus.engine


@dataclass(slots=True)
class RequestOutput:
    """A finished request (offline API)."""

    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None  # "stop" | "length" | "cancelled" | "deadline"
    usage: TokenUsage
    logprobs: list[float] = field(default_factory=list)  # one per generated token
    entropies: list[float] = field(default_factory=list)  # nats, one per generated token


@dataclass(slots=True)
class EngineOutput:
    """One stream item: what a request produced since its previous item.

    Several steps may be coalesced into one item when the consumer is slow, so the lists can hold
    more than one token. ``finish_reason`` is set on the last item only: "stop", "length",
    "cancelled", or "deadline" (its deadline passed while waiting or running).
    Token counts are totals so far (a resumed request counts the tokens it brought along).
    """

    request_id: str
    new_token_ids: list[int] = field(default_factory=list)
    text_delta: str = ""
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)  # nats, one per new token
    top_logprobs: list[list[tuple[int, float]]] | None = None  # when params.logprobs > 0
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    prompt_logprob_mean: float | None = None  # first item only, when asked
    queue_s: float | None = None  # first item only: arrival -> first scheduled
    first_token_s: float | None = None  # first item only: arrival -> first token

    def merge(self, later: EngineOutput) -> None:
        """Fold a later item of the same request into this one (output coalescing)."""
        self.new_token_ids.extend(later.new_token_ids)
        self.text_delta += later.text_delta
        self.logprobs.extend(later.logprobs)
        self.entropies.extend(later.entropies)
        if later.top_logprobs is not None:
            self.top_logprobs = (self.top_logprobs or []) + later.top_logprobs
        self.finish_reason = later.finish_reason or self.finish_reason
        self.num_prompt_tokens = later.num_prompt_tokens
        self.num_completion_tokens = later.num_completion_tokens
        for name in ("prompt_logprob_mean", "queue_s", "first_token_s"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(later, name))


@dataclass(slots=True)
class EngineLoad:
    num_running: int
    num_waiting: int
    num_free_kv_blocks: int
    num_total_kv_blocks: int
    tokens_per_s: float  # generated tokens per second over the last few seconds
    # Prefix cache (see BlockManager), counted since the engine started.
    num_prefix_queried_tokens: int = 0  # tokens of admitted sequences
    num_prefix_hit_tokens: int = 0  # of those, reused from the cache
    num_cached_kv_blocks: int = 0  # blocks registered in the cache now
    num_prefix_evictions: int = 0  # cached blocks reclaimed for new KV

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Tokens reused / tokens queried (0.0 before any request)."""
        q = self.num_prefix_queried_tokens
        return self.num_prefix_hit_tokens / q if q else 0.0
