"""Sampling parameters for one request (vLLM-style)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens for one request.

    ``temperature == 0`` means greedy. ``top_k == 0`` and ``top_p == 1`` turn those filters off.
    ``seed`` makes sampling reproducible whatever else runs in the batch: the random draw for
    the n-th generated token depends only on (seed, n).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    # None: no logprobs; 0: the chosen token's logprob only; k > 0: also the top-k alternatives.
    logprobs: int | None = None
    # Each token's entropy (nats), the signal of the edge's hand-over monitor. False skips that
    # full-vocabulary pass for requests nobody watches; their entropies are then NaN.
    entropy: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
