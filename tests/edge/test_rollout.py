"""Rollout (sans-IO): steps on a healthy candidate, rollback on errors or latency, operator controls."""

from __future__ import annotations

import json
import random

import pytest
from isthmus.edge.rollout import Rollout, RolloutError, RolloutPlan

PLAN = RolloutPlan(steps=(5, 25, 50, 100), interval_s=60, max_error_rate=0.01, max_ttft_p95_s=0.5)


def drive(
    rollout: Rollout, *, fail_every: int = 0, ttft_s: float = 0.1, per_tick: int = 10, ticks: int = 100
) -> list[float]:
    """Feed `per_tick` answers then tick 10 s later, `ticks` times; the percentages applied."""
    applied: list[float] = []
    now, n = 1000.0, 0
    for _ in range(ticks):
        for _ in range(per_tick):
            n += 1
            rollout.observe(fail_every > 0 and n % fail_every == 0, ttft_s)
        now += 10
        if (p := rollout.tick(now)) is not None:
            applied.append(p)
    return applied


def test_a_healthy_candidate_reaches_100_percent() -> None:
    r = Rollout()
    assert r.start(PLAN, now=1000.0) == 5
    assert drive(r) == [25, 50, 100]
    assert r.state.status == "done" and r.state.percent == 100


def test_a_candidate_failing_20_percent_is_rolled_back_with_the_reason() -> None:
    r = Rollout()
    r.start(PLAN, now=1000.0)
    assert drive(r, fail_every=5) == [0]
    assert r.state.status == "rolled_back" and r.state.percent == 0
    assert "error rate 20.0% > 1.0%" in r.state.reason and "step 1" in r.state.reason


def test_a_slow_candidate_is_rolled_back_on_first_token_p95() -> None:
    r = Rollout()
    r.start(PLAN, now=1000.0)
    assert drive(r, ttft_s=0.9) == [0]
    assert "first-token p95 0.900 s > 0.500 s" in r.state.reason


def test_a_failure_at_a_later_step_rolls_back_from_there() -> None:
    r = Rollout()
    r.start(PLAN, now=1000.0)
    assert drive(r, ticks=7) == [25]  # 60 s held at 5 %
    assert drive(r, fail_every=3, ticks=3) == [0]
    assert "step 2 (25 %)" in r.state.reason


def test_a_step_waits_for_enough_answers_before_moving_on() -> None:
    r = Rollout()
    r.start(RolloutPlan(steps=(10, 100), interval_s=60, min_requests=50), now=0.0)
    for _ in range(10):
        r.observe(False, 0.1)
    assert r.tick(1000.0) is None and r.state.percent == 10  # the interval passed, 10 answers < 50


def test_pause_freezes_and_resume_restarts_the_step() -> None:
    r = Rollout()
    r.start(PLAN, now=0.0)
    r.pause(now=10.0)
    r.observe(True, 0.1)  # ignored while paused
    assert r.tick(1000.0) is None and r.state.num_requests == 0
    r.resume(now=1000.0)
    assert r.state.status == "running" and r.state.step_started_at == 1000.0
    with pytest.raises(RolloutError, match="status"):
        r.resume(now=1001.0)


def test_abort_goes_back_to_zero_and_a_new_rollout_may_start() -> None:
    r = Rollout()
    r.start(PLAN, now=0.0)
    with pytest.raises(RolloutError, match="already running"):
        r.start(PLAN, now=1.0)
    assert r.abort(now=2.0) == 0.0 and r.state.status == "aborted"
    assert r.start(PLAN, now=3.0) == 5


def test_state_survives_a_round_trip_through_json() -> None:
    r = Rollout()
    r.start(PLAN, now=1000.0)
    drive(r, ticks=7)
    rnd = random.Random(1)
    for _ in range(30):
        r.observe(rnd.random() < 0.001, rnd.uniform(0.05, 0.2))
    back = Rollout.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.state == r.state
    assert back.tick(r.state.step_started_at + 61) == 50  # carries on where it was


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": (50, 25)}, "steps"),
        ({"steps": (0, 100)}, "steps"),
        ({"steps": (5, 150)}, "steps"),
        ({"interval_s": 0}, "interval_s"),
        ({"max_error_rate": 2}, "max_error_rate"),
        ({"max_ttft_p95_s": -1}, "max_ttft_p95_s"),
        ({"min_requests": 0}, "min_requests"),
    ],
)
def test_bad_plans_are_refused_by_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(RolloutError, match=field):
        RolloutPlan(**kwargs)  # type: ignore[arg-type]


def test_a_malformed_saved_state_is_refused() -> None:
    with pytest.raises(RolloutError):
        Rollout.from_dict({"status": "sideways"})
    with pytest.raises(RolloutError):
        Rollout.from_dict({"plan": {"steps": [5]}, "bogus": 1})
