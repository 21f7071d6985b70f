"""Cache-aware choice of center replica (sans-IO): send a request where its prefix is likely cached.

The edge cannot see a replica's KV cache, so it keeps an approximate record of its own: for each
replica, the chained hashes of the leading blocks of the requests it recently sent there (an LRU
bounded by ``max_entries``). A request's *match* on a replica is how many of its leading block
hashes that record holds, in order. The policy, after SGLang's cache-aware router:

- if the candidates' loads are imbalanced (the busiest minus the idlest exceeds ``balance_abs``
  *and* the busiest is more than ``balance_rel`` times the idlest), the least-loaded one wins;
- else the replica with the lowest estimated cost wins: the blocks it would still have to compute
  (the request's blocks minus its match) plus ``load_cost_blocks`` per request it already has, so
  a long match is worth a little queueing but a shared system prompt alone does not pile every
  new conversation onto the one replica that saw it first; with no match (of at least
  ``min_match_blocks``) anywhere the caller's own least-loaded choice stands.

Blocks are cut from a canonical byte form of the prompt (token ids as packed int32, or the text /
chat messages as UTF-8), so the record works whether or not the edge tokenized the prompt. The
hashes are Python's 64-bit tuple hashes, chained: equal within one process, which is all the edge
needs, and a collision only costs a less apt choice, never a wrong answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from isthmus.protocol import GenerateRequest


@dataclass(frozen=True, slots=True)
class AffinityOptions:
    """Settings of the cache-aware policy."""

    enabled: bool = True
    block_bytes: int = 64  # bytes of the canonical prompt per hashed block (16 int32 tokens)
    max_blocks: int = 256  # leading blocks hashed per request (bounds the cost of a long prompt)
    max_entries: int = 100_000  # block hashes remembered per replica (LRU)
    min_match_blocks: int = 1  # shorter matches are treated as no match
    balance_abs: float = 8.0  # requests: a load gap above this (and balance_rel) means imbalance
    balance_rel: float = 1.5  # ratio busiest / idlest above which (and balance_abs) it is imbalance
    load_cost_blocks: float = 32.0  # blocks of prefill one request in a replica's load is worth

    def __post_init__(self) -> None:
        if self.block_bytes < 1 or self.max_blocks < 1 or self.max_entries < 1:
            raise ValueError("block_bytes, max_blocks and max_entries must be >= 1")
        if self.balance_abs < 0 or self.balance_rel < 1:
            raise ValueError("balance_abs must be >= 0 and balance_rel >= 1")


def prompt_bytes(req: GenerateRequest) -> bytes:
    """The canonical bytes whose leading blocks identify the request's prefix."""
    if req.prompt_ids is not None:
        return req.prompt_ids
    if req.messages is not None:
        return b"".join(f"<{m.role}>{m.content}".encode() for m in req.messages)
    return (req.prompt or "").encode()


class PrefixAffinity:
    """Per-replica records of recent prefixes, and the choice among candidate replicas."""

    def __init__(self, options: AffinityOptions | None = None) -> None:
        self.options = options or AffinityOptions()
        self._records: dict[str, OrderedDict[int, None]] = {}
        self.num_choices = 0
        self.num_affinity_choices = 0  # choices made by a prefix match
        self.num_balance_choices = 0  # choices forced by an imbalance

    def block_hashes(self, data: bytes) -> list[int]:
        """Chained hashes of the leading full blocks of ``data`` (at most ``max_blocks``)."""
        n = self.options.block_bytes
        hashes: list[int] = []
        prev = 0
        for i in range(min(len(data) // n, self.options.max_blocks)):
            prev = hash((prev, data[i * n : (i + 1) * n]))
            hashes.append(prev)
        return hashes

    def match(self, endpoint: str, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` the record of ``endpoint`` holds."""
        record = self._records.get(endpoint)
        if not record:
            return 0
        n = 0
        for h in hashes:
            if h not in record:
                break
            n += 1
        return n

    def record(self, endpoint: str, hashes: Sequence[int]) -> None:
        """Note that the request with these block hashes was sent to ``endpoint``."""
        if not hashes:
            return
        record = self._records.setdefault(endpoint, OrderedDict())
        for h in hashes:
            record[h] = None
            record.move_to_end(h)
        while len(record) > self.options.max_entries:
            record.popitem(last=False)

    def forget(self, endpoint: str) -> None:
        """Drop a replica's record (it restarted, or left the pool)."""
        self._records.pop(endpoint, None)

    def choose(self, loads: dict[str, float], hashes: Sequence[int]) -> str | None:
        """The replica to prefer among ``loads`` (endpoint -> load), or None for "least loaded".

        Returns None when disabled, imbalanced, or when no candidate matches the prefix.
        """
        if not self.options.enabled or not loads:
            return None
        self.num_choices += 1
        lo, hi = min(loads.values()), max(loads.values())
        if hi - lo > self.options.balance_abs and hi > lo * self.options.balance_rel:
            self.num_balance_choices += 1
            return None
        matches = {ep: self.match(ep, hashes) for ep in loads}
        best = max(matches.values(), default=0)
        if best < self.options.min_match_blocks:
            return None
        self.num_affinity_choices += 1
        w = self.options.load_cost_blocks
        return min(loads, key=lambda ep: (len(hashes) - matches[ep] + w * loads[ep], loads[ep]))
