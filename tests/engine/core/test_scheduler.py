import random

import pytest
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput
from isthmus.engine.core.scheduler import InvalidRequest, PromptTooLong, QueueFull, Scheduler

from tests.engine.fake_runner import FakeRunner, reference_output

VOCAB = 50


def make(num_blocks=64, block_size=4, **kw) -> tuple[Scheduler, FakeRunner]:
    kw.setdefault("max_model_len", 4096)
    sched = Scheduler(num_kv_blocks=num_blocks, block_size=block_size, vocab_size=VOCAB, **kw)
    return sched, FakeRunner(num_blocks, block_size, VOCAB)


def step(sched, runner, now=0.0):
    plan = sched.schedule(now)
    out = runner.run(plan) if not plan.is_empty else RunOutput()
    return plan, sched.postprocess(plan, out, now)


def run_all(sched, runner, max_steps=10_000, on_step=None):
    outputs: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    for i in range(max_steps):
        if not sched.has_unfinished:
            break
        plan, updates = step(sched, runner, float(i))
        assert plan.num_tokens <= sched.max_num_batched_tokens
        assert len(sched.running) <= sched.max_num_seqs
        sched.block_manager.check_invariants()
        for u in updates:
            outputs.setdefault(u.seq.request_id, []).extend(u.new_token_ids)
            if u.finish_reason:
                reasons[u.seq.request_id] = u.finish_reason
        if on_step:
            on_step(i)
    assert not sched.has_unfinished
    return outputs, reasons


def prompt(rng, n):
    return [rng.randrange(VOCAB) for _ in range(n)]


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def test_outputs_match_reference_and_no_leaks():
    sched, runner = make(max_num_batched_tokens=16)
    rng = random.Random(0)
    prompts = {f"r{i}": prompt(rng, rng.randrange(1, 30)) for i in range(12)}
    for rid, p in prompts.items():
        sched.add(rid, p, greedy(7))
    outputs, reasons = run_all(sched, runner)
    for rid, p in prompts.items():
        assert outputs[rid] == reference_output(p, 7, VOCAB)
        assert reasons[rid] == "length"
    assert sched.block_manager.num_free_blocks == 64


def test_chunked_prefill_respects_budget_and_mixes_decodes_first():
    sched, runner = make(max_num_batched_tokens=8)
    sched.add("a", list(range(3)), greedy(5))
    plan, _ = step(sched, runner)
    assert [len(s.token_ids) for s in plan.seqs] == [3]
    sched.add("b", list(range(20)), greedy(5))
    plan, _ = step(sched, runner)
    # decode of "a" first, then a 7-token chunk of "b"'s prefill
    assert [(s.seq_id, len(s.token_ids), s.do_sample) for s in plan.seqs] == [(0, 1, True), (1, 7, False)]
    assert plan.seqs[1].start_pos == 0
    plan, _ = step(sched, runner)
    assert [(len(s.token_ids), s.start_pos) for s in plan.seqs] == [(1, 4), (7, 7)]
    plan, _ = step(sched, runner)
    assert [(len(s.token_ids), s.start_pos, s.do_sample) for s in plan.seqs] == [(1, 5, True), (6, 14, True)]


def test_max_num_seqs_limits_running_and_new_requests_join_between_steps():
    sched, runner = make(max_num_seqs=2, max_num_batched_tokens=64)
    for i in range(3):
        sched.add(f"r{i}", [1, 2, 3], greedy(3))
    plan, _ = step(sched, runner)
    assert len(plan.seqs) == 2 and sched.num_waiting == 1
    step(sched, runner)
    plan, updates = step(sched, runner)  # r0, r1 finish this step
    assert {u.seq.request_id for u in updates if u.finish_reason} == {"r0", "r1"}
    plan, _ = step(sched, runner)
    assert [s.seq_id for s in plan.seqs] == [2]


def test_priority_order_of_completion():
    sched, runner = make(max_num_seqs=1)
    sched.add("low", [1], greedy(2), priority=0, now=0.0)
    sched.add("high", [1], greedy(2), priority=5, now=1.0)
    sched.add("low2", [1], greedy(2), priority=0, now=2.0)
    finished = []
    while sched.has_unfinished:
        _, updates = step(sched, runner)
        finished += [u.seq.request_id for u in updates if u.finish_reason]
    assert finished == ["high", "low", "low2"]


def test_deadline_expires_waiting_and_running_requests():
    sched, runner = make(max_num_seqs=1)
    sched.add("run", [1, 2], greedy(50), deadline=5.0)
    sched.add("wait", [1, 2], greedy(5), deadline=2.0)
    step(sched, runner, 0.0)
    _, updates = step(sched, runner, 2.0)
    assert [(u.seq.request_id, u.finish_reason) for u in updates if u.finish_reason] == [("wait", "deadline")]
    assert sched.num_waiting == 0
    step(sched, runner, 3.0)
    _, updates = step(sched, runner, 5.0)
    assert [(u.seq.request_id, u.finish_reason) for u in updates] == [("run", "deadline")]
    assert sched.block_manager.num_free_blocks == 64 and not sched.has_unfinished


