"""A/B split between two center pools, the sans-IO part: which variant a request goes to.

A request's sticky id (the user id it carries, else its API key, else its request id) is hashed
with a salt (SHA-256) into one of `NUM_BUCKETS` buckets; buckets below ``percent`` per cent go to
``candidate``, the rest to ``stable``. The same id always lands in the same bucket, so a user or a
key stays on one variant across requests, edge restarts and edge nodes (same salt); raising the
percentage only moves ids from stable to candidate, never back, which is what a canary rollout
needs. The key itself is only hashed here, never stored or reported.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

from isthmus.protocol import GenerateRequest

Variant = Literal["stable", "candidate"]
STABLE: Variant = "stable"
CANDIDATE: Variant = "candidate"
NUM_BUCKETS = 10_000  # 0.01 % resolution
STICKY_BY = ("user", "key")


@dataclass(frozen=True, slots=True)
class AbSplit:
    """`percent` (0-100) of sticky ids go to the candidate; `sticky` "user" (the request's user id,
    falling back to its key) or "key" (the API key only)."""

    percent: float = 0.0
    salt: str = ""
    sticky: str = "user"

    def __post_init__(self) -> None:
        if not (isinstance(self.percent, int | float) and math.isfinite(self.percent)):
            raise ValueError(f"percent: expected a number in [0, 100], got {self.percent!r}")
        if not 0 <= self.percent <= 100:
            raise ValueError(f"percent: expected a number in [0, 100], got {self.percent!r}")
        if self.sticky not in STICKY_BY:
            raise ValueError(f'sticky: expected "user" or "key", got {self.sticky!r}')

    def bucket(self, sticky_id: str) -> int:
        """The id's bucket in [0, NUM_BUCKETS): stable for a given salt."""
        digest = hashlib.sha256(f"{self.salt}\0{sticky_id}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % NUM_BUCKETS

    def variant(self, sticky_id: str) -> Variant:
        """"candidate" when the id's bucket is inside the candidate's share, else "stable"."""
        return CANDIDATE if self.bucket(sticky_id) < round(self.percent * NUM_BUCKETS / 100) else STABLE

    def sticky_id(self, req: GenerateRequest) -> str:
        """What a request is pinned by: its user id (when `sticky` is "user" and it carries one),
        else its API key, else its request id (no stickiness for anonymous requests)."""
        user = getattr(req, "user", None)
        if self.sticky == "user" and isinstance(user, str) and user:
            return "u:" + user
        key = getattr(req, "api_key", None)
        if isinstance(key, str) and key:
            return "k:" + key
        return "r:" + str(getattr(req, "id", ""))

    def choose(self, req: GenerateRequest) -> Variant:
        """The variant for request `req`."""
        return self.variant(self.sticky_id(req))
