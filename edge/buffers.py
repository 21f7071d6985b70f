"""Write watermarks for QUIC streams (sans-IO).

aioquic buffers everything handed to `send_stream_data` until the peer acknowledges it and applies
no backpressure of its own, so a client that stops reading would let the edge's memory grow with
every token. The session asks a `StreamFlow` after each write and each received datagram whether
the stream may keep pulling chunks from its request (`FLOW`), must stop pulling until the peer
catches up (`PAUSE`), or has been stuck too long or buffered too much (`ABORT`, answered with
`SLOW_READER`). Decisions take byte counts and `now` as inputs: no clocks, no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FlowAction(Enum):
    FLOW = "flow"  # keep pulling chunks from the request
    PAUSE = "pause"  # stop pulling until the buffered bytes fall below the low watermarks
    ABORT = "abort"  # the reader is too slow: cancel the request with SLOW_READER


@dataclass(frozen=True, slots=True)
class BufferLimits:
    """Per-stream and per-connection watermarks on bytes written but not yet acknowledged."""

    stream_high: int = 256 * 1024  # bytes: pause pulling above this
    stream_low: int = 64 * 1024  # bytes: resume at or below this
    stream_hard: int = 1024 * 1024  # bytes: abort at or above this (one huge chunk can overshoot high)
    connection_high: int = 4 * 1024 * 1024  # bytes: pause every stream of the connection above this
    connection_low: int = 1024 * 1024  # bytes: resume at or below this
    stall_timeout_s: float = 30.0  # seconds paused before the request is cancelled

    def __post_init__(self) -> None:
        if not 0 <= self.stream_low <= self.stream_high <= self.stream_hard:
            raise ValueError("buffer limits: need 0 <= stream_low <= stream_high <= stream_hard")
        if not 0 <= self.connection_low <= self.connection_high:
            raise ValueError("buffer limits: need 0 <= connection_low <= connection_high")
        if self.stall_timeout_s <= 0:
            raise ValueError("buffer limits: stall_timeout_s must be > 0")


class StreamFlow:
    """Hysteresis between the high and low watermarks plus a stall deadline, for one stream."""

    def __init__(self, limits: BufferLimits) -> None:
        self.limits = limits
        self.paused_since: float | None = None  # loop time the stream was paused at

    @property
    def is_paused(self) -> bool:
        return self.paused_since is not None

    def update(self, stream_buffered: int, connection_buffered: int, now: float) -> FlowAction:
        """Decide from the bytes still unacknowledged on this stream and on its whole connection."""
        lim = self.limits
        if stream_buffered >= lim.stream_hard:
            return FlowAction.ABORT
        if self.paused_since is None:
            if stream_buffered > lim.stream_high or connection_buffered > lim.connection_high:
                self.paused_since = now
                return FlowAction.PAUSE
            return FlowAction.FLOW
        if stream_buffered <= lim.stream_low and connection_buffered <= lim.connection_low:
            self.paused_since = None
            return FlowAction.FLOW
        if now - self.paused_since >= lim.stall_timeout_s:
            return FlowAction.ABORT
        return FlowAction.PAUSE

    def remaining_stall_s(self, now: float) -> float:
        """Seconds left before a paused stream is aborted (the full timeout when flowing)."""
        if self.paused_since is None:
            return self.limits.stall_timeout_s
        return max(0.0, self.limits.stall_timeout_s - (now - self.paused_since))
