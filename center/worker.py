"""Running one model across a tensor-parallel group: rank 0 drives, the other ranks follow.

Rank 0 owns the scheduler (inside `AsyncEngine`) and hands it a `TPRunner`: every step, the plan
goes to all ranks in ONE broadcast on the control group, then every rank runs its shard of the
forward pass (the row-parallel all-reduces keep them in lock-step) and rank 0 alone computes
logits and samples. Ranks > 0 sit in `follow_plans`, executing plans until a stop message.

When idle, rank 0 sends a heartbeat every ``heartbeat_s`` so the followers' wait for the next
plan never reaches the collective timeout, and so a dead rank is noticed while idle too.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import torch
from isthmus.center.distributed import TPGroup, TPGroupError
from isthmus.center.tp import TensorParallelRewrite
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.plan import RunOutput, SchedulePlan
from isthmus.engine.runner.model_runner import ModelRunner, PlanError

log = logging.getLogger(__name__)

PLAN, PING, STOP = "plan", "ping", "stop"  # control message kinds


def build_shard_runner(options: EngineOptions, group: TPGroup) -> ModelRunner:
    """This rank's `ModelRunner`: the TP rewrite when the group has more than one rank."""
    if group.world_size == 1:
        return ModelRunner(options)
    if options.quantization is not None:
        raise ValueError(
            "quantization is not supported with tensor parallelism (the center runs full weights)"
        )
    return ModelRunner(options, rewrites=[TensorParallelRewrite(group)])


def _slim(plan: SchedulePlan) -> SchedulePlan:
    """The plan followers need: no token history (only rank 0 samples and scores prompts)."""
    return SchedulePlan(
        # want_prompt_logprobs stays: it decides graph replay vs eager, which must match rank 0's.
        seqs=[replace(s, history_ids=[]) for s in plan.seqs],
        preempted_seq_ids=list(plan.preempted_seq_ids),
    )


class TPRunner:
    """Rank 0's runner for `AsyncEngine(options, runner=TPRunner(...))`.

    Construct it on rank 0 while every other rank is in `follow_plans` (the KV block count is
    agreed with one collective: the smallest any rank could allocate).
    """

    def __init__(self, runner: ModelRunner, group: TPGroup, heartbeat_s: float | None = None) -> None:
        if not group.is_driver:
            raise ValueError("TPRunner runs on rank 0 only")
        self.runner = runner
        self.group = group
        self.block_size = runner.block_size
        self.max_model_len = runner.max_model_len
        self.vocab_size = runner.vocab_size
        self.num_kv_blocks = group.all_reduce_min_int(runner.num_kv_blocks)
        self.error: BaseException | None = None  # set once the group broke
        self._lock = threading.Lock()  # one collective sequence at a time: step, ping or stop
        self._stopped = False
        self._wake = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if heartbeat_s is None:
            heartbeat_s = max(0.5, group.timeout_s / 4)
        if group.world_size > 1 and heartbeat_s > 0:
            self._heartbeat = threading.Thread(
                target=self._beat, args=(heartbeat_s,), name="isthmus-tp-heartbeat", daemon=True
            )
            self._heartbeat.start()

    @property
    def is_healthy(self) -> bool:
        return self.error is None and not self._stopped

    def run(self, plan: SchedulePlan) -> RunOutput:
        with self._lock:
            self._check()
            try:
                self.group.broadcast_object((PLAN, _slim(plan)))
                return self.runner.run(plan)
            except TPGroupError as exc:
                self.error = exc
                raise

    def stop(self) -> None:
        """Tell the followers to leave their loop (idempotent; quiet on a broken group)."""
        self._wake.set()
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self.error is None:
                try:
                    self.group.broadcast_object((STOP, None))
                except TPGroupError as exc:
                    self.error = exc
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=5.0)

    def _check(self) -> None:
        if self.error is not None:
            raise TPGroupError(f"tensor-parallel group already broken: {self.error}")
        if self._stopped:
            raise TPGroupError("tensor-parallel group was stopped")

    def _beat(self, interval_s: float) -> None:
        while not self._wake.wait(interval_s):
            # Skip the ping when a step holds the lock: that step is itself proof of life.
            if not self._lock.acquire(blocking=False):
                continue
            try:
                if self._stopped or self.error is not None:
                    return
                self.group.broadcast_object((PING, None))
            except TPGroupError as exc:
                self.error = exc
                log.error("%s", exc)
                return
            finally:
                self._lock.release()


@torch.inference_mode()
def _forward_only(runner: ModelRunner, plan: SchedulePlan) -> None:
    """A follower's share of a step: rank 0's forward (graph replay or eager) and its all-reduces."""
    if plan.is_empty:
        return
    runner.forward_step(plan)  # validates before any collective, on every rank


def follow_plans(runner: ModelRunner, group: TPGroup) -> int:
    """Ranks > 0: agree on the KV blocks, then execute broadcast plans until STOP.

    Returns the number of plans executed. Raises `TPGroupError` when the group breaks.
    """
    if group.is_driver:
        raise ValueError("follow_plans runs on ranks > 0 only")
    group.all_reduce_min_int(runner.num_kv_blocks)
    num_plans = 0
    while True:
        kind, payload = group.broadcast_object()
        if kind == STOP:
            return num_plans
        if kind != PLAN:
            continue
        try:
            _forward_only(runner, payload)
        except PlanError as exc:  # rank 0 refuses the same plan at the same point: stay in step
            log.warning("rank %d skipped a plan: %s", group.rank, exc)
        num_plans += 1


def describe(group: TPGroup) -> dict[str, Any]:
    """A small dict for logs."""
    return {"rank": group.rank, "world_size": group.world_size, "device": str(group.device)}
