"""Edge side of a live migration: continue a center answer that ended with `Migrated` elsewhere.

Sans-IO: `resume_request` builds the request the next replica gets from the original request and
the state the exporting replica sent; `MigrationStats` counts what happened for metrics. The relay
(`relay.py`) does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from isthmus.protocol import Error, ErrorCode, GenerateRequest, Migrated

MAX_MIGRATIONS_PER_REQUEST = 4  # hops one answer may take before it ends with a retryable error


def resume_request(
    sent: GenerateRequest, migrated: Migrated, timeout_ms: int | None = None
) -> GenerateRequest:
    """The request that continues ``migrated`` on another replica.

    ``sent`` is the request the exporting replica was answering (id, priority, api key and user
    are kept); its prompt form is replaced by the exported prompt ids, its sampling by the exported
    one (which carries the seed the first replica drew) and its continuation by the exported
    answer so far. ``timeout_ms``: what is left of the deadline (None keeps the sent one).
    """
    return msgspec.structs.replace(
        sent,
        prompt=None,
        messages=None,
        prompt_ids=migrated.prompt_ids,
        sampling=migrated.sampling,
        continuation=migrated.continuation,
        timeout_ms=sent.timeout_ms if timeout_ms is None else timeout_ms,
    )


def no_target_error(request_id: str, reason: str = "no other center replica can continue it") -> Error:
    """What the app gets when a migrated answer cannot go on: today's retryable DRAINING error."""
    return Error(
        id=request_id,
        code=ErrorCode.DRAINING,
        message=f"center drained before the answer finished ({reason})",
        retryable=True,
    )


@dataclass(slots=True)
class MigrationStats:
    """Counts of migrations seen by this edge, and the stalls they caused (seconds)."""

    started: int = 0
    finished: int = 0
    failed: int = 0
    stall_s_sum: float = 0.0  # seconds between the last token before and the first after
    stall_s_max: float = 0.0

    def record_start(self) -> None:
        self.started += 1

    def record_finish(self, stall_s: float) -> None:
        self.finished += 1
        stall_s = max(stall_s, 0.0)
        self.stall_s_sum += stall_s
        self.stall_s_max = max(self.stall_s_max, stall_s)

    def record_failure(self) -> None:
        self.failed += 1
