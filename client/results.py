"""What the SDK hands back: `Chunk` per streamed piece, `Completion` for a whole answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from isthmus.protocol import Done, Route, Timings, TokenChunk, Usage, unpack_ids


@dataclass(frozen=True)
class Chunk:
    """New tokens of an answer, as the edge streamed them.

    `route` is set only when the route changed mid-answer (a hand-over to the other tier).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    tier: str
    route: Route | None = None

    @classmethod
    def from_message(cls, msg: TokenChunk) -> Chunk:
        """Build from a wire `TokenChunk` (token ids unpacked to ints)."""
        return cls(
            text=msg.text,
            token_ids=unpack_ids(msg.token_ids),
            logprobs=list(msg.logprobs) if msg.logprobs is not None else None,
            tier=msg.tier,
            route=msg.route,
        )


@dataclass(frozen=True)
class Completion:
    """A whole answer: its text and ids, why it ended, who answered and why, usage, timings."""

    id: str
    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    route: Route
    usage: Usage
    timings: Timings
    model: str


@dataclass
class CompletionBuilder:
    """Accumulates chunks until the `Done`, then builds the `Completion`."""

    request_id: str
    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    has_logprobs: bool = False

    def add(self, chunk: Chunk) -> None:
        """Append one chunk."""
        self.texts.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        if chunk.logprobs is not None:
            self.has_logprobs = True
            self.logprobs.extend(chunk.logprobs)

    def finish(self, done: Done) -> Completion:
        """The completion, given the final `Done`."""
        return Completion(
            id=self.request_id,
            text="".join(self.texts),
            token_ids=list(self.token_ids),
            logprobs=list(self.logprobs) if self.has_logprobs else None,
            finish_reason=done.finish_reason,
            route=done.route,
            usage=done.usage,
            timings=done.timings,
            model=done.model,
        )
