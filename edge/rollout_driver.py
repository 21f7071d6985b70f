"""The canary rollout's shell: feeds the state machine, applies its percentages, keeps its state.

`RolloutDriver(ab, state_path, audit)` listens to the candidate's answers through
`AbPools.observers`, ticks the `Rollout` (rollout.py) once a second with the wall clock, sets the
A/B split's percentage whenever it changes, writes the state file atomically (temp file + rename)
after every change, and writes one audit record per start, step, rollback, pause, resume, abort and
completion. A state file found at start is resumed: a running rollout carries on at its step, a
rolled-back or aborted one keeps the candidate at 0 %.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rollout import Rollout, RolloutError, RolloutPlan

if TYPE_CHECKING:
    from .ab_pools import AbPools
    from .audit import AuditLog

log = logging.getLogger(__name__)

TICK_S = 1.0  # seconds between judgements


class RolloutDriver:
    """Runs one edge's rollout against its `AbPools`."""

    def __init__(
        self,
        ab: AbPools,
        state_path: str | Path | None,
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float = TICK_S,
    ) -> None:
        self.ab = ab
        self.state_path = Path(state_path) if state_path else None
        self.audit = audit
        self.clock = clock
        self.tick_s = tick_s
        self.rollout = self._load()
        self._task: asyncio.Task[None] | None = None
        ab.observers.append(self._observe)
        if self.rollout.state.status != "idle":  # a restart: the saved share wins over the config
            self._apply(self.rollout.state.percent)

    # --- operator --------------------------------------------------------------------------------
    def start(self, plan: RolloutPlan, actor: str = "admin", source: str = "") -> dict[str, Any]:
        percent = self.rollout.start(plan, self.clock())
        self._changed("rollout.start", percent, actor, source, {"steps": list(plan.steps)})
        return self.status()

    def pause(self, actor: str = "admin", source: str = "") -> dict[str, Any]:
        self.rollout.pause(self.clock())
        self._changed("rollout.pause", None, actor, source)
        return self.status()

    def resume(self, actor: str = "admin", source: str = "") -> dict[str, Any]:
        self.rollout.resume(self.clock())
        self._changed("rollout.resume", None, actor, source)
        return self.status()

    def abort(self, actor: str = "admin", source: str = "") -> dict[str, Any]:
        percent = self.rollout.abort(self.clock())
        self._changed("rollout.abort", percent, actor, source)
        return self.status()

    def status(self) -> dict[str, Any]:
        """The state as JSON-ready data, with this step's error rate and first-token p95."""
        st = self.rollout.to_dict()
        st.pop("ttfts", None)
        st["error_rate"] = self.rollout.error_rate()
        st["ttft_p95_s"] = self.rollout.ttft_p95()
        return st

    # --- loop ------------------------------------------------------------------------------------
    def start_loop(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="rollout")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def tick(self) -> None:
        """One judgement now (the loop calls it every `tick_s`)."""
        before = self.rollout.state.status
        percent = self.rollout.tick(self.clock())
        after = self.rollout.state.status
        if percent is None and before == after:
            return
        action = {"rolled_back": "rollout.rollback", "done": "rollout.done"}.get(after, "rollout.step")
        self._changed(action, percent, "rollout", "", {"reason": self.rollout.state.reason})

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:  # the rollout must not take the edge down; the state file stays
                log.exception("rollout tick failed")

    # --- internals -------------------------------------------------------------------------------
    def _observe(self, variant: str, is_error: bool, ttft_s: float | None) -> None:
        if variant == "candidate":
            self.rollout.observe(is_error, ttft_s)

    def _apply(self, percent: float) -> None:
        self.ab.split = dataclasses.replace(self.ab.split, percent=percent)

    def _changed(
        self, action: str, percent: float | None, actor: str, source: str, extra: dict[str, Any] | None = None
    ) -> None:
        if percent is not None:
            self._apply(percent)
        self._save()
        st = self.rollout.state
        details = {"status": st.status, "step": st.step + 1, "percent": st.percent, **(extra or {})}
        log.info("%s: %s", action, details)
        if self.audit is not None:
            outcome = "failed" if action == "rollout.rollback" else "ok"
            self.audit.record(action, actor=actor, source=source, outcome=outcome, details=details)

    def _save(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.rollout.to_dict()), encoding="utf-8")
            os.replace(tmp, self.state_path)
        except OSError as exc:  # keep serving; say so loudly
            log.error("cannot write the rollout state %s: %s", self.state_path, exc)

    def _load(self) -> Rollout:
        if self.state_path is None or not self.state_path.exists():
            return Rollout()
        try:
            return Rollout.from_dict(json.loads(self.state_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, RolloutError) as exc:
            log.error("ignoring the rollout state %s: %s", self.state_path, exc)
            return Rollout()
