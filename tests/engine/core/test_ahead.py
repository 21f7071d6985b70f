"""Planning a step ahead (`Scheduler.schedule_ahead` / `fill_ahead`) gives the plans `schedule` gives.

Two schedulers run the same workload in lockstep: one schedules each step after the previous
step's `postprocess`, the other plans it while the previous step is "on the device" and fills in
the tokens after the `postprocess`, as `EngineCore.step` does. Every step's rows (ids, positions,
tokens, draw counters, table lengths), every update and the prefix-cache counters must agree:
through stop tokens, length limits, admissions from a queue, preemptions, prefix hits, aborts,
stop-string finishes and deadlines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from isthmus.engine.core.ahead import AHEAD_TOKEN
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput, SampledToken, SchedulePlan
from isthmus.engine.core.scheduler import Scheduler

EOS = 0
VOCAB = 13


def _token(seq_id: int, num_generated: int) -> int:
    return (seq_id * 7919 + num_generated * 104729) % VOCAB  # EOS now and then


def _run(plan: SchedulePlan) -> RunOutput:
    out = RunOutput()
    for s in plan.seqs:
        assert AHEAD_TOKEN not in s.token_ids, "a row reached the runner before its token was filled"
        if s.do_sample:
            out.sampled[s.seq_id] = SampledToken(_token(s.seq_id, s.num_generated), -1.0, 0.5)
    return out


Arrival = tuple[str, list[int], SamplingParams, float | None]  # request id, prompt, params, deadline


@dataclass
class Workload:
    arrivals: dict[int, list[Arrival]] = field(default_factory=dict)
    aborts: dict[int, list[str]] = field(default_factory=dict)
    stops: dict[int, list[str]] = field(default_factory=dict)  # finished upstream (a stop string)


def _workload(seed: int) -> Workload:
    rng = random.Random(seed)
    w = Workload()
    prefixes = [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(4, 13))] for _ in range(3)]
    for i in range(14):
        prompt = rng.choice(prefixes) + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 9))]
        max_tokens, ignore_eos = rng.randrange(1, 16), rng.random() < 0.3
        stop_ids = [5] if rng.random() < 0.2 else []
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos,
                                stop_token_ids=stop_ids)
        deadline = float(rng.randrange(6, 40)) if rng.random() < 0.15 else None
        w.arrivals.setdefault(rng.randrange(0, 20), []).append((f"r{i}", prompt, params, deadline))
        if rng.random() < 0.15:
            w.aborts.setdefault(rng.randrange(1, 30), []).append(f"r{i}")
        elif rng.random() < 0.15:
            w.stops.setdefault(rng.randrange(1, 30), []).append(f"r{i}")
    return w


def _before_step(sched: Scheduler, w: Workload, step: int) -> None:
    """What happens between steps: requests arrive, are aborted or stop upstream."""
    for rid, prompt, params, deadline in w.arrivals.get(step, []):
        sched.add(rid, prompt, params, now=float(step), deadline=deadline)
    for rid in w.aborts.get(step, []):
        sched.abort(rid)
    for rid in w.stops.get(step, []):
        seq = sched.get(rid)
        if seq is not None:
            sched.finish(seq.seq_id, "stop")


def _rows(plan: SchedulePlan) -> list[tuple]:
    return [(s.seq_id, tuple(s.token_ids), s.start_pos, s.do_sample, s.num_generated, len(s.block_table),
             s.prompt_len, tuple(s.history_ids)) for s in plan.seqs]


def _drive(w: Workload, ahead: bool, num_blocks: int) -> tuple[list, dict[str, int]]:
    sched = Scheduler(num_kv_blocks=num_blocks, block_size=4, max_model_len=64, max_num_seqs=4,
                      max_num_batched_tokens=24, eos_token_ids={EOS}, vocab_size=VOCAB)
    log: list = []
    planned: SchedulePlan | None = None
    used = 0
    for step in range(80):
        if planned is None:
            _before_step(sched, w, step)
            plan = sched.schedule(float(step))
        else:
            plan, planned = planned, None
        upcoming = None
        if ahead and plan.seqs and all(len(s.token_ids) == 1 for s in plan.seqs):  # "on the device"
            upcoming = sched.schedule_ahead(plan, float(step))
        out = _run(plan)
        rows = _rows(plan)  # the history as the runner saw it
        updates = sched.postprocess(plan, out, float(step))
        log.append((step, rows, [(u.seq.request_id, u.new_token_ids, u.finish_reason) for u in updates]))
        if upcoming is not None:
            used += 1
            _before_step(sched, w, step + 1)
            sched.fill_ahead(upcoming, float(step + 1))
            planned = upcoming if upcoming.seqs else None
        sched.block_manager.check_invariants()
    assert not sched.has_unfinished
    stats = sched.block_manager.stats
    return log, {"ahead": used, "hits": stats.num_hit_tokens, "preemptions": sched.num_preemptions}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_blocks", [12, 64])
def test_planning_ahead_gives_the_plans_schedule_gives(seed: int, num_blocks: int) -> None:
    w = _workload(seed)
    expected, base = _drive(w, ahead=False, num_blocks=num_blocks)
    got, stats = _drive(w, ahead=True, num_blocks=num_blocks)
    for a, b in zip(got, expected, strict=True):
        assert a == b
    assert stats["ahead"] > 0
    assert (stats["hits"], stats["preemptions"]) == (base["hits"], base["preemptions"])


def test_the_workloads_reach_the_interesting_cases() -> None:
    """Preemptions with the small pool, prefix hits, and steps planned ahead with each."""
    totals = {"preemptions": 0, "hits": 0, "ahead": 0}
    for seed in range(6):
        for k, v in _drive(_workload(seed), ahead=True, num_blocks=12)[1].items():
            totals[k] += v
    assert all(v > 0 for v in totals.values()), totals


def _decoding_scheduler(num_blocks: int = 64) -> tuple[Scheduler, SchedulePlan]:
    sched = Scheduler(num_kv_blocks=num_blocks, block_size=4, max_model_len=64, max_num_seqs=4,
                      max_num_batched_tokens=64, eos_token_ids={EOS}, vocab_size=VOCAB)
    for i in range(2):
        sched.add(f"r{i}", [1, 2, 3 + i], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    sched.postprocess(plan := sched.schedule(0.0), _run(plan), 0.0)
    return sched, sched.schedule(1.0)  # a decode of both, not yet postprocessed


def test_ahead_rows_wait_for_their_token_then_get_the_sampled_one() -> None:
    sched, plan = _decoding_scheduler()
    ahead = sched.schedule_ahead(plan, 1.0)
    assert ahead is not None
    assert [s.token_ids for s in ahead.seqs] == [[AHEAD_TOKEN], [AHEAD_TOKEN]]
    assert [s.start_pos for s in ahead.seqs] == [s.start_pos + 1 for s in plan.seqs]
    out = _run(plan)
    sched.postprocess(plan, out, 1.0)
    sched.fill_ahead(ahead, 2.0)
    assert [s.token_ids for s in ahead.seqs] == [[out.sampled[s.seq_id].token_id] for s in plan.seqs]


def test_ahead_declines_what_it_cannot_decide_early() -> None:
    sched, plan = _decoding_scheduler()
    assert sched.schedule_ahead(SchedulePlan(), 1.0) is None  # nothing in flight
    assert sched.schedule_ahead(SchedulePlan(plan.seqs[:1]), 1.0) is None  # not every running sequence
    sched.postprocess(plan, _run(plan), 1.0)
    assert sched.schedule_ahead(plan, 2.0) is None  # already postprocessed
    sched, plan = _decoding_scheduler(num_blocks=2)  # the next block would need an eviction/preemption
    assert sched.block_manager.num_uncached_free_blocks == 0
    assert sched.schedule_ahead(plan, 1.0) is None


def test_a_plan_made_ahead_must_be_filled_before_the_next() -> None:
    sched, plan = _decoding_scheduler()
    assert sched.schedule_ahead(plan, 1.0) is not None
    with pytest.raises(RuntimeError, match="fill_ahead"):
        sched.schedule_ahead(plan, 1.0)
    sched.schedule(2.0)  # a fresh schedule abandons it (the engine after a failed step)
    assert sched.schedule_ahead(plan, 2.0) is not None
