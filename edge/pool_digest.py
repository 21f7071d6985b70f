"""`DigestGuard`: one center pool serves one set of weights (sans-IO; `CenterPool` feeds it).

Every center replica reports its model folder's manifest digest in `Status.weights_digest`
(sha256 of its ``sha256sums.txt``; "" when it has no manifest). Two replicas of one pool reporting
different non-empty digests serve different weights: the same prompt would get answers from two
models at random. The guard keeps the disagreeing ones out of rotation.

Rule (first seen, sticky): the pool's *established* digest is the first non-empty digest a replica
of the pool reports (`CenterPool` judges each health round in pool order, so at start that is the
first endpoint of ``[center] endpoints`` that reports one). A replica reporting another non-empty
digest is a *mismatch* and is not routed to. A replica reporting "" (no manifest) or nothing yet is
never judged. The established digest is kept while any replica of the pool still reports it; once
none does (they were all removed, or all restarted on new weights), it moves to the digest most
replicas report now (ties: the smallest digest, so the choice does not depend on dict order). First
seen rather than majority so that one replica brought up with new weights in a pool of one or two
cannot take the pool over.

An A/B split keeps its two variants in two pools (`ab_pools.py`), each with its own guard, so
stable and candidate may differ. ``[center] allow_mixed_weights = true`` turns the guard off.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


class WeightsMismatch(ValueError):
    """A replica's weights digest differs from the pool's (admin add refused with it)."""

    def __init__(self, endpoint: str, digest: str, pool_digest: str) -> None:
        self.endpoint, self.digest, self.pool_digest = endpoint, digest, pool_digest
        super().__init__(
            f"endpoint: {endpoint} serves weights digest {digest}, the pool serves {pool_digest}"
            " (set [center] allow_mixed_weights = true, or use an A/B candidate pool)"
        )


@dataclass(frozen=True, slots=True)
class DigestVerdict:
    """What the guard says of one replica after a report."""

    is_mismatch: bool
    digest: str  # what the replica reports ("" = none)
    pool_digest: str  # the pool's established digest ("" = none yet)
    changed: bool  # the mismatch state of this replica changed with this report (log it once)


class DigestGuard:
    """Tracks the digests a pool's replicas report and which ones disagree with the pool's."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.pool_digest = ""  # established digest ("" until a replica reports one)
        self._reported: dict[str, str] = {}  # endpoint -> last non-empty digest
        self._mismatched: set[str] = set()

    def observe(self, endpoint: str, digest: str | None) -> DigestVerdict:
        """Record `endpoint`'s latest report (None: no Status) and judge it."""
        if digest:
            self._reported[endpoint] = digest
        else:
            self._reported.pop(endpoint, None)
        self._settle()
        is_mismatch = self.is_mismatched_digest(digest or "")
        was = endpoint in self._mismatched
        if is_mismatch:
            self._mismatched.add(endpoint)
        else:
            self._mismatched.discard(endpoint)
        return DigestVerdict(is_mismatch, digest or "", self.pool_digest, changed=was != is_mismatch)

    def forget(self, endpoint: str) -> None:
        """`endpoint` left the pool: its report no longer counts."""
        self._reported.pop(endpoint, None)
        self._mismatched.discard(endpoint)
        self._settle()

    def is_mismatched_digest(self, digest: str) -> bool:
        """True when a replica reporting `digest` would be kept out of this pool."""
        return self.enabled and bool(digest) and bool(self.pool_digest) and digest != self.pool_digest

    def check_new(self, endpoint: str, digest: str) -> None:
        """Raise `WeightsMismatch` when a replica about to join reports another digest."""
        if self.is_mismatched_digest(digest):
            raise WeightsMismatch(endpoint, digest, self.pool_digest)

    def is_mismatched(self, endpoint: str) -> bool:
        return endpoint in self._mismatched

    @property
    def mismatched(self) -> list[str]:
        """Endpoints kept out of rotation now, sorted."""
        return sorted(self._mismatched)

    def _settle(self) -> None:
        """Keep the established digest while someone reports it; else take the most reported."""
        reported = self._reported.values()
        if self.pool_digest and self.pool_digest in reported:
            return
        if not reported:
            return  # keep it: replicas that are down now may come back with it
        counts = Counter(reported)
        top = max(counts.values())
        self.pool_digest = min(d for d, n in counts.items() if n == top)
        self._mismatched = {ep for ep, d in self._reported.items() if self.is_mismatched_digest(d)}
