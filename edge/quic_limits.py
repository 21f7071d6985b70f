"""The QUIC listener's limits, its session-ticket store, and the stream limits aioquic lacks knobs for."""

from __future__ import annotations

from dataclasses import dataclass, field

from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket
from isthmus.protocol.limits import MAX_FRAME_SIZE

from .admission import AdmissionLimits
from .auth_throttle import ThrottleLimits
from .buffers import BufferLimits
from .quic_compat import set_local_stream_limits
from .receive_budget import ReceiveLimits
from .source_gate import GateLimits


def default_strike_limits() -> ThrottleLimits:
    """Requests refused for breaking the limits, per source, on connections that proved nothing:
    a burst of 32, then one every 10 s; out of credit again before refilling, the wait doubles.

    The first wait is long enough to matter: with 0.5 s (2 a second), a partial-frame attacker
    whose connection was closed reconnected as soon as its drain was over, each time costing a
    handshake and 32 more refusals, and the attackers' reconnections came in bursts."""
    return ThrottleLimits(max_failures=32, window_s=320.0, max_backoff_s=600.0)


@dataclass(frozen=True, slots=True)
class QuicLimits:
    """Admission and memory limits of the QUIC listener."""

    max_connections: int = 1024  # connections held at once; idle ones are evicted to admit more
    max_streams_per_connection: int = 64  # concurrent request streams; also the QUIC transport param
    max_frame_size: int = MAX_FRAME_SIZE  # bytes: checked before a frame body is buffered
    idle_timeout_s: float = 60.0  # seconds
    # bytes: the flow-control window first granted per stream (aioquic doubles it each time half
    # is used): small, so a stream refused from its first bytes cannot have sent much meanwhile
    max_stream_data: int = 64 * 1024
    max_data: int = 4 * 1024 * 1024  # bytes: flow-control window we grant per connection
    buffers: BufferLimits = field(default_factory=BufferLimits)
    max_session_tickets: int = 10_000  # tickets remembered for 0-RTT resumption
    max_connections_per_source: int = 256  # connections from one source address
    evict_idle_after_s: float = 2.0  # seconds without a stream before a connection may be evicted
    receive: ReceiveLimits = field(default_factory=ReceiveLimits)  # bytes held before a request is read
    # per source address, on connections with no successful request yet: requests refused for
    # their size (PROMPT_TOO_LONG) or for holding too many partial frames; out of credit, the
    # source's unproven connections are closed and its new ones refused at their first packet
    strikes: ThrottleLimits = field(default_factory=default_strike_limits)
    gate: GateLimits = field(default_factory=GateLimits)  # sources refused before the handshake

    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_connections=self.max_connections,
            max_connections_per_source=self.max_connections_per_source,
            evict_idle_after_s=self.evict_idle_after_s,
        )


class SessionTicketStore:
    """Remembers the tickets we issued so returning clients can resume (and send 0-RTT data).

    Tickets are single-use (`pop`), which keeps a replayed 0-RTT request from being accepted twice
    by this node.
    """

    def __init__(self, max_tickets: int) -> None:
        self._tickets: dict[bytes, SessionTicket] = {}
        self._max_tickets = max_tickets

    def add(self, ticket: SessionTicket) -> None:
        if len(self._tickets) >= self._max_tickets:
            self._tickets.pop(next(iter(self._tickets)))  # oldest first (insertion order)
        self._tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> SessionTicket | None:
        return self._tickets.pop(label, None)

    def __len__(self) -> int:
        return len(self._tickets)


def set_stream_limits(quic: QuicConnection, max_bidi: int) -> None:
    """Advertise `max_bidi` concurrent request streams and no unidirectional ones.

    aioquic (1.7) has no configuration knob for these. Its `Limit` keeps `value` (what the peer
    may open, raised by one each time a peer stream is discarded) and `sent` (what was last
    advertised); MAX_STREAMS goes out only once `value` passes `sent`. Both must be set: lowering
    `value` alone left `sent` at aioquic's 128, so no credit was granted again until 64 more
    streams than the peer could open had finished, and the 65th stream stalled for good. The
    transport parameters read `value` after the protocol is built, before the first flight.
    """
    set_local_stream_limits(quic, max_bidi, max_uni=0)
