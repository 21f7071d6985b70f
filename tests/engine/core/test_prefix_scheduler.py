"""The scheduler with prefix caching, over the fake runner that reads KV back through the tables."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from isthmus.engine.core.params import SamplingParams

from tests.engine.core.test_scheduler import VOCAB, greedy, make, run_all, step
from tests.engine.fake_runner import reference_output


def test_second_request_computes_only_its_new_tokens():
    sched, runner = make(num_blocks=64, block_size=4)
    system = [random.Random(1).randrange(VOCAB) for _ in range(40)]
    first, second = [*system, 1, 2, 3], [*system, 4, 5, 6, 7, 8]
    sched.add("a", first, greedy(5))
    out_a, _ = run_all(sched, runner)
    before = runner.num_tokens
    seq = sched.add("b", second, greedy(5))
    out_b, _ = run_all(sched, runner)
    assert seq.num_cached_tokens == 40  # ten full blocks of the system prompt
    assert runner.num_tokens - before == (len(second) - 40) + 4  # new prompt tokens + 4 decodes
    assert out_a["a"] == reference_output(first, 5, VOCAB)
    assert out_b["b"] == reference_output(second, 5, VOCAB)
    stats = sched.block_manager.stats
    assert stats.num_hit_tokens == 40 and stats.num_queried_tokens == len(first) + len(second)


def test_all_cached_but_the_last_block_samples_after_one_short_step():
    sched, runner = make(num_blocks=64, block_size=4, max_num_batched_tokens=8)
    system = list(range(1, 33))  # 8 full blocks, more than one step's budget
    sched.add("a", [*system, 40], greedy(1))
    run_all(sched, runner)
    sched.add("b", [*system, 41, 42, 43], greedy(3))
    plan, updates = step(sched, runner)
    assert [len(s.token_ids) for s in plan.seqs] == [3]
    assert plan.seqs[0].start_pos == 32 and plan.seqs[0].do_sample
    assert updates[0].new_token_ids == reference_output([*system, 41, 42, 43], 1, VOCAB)


def test_disabled_cache_recomputes_everything():
    sched, runner = make(num_blocks=64, block_size=4, enable_prefix_caching=False)
    for rid in ("a", "b"):
        sched.add(rid, [*range(1, 21), ord(rid) % VOCAB], greedy(2))
        run_all(sched, runner)
    assert runner.num_tokens == 2 * (21 + 1)
    assert sched.block_manager.stats.num_hit_tokens == 0


def test_prompt_logprobs_request_computes_its_whole_prompt():
    sched, runner = make(num_blocks=64, block_size=4)
    prompt = list(range(1, 14))
    sched.add("a", prompt, greedy(1))
    run_all(sched, runner)
    seq = sched.add("b", prompt, greedy(1), want_prompt_logprobs=True)
    run_all(sched, runner)
    assert seq.num_cached_tokens == 0


def test_preempted_and_resumed_requests_with_shared_blocks_stay_correct():
    rng = random.Random(3)
    system = [rng.randrange(VOCAB) for _ in range(12)]
    sched, runner = make(num_blocks=14, block_size=4, max_num_batched_tokens=32)
    prompts = {
        f"r{i}": [*system, *[rng.randrange(VOCAB) for _ in range(rng.randrange(1, 6))]] for i in range(6)
    }
    for rid, p in prompts.items():
        sched.add(rid, p, greedy(14))
    outputs, _ = run_all(sched, runner)
    assert sched.num_preemptions > 0
    assert sched.block_manager.stats.num_hit_tokens > 0
    for rid, p in prompts.items():
        assert outputs[rid] == reference_output(p, 14, VOCAB), rid
    assert sched.block_manager.num_free_blocks == 14


def test_cancelling_a_sharer_leaves_the_others_intact():
    sched, runner = make(num_blocks=32, block_size=4)
    system = list(range(1, 17))
    sched.add("a", [*system, 20], greedy(6))
    sched.add("b", [*system, 21], greedy(6))
    step(sched, runner)
    step(sched, runner)
    sched.add("c", [*system, 22], greedy(6))
    step(sched, runner)
    assert sched.abort("a")
    outputs, _ = run_all(sched, runner)
    assert outputs["b"] == reference_output([*system, 21], 6, VOCAB)[3:]
    assert outputs["c"] == reference_output([*system, 22], 6, VOCAB)[1:]
    assert sched.block_manager.num_free_blocks == 32


def test_resumed_request_reuses_the_cached_prompt_and_continues_identically():
    sched, runner = make(num_blocks=32, block_size=4)
    prompt = list(range(1, 19))
    full = reference_output(prompt, 8, VOCAB)
    sched.add("a", prompt, greedy(8))
    run_all(sched, runner)
    seq = sched.add("b", prompt, greedy(8), output_ids=full[:5])  # an imported request state
    outputs, _ = run_all(sched, runner)
    assert seq.num_cached_tokens == 20  # the prompt's 4 full blocks and the next one
    assert outputs["b"] == full[5:]


request_mix = st.lists(
    st.tuples(
        st.integers(0, 2), st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=9), st.integers(1, 8)
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=40, deadline=None)
@given(request_mix, st.integers(8, 24), st.integers(1, 4), st.integers(4, 24), st.booleans())
def test_random_request_mixes_keep_invariants_and_outputs(mix, num_blocks, block_size, budget, abort_one):
    systems = [list(range(1, 13)), list(range(1, 7)) + [30] * 6, [44] * 3]
    sched, runner = make(
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_batched_tokens=budget,
        max_model_len=num_blocks * block_size,
    )
    expected = {}
    for i, (si, suffix, n) in enumerate(mix):
        n = min(n, sched.max_model_len - 2)
        p = (systems[si] + suffix)[: sched.max_model_len - n - 1]
        sched.add(f"r{i}", p, greedy(n))
        expected[f"r{i}"] = reference_output(p, n, VOCAB)
    aborted = "r0" if abort_one else None

    def on_step(i):
        if i == 2 and aborted:
            sched.abort(aborted)

    outputs, _ = run_all(sched, runner, on_step=on_step)  # checks invariants every step
    for rid, want in expected.items():
        if rid != aborted:
            assert outputs[rid] == want, rid
    assert sched.block_manager.num_free_blocks == num_blocks  # no leak once everything finished


def test_sampling_params_do_not_split_the_cache():
    # Sampling params do not change the KV: a seeded request reuses a greedy request's blocks.
    sched, runner = make(num_blocks=32, block_size=4)
    sched.add("a", list(range(1, 10)), greedy(1))
    run_all(sched, runner)
    seq = sched.add("b", list(range(1, 10)), SamplingParams(max_tokens=2, temperature=0.8, seed=5))
    run_all(sched, runner)
    assert seq.num_cached_tokens == 8
