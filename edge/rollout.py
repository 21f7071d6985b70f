"""Canary rollout with automatic rollback, the sans-IO state machine.

A `Rollout` moves the A/B split's candidate share through `RolloutPlan.steps` (e.g. 5, 25, 50,
100 per cent), holding each step for `interval_s` while it watches the candidate's answers
(`observe(is_error, ttft_s)`, fed from `AbPools.observers`). Once a step has seen `min_requests`
answers, an error rate above `max_error_rate` or a first-token p95 above `max_ttft_p95_s` rolls the
candidate back to 0 % at once and records why; a step that held its interval within the limits
moves on; after the last step the rollout is done. `pause`, `resume` and `abort` are the operator's.

Time is passed in (`now`, Unix seconds, so a state written to disk still means something after a
restart); `tick(now)` returns the percentage to apply when it changed. `to_dict`/`from_dict` are the
persisted form (`rollout_driver.py` writes it atomically after every change).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("idle", "running", "paused", "done", "rolled_back", "aborted")
MAX_SAMPLES = 2048  # first-token latencies kept per step for the p95


class RolloutError(ValueError):
    """A plan with a bad field, or an operation the current status does not allow."""


@dataclass(frozen=True)
class RolloutPlan:
    """Steps in per cent (rising, the last one <= 100), seconds per step and the limits."""

    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    interval_s: float = 60.0
    max_error_rate: float = 0.01  # fraction of the candidate's answers that fail
    max_ttft_p95_s: float | None = None  # seconds; None: not watched
    min_requests: int = 20  # candidate answers a step needs before it is judged

    def __post_init__(self) -> None:
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or any(not (0 < s <= 100) for s in steps) or list(steps) != sorted(set(steps)):
            raise RolloutError(f"steps: expected rising percentages in (0, 100], got {list(steps)}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise RolloutError(f"interval_s: expected a number of seconds > 0, got {self.interval_s!r}")
        if not 0 <= self.max_error_rate <= 1:
            raise RolloutError(f"max_error_rate: expected a fraction in [0, 1], got {self.max_error_rate!r}")
        if self.max_ttft_p95_s is not None and not self.max_ttft_p95_s > 0:
            raise RolloutError(f"max_ttft_p95_s: expected seconds > 0, got {self.max_ttft_p95_s!r}")
        if self.min_requests < 1:
            raise RolloutError(f"min_requests: expected an integer >= 1, got {self.min_requests!r}")


@dataclass
class RolloutState:
    """Everything a restart needs to carry on (see `Rollout.to_dict`)."""

    status: str = "idle"
    plan: RolloutPlan | None = None
    step: int = 0  # index into plan.steps
    percent: float = 0.0  # candidate share applied now
    step_started_at: float = 0.0  # Unix seconds
    num_requests: int = 0  # candidate answers in this step
    num_errors: int = 0
    ttfts: list[float] = field(default_factory=list)  # seconds, this step
    reason: str = ""  # why it rolled back, was aborted or finished
    history: list[str] = field(default_factory=list)  # one line per transition


class Rollout:
    """The state machine; every method is pure bookkeeping (no clock, no IO)."""

    def __init__(self, state: RolloutState | None = None) -> None:
        self.state = state or RolloutState()

    # --- operator --------------------------------------------------------------------------------
    def start(self, plan: RolloutPlan, now: float) -> float:
        """Begin at the first step; the percentage to apply."""
        if self.state.status in ("running", "paused"):
            raise RolloutError(f"status: a rollout is already {self.state.status}; abort it first")
        self.state = RolloutState(status="running", plan=plan)
        self._enter_step(0, now, "started")
        return self.state.percent

    def pause(self, now: float) -> None:
        self._require("running")
        self.state.status = "paused"
        self._log(now, "paused")

    def resume(self, now: float) -> None:
        """Carry on with the current step; its interval and counts start again."""
        self._require("paused")
        self.state.status = "running"
        self._enter_step(self.state.step, now, "resumed")

    def abort(self, now: float, reason: str = "aborted by the operator") -> float:
        """Candidate back to 0 %; the percentage to apply."""
        self._require("running", "paused")
        self._finish("aborted", 0.0, reason, now)
        return 0.0

    # --- traffic and time ------------------------------------------------------------------------
    def observe(self, is_error: bool, ttft_s: float | None) -> None:
        """One finished candidate answer (ignored unless running)."""
        st = self.state
        if st.status != "running":
            return
        st.num_requests += 1
        st.num_errors += bool(is_error)
        if ttft_s is not None and math.isfinite(ttft_s) and ttft_s >= 0:
            st.ttfts.append(ttft_s)
            if len(st.ttfts) > MAX_SAMPLES:
                del st.ttfts[: len(st.ttfts) - MAX_SAMPLES]

    def tick(self, now: float) -> float | None:
        """Judge the current step; the new percentage when it changed, else None."""
        st, plan = self.state, self.state.plan
        if st.status != "running" or plan is None:
            return None
        if st.num_requests >= plan.min_requests:
            breach = self._breach(plan)
            if breach:
                self._finish("rolled_back", 0.0, f"{breach} at step {st.step + 1} ({st.percent:g} %)", now)
                return 0.0
        if now - st.step_started_at < plan.interval_s or st.num_requests < plan.min_requests:
            return None
        if st.step + 1 >= len(plan.steps):
            self._finish("done", st.percent, f"held {st.percent:g} % within the limits", now)
            return None
        self._enter_step(st.step + 1, now, "step passed")
        return self.state.percent

    def error_rate(self) -> float:
        st = self.state
        return st.num_errors / st.num_requests if st.num_requests else 0.0

    def ttft_p95(self) -> float | None:
        samples = sorted(self.state.ttfts)
        return samples[max(0, math.ceil(0.95 * len(samples)) - 1)] if samples else None

    # --- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self.state)
        if self.state.plan is not None:
            data["plan"]["steps"] = list(self.state.plan.steps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        """The machine from `to_dict` output; RolloutError naming the field when it is malformed."""
        try:
            plan = (
                RolloutPlan(**{**data["plan"], "steps": tuple(data["plan"]["steps"])})
                if data.get("plan")
                else None
            )
            state = RolloutState(**{**data, "plan": plan})
        except (KeyError, TypeError, ValueError) as exc:
            raise RolloutError(f"rollout state: {exc}") from None
        if state.status not in STATUSES:
            raise RolloutError(f"status: expected one of {', '.join(STATUSES)}, got {state.status!r}")
        return cls(state)

    # --- internals -------------------------------------------------------------------------------
    def _breach(self, plan: RolloutPlan) -> str:
        rate = self.error_rate()
        if rate > plan.max_error_rate:
            return f"error rate {rate:.1%} > {plan.max_error_rate:.1%}"
        p95 = self.ttft_p95()
        if plan.max_ttft_p95_s is not None and p95 is not None and p95 > plan.max_ttft_p95_s:
            return f"first-token p95 {p95:.3f} s > {plan.max_ttft_p95_s:.3f} s"
        return ""

    def _enter_step(self, step: int, now: float, why: str) -> None:
        st = self.state
        assert st.plan is not None
        st.step, st.percent, st.step_started_at = step, st.plan.steps[step], now
        st.num_requests, st.num_errors, st.ttfts = 0, 0, []
        self._log(now, f"{why}: step {step + 1}/{len(st.plan.steps)} at {st.percent:g} %")

    def _finish(self, status: str, percent: float, reason: str, now: float) -> None:
        st = self.state
        st.status, st.percent, st.reason = status, percent, reason
        self._log(now, f"{status}: {reason}")

    def _require(self, *statuses: str) -> None:
        if self.state.status not in statuses:
            raise RolloutError(
                f"status: the rollout is {self.state.status}, expected {' or '.join(statuses)}"
            )

    def _log(self, now: float, line: str) -> None:
        self.state.history.append(f"{now:.0f} {line}")
        del self.state.history[:-50]
