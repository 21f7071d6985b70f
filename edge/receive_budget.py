"""Budgets for bytes received and held before a request is read (sans-IO).

Until a request frame is complete the edge holds its bytes: in the stream's frame decoder and in
aioquic's receive buffers (out-of-order data). Every request frame comes before authentication,
so these bytes are what an unauthenticated peer can make the edge hold. Two budgets bound them:
one per connection and one over all connections. The connection protocol reports each
connection's held bytes after every datagram; `over_connection` says whether that connection must
shed, and `victims` which connections must shed, and how much, for the total to fit. Shedding
takes the biggest holders first, so a newcomer whose small request tips the total over the budget
is not the one punished for a flood that is already held.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceiveLimits:
    max_per_connection: int = 8 * MiB  # bytes of partial frames and unread data per connection
    max_total: int = 256 * MiB  # bytes of the same over all connections
    max_after_request: int = 64 * 1024  # bytes of a partial frame after the request (only Cancel fits)
    # streams per connection still waiting for their complete request frame; newer ones are
    # stopped (STOP_SENDING) and answered OVERLOADED, so a peer cannot keep many partial frames
    # flowing (a request frame usually arrives whole in one datagram)
    max_pending_streams: int = 16
    # the same before the connection's first successful request: a peer that has proved nothing
    # gets few partial frames flowing at once (the flood that cost legitimate clients most)
    max_pending_streams_unproven: int = 2
    # bytes: the largest request frame body this edge accepts; a longer one is refused
    # (PROMPT_TOO_LONG) at its header, before its body is received. None: max_frame_size only.
    # Not derived from the prompt limit by default: a chat template may leave text out, so a
    # conversation's size does not bound its tokens
    max_request_size: int | None = None

    def __post_init__(self) -> None:
        if min(self.max_per_connection, self.max_total, self.max_after_request) < 1:
            raise ValueError("max_receive_buffer_per_connection: receive budgets must be >= 1 byte")
        if min(self.max_pending_streams, self.max_pending_streams_unproven) < 1:
            raise ValueError("max_pending_streams: expected an integer >= 1")
        if self.max_request_size is not None and self.max_request_size < 1:
            raise ValueError("max_request_size: expected an integer >= 1 or None")


class ReceiveBudget:
    """Held bytes per connection and in total; says who must shed to stay within the budgets."""

    def __init__(self, limits: ReceiveLimits | None = None) -> None:
        self.limits = limits or ReceiveLimits()
        self._held: dict[Hashable, int] = {}
        self.total = 0  # bytes
        self.peak_total = 0  # bytes: highest total since `reset_peak`
        self.num_shed = 0  # times a connection had to shed

    def update(self, conn: Hashable, held: int) -> None:
        """`conn` now holds `held` bytes."""
        self.total += held - self._held.get(conn, 0)
        if held:
            self._held[conn] = held
        else:
            self._held.pop(conn, None)
        self.peak_total = max(self.peak_total, self.total)

    def remove(self, conn: Hashable) -> None:
        self.update(conn, 0)

    def held(self, conn: Hashable) -> int:
        return self._held.get(conn, 0)

    def over_connection(self, conn: Hashable) -> int:
        """Bytes `conn` holds beyond its per-connection budget (0 when within it)."""
        return max(0, self.held(conn) - self.limits.max_per_connection)

    def victims(self) -> list[tuple[Hashable, int]]:
        """(connection, bytes to shed), biggest holders first, so the total fits the budget."""
        excess = self.total - self.limits.max_total
        out: list[tuple[Hashable, int]] = []
        if excess <= 0:
            return out
        for conn, held in sorted(self._held.items(), key=lambda kv: kv[1], reverse=True):
            out.append((conn, min(held, excess)))
            excess -= held
            if excess <= 0:
                break
        return out

    def reset_peak(self) -> int:
        """The peak total since the last reset; the peak starts again from the current total."""
        peak, self.peak_total = self.peak_total, self.total
        return peak
