"""The gate's table of blocked sources (sans-IO): verdicts, deadlines, reply pacing, its bound."""

from __future__ import annotations

import pytest
from isthmus.edge.source_gate import GateLimits, SourceGate, Verdict


def test_a_blocked_source_gets_one_refusal_per_interval_and_the_rest_are_dropped() -> None:
    gate = SourceGate(GateLimits(reply_interval_s=1.0))
    assert gate.verdict("10.0.0.1", now=0.0) is Verdict.PASS
    gate.block("10.0.0.1", until=10.0, reason="too many", now=0.0)
    assert gate.verdict("10.0.0.1", now=0.5) is Verdict.REPLY
    assert gate.reason("10.0.0.1", now=0.5) == "too many; retry in 9.5 s"
    assert [gate.verdict("10.0.0.1", now=t) for t in (0.6, 1.2, 1.6)] == [
        Verdict.DROP,
        Verdict.DROP,
        Verdict.REPLY,
    ]
    assert gate.num_replied == 2 and gate.num_dropped == 2
    assert gate.verdict("10.0.0.2", now=1.0) is Verdict.PASS  # other sources are not affected
    assert gate.verdict("10.0.0.1", now=10.0) is Verdict.PASS and len(gate) == 0  # expired: forgotten


def test_a_later_deadline_extends_a_block_and_an_earlier_one_does_not_shorten_it() -> None:
    gate = SourceGate()
    gate.block("10.0.0.1", until=10.0, reason="a", now=0.0)
    gate.block("10.0.0.1", until=5.0, reason="b", now=0.0)
    assert gate.blocked_for("10.0.0.1", now=0.0) == pytest.approx(10.0)
    gate.block("10.0.0.1", until=20.0, reason="c", now=0.0)
    assert gate.blocked_for("10.0.0.1", now=0.0) == pytest.approx(20.0)
    assert gate.reason("10.0.0.1", now=0.0).startswith("c;")


def test_the_table_is_bounded_expired_blocks_going_first() -> None:
    gate = SourceGate(GateLimits(max_sources=3))
    gate.block("10.0.0.1", until=1.0, reason="r", now=0.0)
    gate.block("10.0.0.2", until=50.0, reason="r", now=0.0)
    gate.block("10.0.0.3", until=50.0, reason="r", now=0.0)
    gate.block("10.0.0.4", until=50.0, reason="r", now=2.0)  # 10.0.0.1 expired: it goes
    assert len(gate) == 3 and gate.blocked_for("10.0.0.2", now=2.0) > 0
    gate.block("10.0.0.5", until=50.0, reason="r", now=3.0)  # none expired: the oldest goes
    assert len(gate) == 3 and gate.blocked_for("10.0.0.2", now=3.0) == 0.0
    with pytest.raises(ValueError):
        GateLimits(max_sources=0)
