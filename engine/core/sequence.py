"""One request's life inside the scheduler (pure Python, no torch).

The KV invariant that makes prefill, decode, chunking, preemption and resume one code path:
``all_ids = prompt_ids + output_ids``; KV is cached for ``all_ids[:num_computed]``; each step
feeds ``all_ids[num_computed : num_computed + chunk]`` and samples when the chunk reaches the end
of ``all_ids``. A decode is a chunk of one (the last sampled token). A preempted or resumed
sequence simply has ``num_computed = 0`` and recomputes prompt + generated tokens in its prefill
(after adopting whatever prefix the KV cache still holds: ``num_computed`` is then that length).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from isthmus.engine.core.params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# Finish reasons. "deadline" extends the contract's "stop" | "length" | "cancelled": a request
# whose deadline passed (waiting or running) ends with it so servers can answer DEADLINE_EXCEEDED.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_DEADLINE = "deadline"


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams  # always carries a seed (drawn at admission when the request gave none)
    priority: int = 0
    arrival: float = 0.0  # monotonic seconds
    deadline: float | None = None  # monotonic seconds
    want_prompt_logprobs: bool = False
    all_ids: list[int] = field(default_factory=list)  # prompt + generated
    num_computed: int = 0  # positions whose KV is cached
    num_cached_tokens: int = 0  # of those, positions reused from the prefix cache at admission
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None
    first_scheduled: float | None = None  # when it first got a step (queue time ends)
    first_token_at: float | None = None
    num_preemptions: int = 0
    prompt_logprob_sum: float = 0.0
    prompt_logprob_count: int = 0
    is_prompt_logprob_reported: bool = False

    def __post_init__(self) -> None:
        if not self.all_ids:
            self.all_ids = list(self.prompt_ids)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_generated(self) -> int:
        return len(self.all_ids) - len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.all_ids[len(self.prompt_ids) :]

    @property
    def num_pending(self) -> int:
        """Tokens still to feed before the next sample (1 for a decode)."""
        return len(self.all_ids) - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.num_pending == 1 and self.num_computed > 0

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def sort_key(self) -> tuple[int, float, int]:
        """Seniority: higher priority first, then earlier arrival, then lower id."""
        return (-self.priority, self.arrival, self.seq_id)


@dataclass(slots=True)
class SeqUpdate:
    """What one step (or an out-of-step event such as a deadline) did to one sequence."""

    seq: Sequence
    new_token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprob_mean: float | None = None  # set once, when the prompt's prefill completes
