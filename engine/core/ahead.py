"""Planning a step ahead: the scheduler's side of overlapping host work with the device.

While decode step N runs on the device, the engine (`EngineCore.step`) plans the running
sequences' rows of step N+1: each of N's rows counts as one token longer, and N+1 feeds that
token, written `AHEAD_TOKEN` until N's `postprocess` has appended it and `fill_ahead` copies it
in. So only `postprocess` and the fill stand between the end of step N and the launch of N+1,
instead of the whole `schedule`.

The plan is the one `schedule` would make after N's `postprocess`: the running sequences get the
same rows (positions, token, history, draw counter; only the block ids may differ), a row that N
finishes by length is not planned, and `fill_ahead` drops the rows of sequences that stopped
anyway (a stop token, a stop string, an abort, a deadline: it expires them first, as `schedule`
would) and only then admits waiting requests, with the budget, slots and blocks N left. Planning
ahead is declined (None) unless N decodes every running sequence within one step's token budget
and their next blocks come from free blocks that hold no cached prefix (so neither a preemption
nor an eviction is decided early); the engine then schedules after N's `postprocess` as before.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.core.sequence import SeqStatus

if TYPE_CHECKING:
    from isthmus.engine.core.scheduler import Scheduler

AHEAD_TOKEN = -1  # the input of a row planned before its token was sampled (never a real id)


def schedule_ahead(sched: Scheduler, inflight: SchedulePlan, now: float | None) -> SchedulePlan | None:
    """The running sequences' rows after ``inflight`` (not yet postprocessed), or None (see the module)."""
    rows = inflight.seqs
    if not rows or len(rows) != len(sched.running) or len(rows) > sched.max_num_batched_tokens:
        return None
    if sched._unfilled:
        raise RuntimeError("the previous plan made ahead was never filled (fill_ahead)")
    ahead, done, need = set(), set(), 0
    for r in rows:
        seq = sched.get_seq(r.seq_id)
        if seq is None or seq.status is not SeqStatus.RUNNING or not r.do_sample or len(r.token_ids) != 1:
            return None
        if seq.num_computed != r.start_pos or len(seq.all_ids) != r.start_pos + 1:
            return None  # already postprocessed, or not a decode
        num_all = len(seq.all_ids) + 1  # with the token in flight
        if num_all - seq.prompt_len >= seq.params.max_tokens or num_all >= sched.max_model_len:
            done.add(r.seq_id)  # the in-flight token is its last
            continue
        ahead.add(r.seq_id)
        need += sched.block_manager.num_extra_blocks(r.seq_id, num_all)
    if need > sched.block_manager.num_uncached_free_blocks:
        # A preemption, or an eviction that the blocks this step frees might have spared: decided
        # after the postprocess instead, so the prefix cache keeps what `schedule` would keep.
        return None
    now = time.monotonic() if now is None else now
    plan = SchedulePlan()
    sched._ahead, sched._ahead_done = ahead, done
    try:
        sched._schedule_running(plan, now)
    finally:
        sched._ahead = sched._ahead_done = frozenset()
    return plan


def fill_ahead(sched: Scheduler, plan: SchedulePlan, now: float | None) -> None:
    """After the in-flight step's `postprocess`: expire deadlines, fill each planned-ahead row's
    input token, drop the rows of sequences that stopped, then admit waiting requests."""
    now = time.monotonic() if now is None else now
    sched._expire(now)
    unfilled, sched._unfilled = sched._unfilled, []
    dropped: set[int] = set()
    for r in unfilled:
        seq = sched.get_seq(r.seq_id)
        if seq is None or seq.status is not SeqStatus.RUNNING or len(seq.all_ids) != r.start_pos + 1:
            dropped.add(id(r))
        else:
            r.token_ids[0] = seq.all_ids[-1]
    if dropped:
        plan.seqs = [r for r in plan.seqs if id(r) not in dropped]
    sched._admit(plan, sched.max_num_batched_tokens - plan.num_tokens, now)