def test_queue_full_and_bad_requests_are_refused_with_typed_errors():
    sched, _ = make(max_waiting=2, max_model_len=10)
    sched.add("a", [1], greedy(1))
    sched.add("b", [1], greedy(1))
    with pytest.raises(QueueFull):
        sched.add("c", [1], greedy(1))
    with pytest.raises(InvalidRequest):
        sched.add("a", [1], greedy(1))
    sched2, _ = make(max_model_len=10)
    with pytest.raises(PromptTooLong):
        sched2.add("x", list(range(10)), greedy(1))
    with pytest.raises(InvalidRequest):
        sched2.add("y", [], greedy(1))
    with pytest.raises(InvalidRequest):
        sched2.add("z", [VOCAB], greedy(1))
    with pytest.raises(InvalidRequest):
        sched2.add("w", [1], greedy(2), output_ids=[3, 4])


def test_stop_token_eos_and_max_model_len():
    sched, runner = make(eos_token_ids={7}, max_model_len=12)
    p = [1, 2, 3]
    ref = reference_output(p, 100, VOCAB)
    stop_tok = ref[2]
    sched.add("stop", p, SamplingParams(max_tokens=100, temperature=0, stop_token_ids=[stop_tok]))
    sched.add("len", p, greedy(100))
    outputs, reasons = run_all(sched, runner)
    assert outputs["stop"] == ref[: ref.index(stop_tok) + 1] and reasons["stop"] == "stop"
    assert len(outputs["len"]) == 12 - 3 and reasons["len"] == "length"


def test_preemption_recomputes_and_outputs_still_match():
    # 12 blocks of 4 = 48 positions for 6 requests that each grow to ~24: must preempt.
    sched, runner = make(num_blocks=12, block_size=4, max_num_batched_tokens=32)
    rng = random.Random(3)
    prompts = {f"r{i}": prompt(rng, rng.randrange(4, 12)) for i in range(6)}
    for i, (rid, p) in enumerate(prompts.items()):
        sched.add(rid, p, greedy(14), now=float(i))
    outputs, _ = run_all(sched, runner)
    assert sched.num_preemptions > 0
    for rid, p in prompts.items():
        assert outputs[rid] == reference_output(p, 14, VOCAB)
    assert sched.block_manager.num_free_blocks == 12


def test_preemption_picks_the_youngest():
    sched, runner = make(num_blocks=4, block_size=2, max_num_batched_tokens=32)
    sched.add("old", [1, 2], greedy(5), now=0.0)
    sched.add("young", [1, 2], greedy(5), now=1.0)
    preempted = []
    while sched.has_unfinished:
        plan, _ = step(sched, runner)
        preempted += [sched.get_seq(i).request_id for i in plan.preempted_seq_ids]
    assert preempted and set(preempted) == {"young"}


def test_abort_frees_blocks_at_once():
    sched, runner = make()
    sched.add("a", list(range(10)), greedy(20))
    sched.add("b", list(range(10)), greedy(20))
    step(sched, runner)
    assert sched.block_manager.num_free_blocks < 64
    plan = sched.schedule(1.0)
    assert sched.abort("a")
    assert not sched.abort("a")
    out = runner.run(plan)
    updates = sched.postprocess(plan, out, 1.0)  # the aborted one's result is dropped
    assert [u.seq.request_id for u in updates] == ["b"]
    assert sched.abort("b")
    assert sched.block_manager.num_free_blocks == 64


def test_resume_with_output_ids_continues_identically():
    p = [3, 1, 4, 1, 5]
    ref = reference_output(p, 10, VOCAB)
    sched, runner = make()
    sched.add("r", p, greedy(10), output_ids=ref[:4])
    outputs, _ = run_all(sched, runner)
    assert outputs["r"] == ref[4:]


def test_unseeded_requests_get_a_seed_at_admission():
    sched, _ = make()
    seq = sched.add("r", [1], SamplingParams(max_tokens=2))
    assert seq.params.seed is not None


def test_prompt_logprob_mean_reported_once_across_chunks():
    sched, runner = make(max_num_batched_tokens=4)
    sched.add("r", list(range(10)), greedy(3), want_prompt_logprobs=True)
    means = []
    while sched.has_unfinished:
        _, updates = step(sched, runner)
        means += [u.prompt_logprob_mean for u in updates if u.prompt_logprob_mean is not None]
    assert means == [-1.0]


@pytest.mark.parametrize("seed", range(6))
def test_random_operation_sequences(seed):
    rng = random.Random(seed)
    sched, runner = make(
        num_blocks=rng.choice([6, 10, 30]),
        block_size=rng.choice([1, 2, 4]),
        max_num_seqs=rng.choice([1, 3, 8]),
        max_num_batched_tokens=rng.choice([4, 9, 64]),
        max_model_len=rng.choice([16, 40]),
    )
    expected: dict[str, tuple[list[int], int]] = {}
    aborted: set[str] = set()
    n = 0

    def on_step(i):
        nonlocal n
        if n < 25 and rng.random() < 0.5:
            p = prompt(rng, rng.randrange(1, 10))
            mt = rng.randrange(1, 12)
            sched.add(f"r{n}", p, greedy(mt), now=float(i), priority=rng.randrange(2))
            expected[f"r{n}"] = (p, mt)
            n += 1
        if expected and rng.random() < 0.05:
            rid = rng.choice(list(expected))
            if sched.abort(rid):
                aborted.add(rid)

    outputs, _ = run_all(sched, runner, on_step=on_step)
    for rid, (p, mt) in expected.items():
        if rid in aborted:
            continue
        limit = min(mt, sched.max_model_len - len(p))
        assert outputs[rid] == reference_output(p, limit, VOCAB)
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_total_blocks
