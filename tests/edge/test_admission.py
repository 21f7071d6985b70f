"""Connection admission (sans-IO): total and per-source caps, idle eviction under pressure."""

from __future__ import annotations

import pytest
from isthmus.edge.admission import AdmissionLimits, ConnectionTable
from isthmus.edge.receive_budget import ReceiveBudget, ReceiveLimits


def table(**kw: float) -> ConnectionTable:
    return ConnectionTable(AdmissionLimits(**kw))  # type: ignore[arg-type]


def test_per_source_cap_refuses_only_that_source() -> None:
    t = table(max_connections=10, max_connections_per_source=2)
    assert t.admit("a1", "10.0.0.1", now=0.0).is_admitted
    assert t.admit("a2", "10.0.0.1", now=0.0).is_admitted
    refused = t.admit("a3", "10.0.0.1", now=0.0)
    assert not refused.is_admitted and "this address" in refused.reason
    assert t.admit("b1", "10.0.0.2", now=0.0).is_admitted
    t.remove("a1")
    assert t.admit("a3", "10.0.0.1", now=0.0).is_admitted and t.num_from("10.0.0.1") == 2


def test_a_source_at_its_cap_makes_room_by_evicting_its_own_idle_connection() -> None:
    t = table(max_connections=10, max_connections_per_source=2, evict_idle_after_s=5.0)
    t.admit("other", "10.0.0.9", now=0.0)  # idle longest, but another source's: kept
    t.admit("a1", "10.0.0.1", now=1.0)
    t.admit("a2", "10.0.0.1", now=2.0)
    t.stream_opened("a1")
    verdict = t.admit("a3", "10.0.0.1", now=10.0)
    assert verdict.is_admitted and verdict.evict == "a2" and t.num_from("10.0.0.1") == 2
    t.stream_opened("a3")
    assert not t.admit("a4", "10.0.0.1", now=20.0).is_admitted  # all of its connections busy
    assert "other" in t


def test_at_the_cap_the_longest_idle_connection_without_streams_is_evicted() -> None:
    t = table(max_connections=3, evict_idle_after_s=5.0)
    t.admit("busy", "s", now=0.0)
    t.stream_opened("busy")  # oldest, but serving a request: never evicted
    t.admit("idle-old", "s", now=1.0)
    t.admit("idle-new", "s", now=2.0)
    verdict = t.admit("newcomer", "s", now=10.0)
    assert verdict.is_admitted and verdict.evict == "idle-old"
    assert "idle-old" not in t and len(t) == 3 and t.num_evicted == 1


def test_at_the_cap_fresh_or_busy_connections_are_kept_and_the_newcomer_refused() -> None:
    t = table(max_connections=2, evict_idle_after_s=5.0)
    t.admit("a", "s", now=0.0)
    t.admit("b", "s", now=0.0)
    t.stream_opened("a")
    assert not t.admit("c", "s", now=3.0).is_admitted  # b idle only 3 s
    t.stream_opened("b")
    t.stream_closed("b", now=8.0)  # b was used at 8: idle again only from then
    assert not t.admit("c", "s", now=12.0).is_admitted
    verdict = t.admit("c", "s", now=13.0)
    assert verdict.is_admitted and verdict.evict == "b" and t.num_refused == 2


def test_bad_admission_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        AdmissionLimits(max_connections_per_source=0)


# --- receive budgets ----------------------------------------------------------------------------------
def test_connection_over_its_budget_must_shed_the_excess() -> None:
    b = ReceiveBudget(ReceiveLimits(max_per_connection=100, max_total=1000))
    b.update("a", 80)
    assert b.over_connection("a") == 0
    b.update("a", 130)
    assert b.over_connection("a") == 30 and b.total == 130
    b.remove("a")
    assert b.total == 0 and b.peak_total == 130


def test_total_over_budget_sheds_the_biggest_holders_first() -> None:
    b = ReceiveBudget(ReceiveLimits(max_per_connection=100, max_total=200))
    b.update("flood1", 90)
    b.update("flood2", 90)
    assert b.victims() == []
    b.update("newcomer", 30)  # tips the total over: the flood pays, not the newcomer
    assert b.victims() == [("flood1", 10)]
    b.update("flood3", 95)
    assert [v for v, _ in b.victims()] == ["flood3", "flood1"]
    assert b.reset_peak() == 305 and b.peak_total == 305


def test_a_source_throttled_for_wrong_keys_is_refused_before_any_other_check() -> None:
    t = table(max_connections=10, max_connections_per_source=5)
    refused = t.admit("a1", "10.0.0.1", now=0.0, throttled_s=12.5)
    assert not refused.is_admitted and "failed API keys" in refused.reason and "12.5" in refused.reason
    assert "a1" not in t and t.num_from("10.0.0.1") == 0
    assert t.num_refused == t.num_refused_throttled == 1
    assert t.admit("a1", "10.0.0.1", now=1.0, throttled_s=0.0).is_admitted  # credit back: admitted
