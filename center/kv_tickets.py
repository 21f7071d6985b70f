"""KV held for a migration under a ticket, until the target replica fetches it (sans-IO).

When a migrating request's KV cache is too large for the `Migrated` message (one frame, 4 MiB:
about 10 tokens of a 67B bf16 model), the exporting replica keeps the bytes in host memory under
a random ticket and sends a reference instead (`KVBlocks.remote`); the target fetches them over
``FetchKV`` (center/kv_fetch.py). This store is the bookkeeping: a global byte budget (a `put`
over it is refused and the request migrates by tokens), a time to live (an entry nobody fetched
is dropped by `expire`), one fetch per ticket (`take` removes the entry), and `clear` on
shutdown. Time comes from the injected ``clock``; nothing here sleeps or schedules.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TICKET_TTL_S = 30.0  # seconds a ticket waits for its fetch
DEFAULT_TICKET_BUDGET_BYTES = 4 * 1024**3  # bytes held under tickets at once, all requests together
TICKET_BYTES = 24  # random bytes in a ticket (base64url: 32 characters)


def new_ticket() -> str:
    """An unguessable ticket (the fetch is authenticated too: the ticket is not the only guard)."""
    return secrets.token_urlsafe(TICKET_BYTES)


@dataclass(slots=True)
class _Held:
    data: bytes
    expires_at: float


class KVTicketStore:
    """KV bytes held under tickets, bounded in bytes and in time."""

    def __init__(self, budget_bytes: int = DEFAULT_TICKET_BUDGET_BYTES, ttl_s: float = DEFAULT_TICKET_TTL_S,
                 clock: Callable[[], float] = time.monotonic,
                 make_ticket: Callable[[], str] = new_ticket) -> None:
        if budget_bytes < 0 or ttl_s <= 0:
            raise ValueError(f"budget_bytes must be >= 0 and ttl_s > 0, got {budget_bytes}, {ttl_s}")
        self.budget_bytes = budget_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.make_ticket = make_ticket
        self._held: dict[str, _Held] = {}
        self.num_bytes = 0  # held now
        self.num_put = 0
        self.num_taken = 0
        self.num_expired = 0
        self.num_refused = 0  # puts over the budget

    def __len__(self) -> int:
        return len(self._held)

    def room_bytes(self) -> int:
        """Bytes a `put` may hold now (after dropping expired entries)."""
        self.expire()
        return self.budget_bytes - self.num_bytes

    def put(self, data: bytes) -> str | None:
        """Hold ``data``; its ticket, or None when it would go over the budget (nothing held)."""
        if len(data) > self.room_bytes():
            self.num_refused += 1
            return None
        ticket = self.make_ticket()
        while ticket in self._held:  # never with random tickets; an injected maker might repeat
            ticket = self.make_ticket()
        self._held[ticket] = _Held(data, self.clock() + self.ttl_s)
        self.num_bytes += len(data)
        self.num_put += 1
        return ticket

    def take(self, ticket: str) -> bytes | None:
        """The bytes held under ``ticket``, now released; None if unknown, taken or expired."""
        self.expire()
        held = self._held.pop(ticket, None)
        if held is None:
            return None
        self.num_bytes -= len(held.data)
        self.num_taken += 1
        return held.data

    def expire(self) -> int:
        """Drop every entry past its time to live; returns how many."""
        now = self.clock()
        gone = [t for t, h in self._held.items() if h.expires_at <= now]
        for ticket in gone:
            self.num_bytes -= len(self._held.pop(ticket).data)
        self.num_expired += len(gone)
        return len(gone)

    def next_expiry(self) -> float | None:
        """When the oldest entry expires (clock time), or None when nothing is held."""
        return min((h.expires_at for h in self._held.values()), default=None)

    def clear(self) -> int:
        """Drop everything (shutdown); returns how many entries were held."""
        num = len(self._held)
        self._held.clear()
        self.num_bytes = 0
        return num
