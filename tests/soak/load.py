"""Closed-loop load through one shared SDK client, with every greedy answer checked.

`run_load` keeps `concurrency` requests in flight on one `Client` until `duration_s` has passed
(or `max_requests` were started), then waits for the last ones. Each request is greedy with
`ignore_eos`, so its token ids must equal the reference answer of the tier that answered
(`References`: a direct engine run of the same prompt on the same checkpoint). Every request is
bounded by `hang_s`: one that takes longer is a hang, cancelled and counted, never waited on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from isthmus.client import Client, IsthmusError

PROMPTS = [
    "Hello there",
    "The quick brown fox jumps over the lazy dog",
    "Once upon a time, in a land far away, there lived",
    "Write a haiku about the sea",
    "Explain tensor parallelism in one sentence.",
    "What is the capital of France?",
    "1, 2, 3, 4, 5,",
    "Translate 'good morning' into German.",
    "A long prompt " + "with many repeated words " * 12,
    "Tell me a story about a robot who learns to paint.",
    "def fibonacci(n):",
    "Summarize: the edge answers easy prompts and escalates hard ones.",
]
MAX_TOKENS = 8  # tokens per answer: short answers, many requests


@dataclass
class References:
    """Greedy token ids per (tier, prompt index), from direct engine runs."""

    ids: dict[tuple[str, int], list[int]]

    def matches(self, tier: str, index: int, token_ids: list[int]) -> bool:
        return self.ids.get((tier, index)) == token_ids


async def reference_ids(model: str, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Greedy answers of a direct `AsyncEngine` run, one prompt at a time (no batching)."""
    from isthmus.engine.core.async_engine import AsyncEngine, EngineRequest
    from isthmus.engine.core.options import EngineOptions
    from isthmus.engine.core.params import SamplingParams

    engine = AsyncEngine(EngineOptions(model=model, dtype="float32", num_kv_blocks=64, max_num_seqs=4))
    await engine.start()
    try:
        out: list[list[int]] = []
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for i, prompt in enumerate(prompts):
            ids: list[int] = []
            req = EngineRequest(f"ref{i}", engine.tokenizer.encode(prompt), params)
            async for o in engine.generate(req):
                ids.extend(o.new_token_ids)
            out.append(ids)
        return out
    finally:
        await engine.stop()


@dataclass
class LoadStats:
    """What happened to every request of one load run."""

    outcomes: Counter[str] = field(default_factory=Counter)  # ok, corrupt, failed, cut, hang
    tiers: Counter[str] = field(default_factory=Counter)
    ttft_s: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # first few problems, for the report
    num_started: int = 0
    wall_s: float = 0.0

    def note(self, kind: str, detail: str = "") -> None:
        self.outcomes[kind] += 1
        if detail and len(self.samples) < 8:
            self.samples.append(f"{kind}: {detail}")

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.num_started,
            "wall_s": round(self.wall_s, 1),
            "outcomes": dict(self.outcomes),
            "tiers": dict(self.tiers),
            "ttft_p50_ms": _ms(percentile(self.ttft_s, 50)),
            "ttft_p99_ms": _ms(percentile(self.ttft_s, 99)),
            "samples": self.samples,
        }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


async def one_request(
    client: Client, refs: References, index: int, tier: str, stats: LoadStats, hang_s: float
) -> None:
    """One greedy request; its outcome is counted in `stats`.

    ok: Done with the reference ids of the answering tier; corrupt: anything else that ended in
    Done; cut: a retryable error after tokens arrived (the one error a mid-answer failure gives);
    failed: any error before a token, or a non-retryable one; hang: over `hang_s`.
    """
    start = time.monotonic()
    ids: list[int] = []
    first: float | None = None
    stream = client.generate(
        PROMPTS[index], max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, tier=tier
    )
    try:
        async with asyncio.timeout(hang_s), stream:
            async for chunk in stream:
                if first is None and chunk.token_ids:
                    first = time.monotonic() - start
                ids.extend(chunk.token_ids)
    except TimeoutError:
        stats.note("hang", f"prompt {index} tier {tier}: no end after {hang_s:g} s ({len(ids)} tokens)")
        return
    except IsthmusError as exc:
        kind = "cut" if (ids and exc.retryable) else "failed"
        stats.note(kind, f"prompt {index} tier {tier} after {len(ids)} tokens: {type(exc).__name__}: {exc}")
        return
    if first is not None:
        stats.ttft_s.append(first)
    done = stream.completion
    answered = done.route.tier if done is not None else "?"
    stats.tiers[answered] += 1
    if done is not None and refs.matches(answered, index, ids):
        stats.note("ok")
    else:
        stats.note("corrupt", f"prompt {index} tier {answered}: got {ids}")


async def run_load(
    client: Client,
    refs: References,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int = 10**9,
    tiers: tuple[str, ...] = ("edge", "center"),
    hang_s: float = 60.0,
    seed: int = 0,
) -> LoadStats:
    """`concurrency` workers, each sending one request after another, for `duration_s`."""
    stats = LoadStats()
    rng = random.Random(seed)
    start = time.monotonic()
    stop_at = start + duration_s

    async def worker() -> None:
        while time.monotonic() < stop_at and stats.num_started < max_requests:
            stats.num_started += 1
            index, tier = rng.randrange(len(PROMPTS)), rng.choice(tiers)
            await one_request(client, refs, index, tier, stats, hang_s)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.wall_s = time.monotonic() - start
    return stats
