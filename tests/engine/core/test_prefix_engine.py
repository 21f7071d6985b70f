"""Prefix caching through the real model runner on a tiny checkpoint: same greedy tokens, less work."""

import random

from isthmus.engine.core.llm import LLM
from isthmus.engine.core.params import SamplingParams

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def _counting(llm: LLM) -> list[int]:
    """Wrap the runner so every step's number of fed tokens is recorded."""
    fed: list[int] = []
    run = llm.core.runner.run

    def counted(plan):
        fed.append(plan.num_tokens)
        return run(plan)

    llm.core.runner.run = counted  # type: ignore[method-assign]
    return fed


def _conversation(seed: int) -> tuple[list[int], list[int], list[int]]:
    rng = random.Random(seed)
    system = [rng.randrange(3, 1000) for _ in range(42)]
    return system, [rng.randrange(3, 1000) for _ in range(5)], [rng.randrange(3, 1000) for _ in range(9)]


def test_second_request_with_the_same_system_prompt_computes_only_new_tokens(tiny_llama):
    system, user_a, user_b = _conversation(1)
    outs = {}
    for caching in (False, True):
        llm = LLM(str(tiny_llama), num_kv_blocks=64, block_size=4, max_num_batched_tokens=16,
                  enable_prefix_caching=caching)
        fed = _counting(llm)
        first = llm.generate([[*system, *user_a]], GREEDY)[0].token_ids
        before = sum(fed)
        second = llm.generate([[*system, *user_b]], GREEDY)[0].token_ids
        outs[caching] = (first, second, sum(fed) - before)
        load = llm.core.load()
        if caching:
            assert load.num_prefix_hit_tokens == 40 and load.num_cached_kv_blocks > 0
    assert outs[True][:2] == outs[False][:2]  # greedy tokens identical with and without the cache
    assert outs[False][2] == len(system) + len(user_b) + GREEDY.max_tokens - 1
    assert outs[True][2] == (len(system) - 40) + len(user_b) + GREEDY.max_tokens - 1  # 10 blocks reused


def test_a_later_turn_reuses_the_whole_previous_turn(tiny_llama):
    system, user_a, user_b = _conversation(2)
    llm = LLM(str(tiny_llama), num_kv_blocks=64, block_size=4, max_num_batched_tokens=64)
    ref = LLM(str(tiny_llama), num_kv_blocks=64, block_size=4, max_num_batched_tokens=64,
              enable_prefix_caching=False)
    turn1 = [*system, *user_a]
    answer = llm.generate([turn1], GREEDY)[0].token_ids
    turn2 = [*turn1, *answer, *user_b]
    seq_fed = _counting(llm)
    got = llm.generate([turn2], GREEDY)[0].token_ids
    assert got == ref.generate([turn2], GREEDY)[0].token_ids
    cached = (len(turn1) + len(answer) - 1) // 4 * 4  # every full block of turn 1's computed KV
    assert seq_fed[0] == len(turn2) - cached


def test_memory_pressure_with_sharing_keeps_greedy_outputs(tiny_llama):
    rng = random.Random(3)
    system = [rng.randrange(3, 1000) for _ in range(24)]
    prompts = [[*system, *[rng.randrange(3, 1000) for _ in range(rng.randrange(1, 7))]] for _ in range(6)]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    small = LLM(str(tiny_llama), num_kv_blocks=20, block_size=4, max_num_batched_tokens=32)
    ref = LLM(str(tiny_llama), num_kv_blocks=256, block_size=4, enable_prefix_caching=False)
    got = [o.token_ids for o in small.generate(prompts, params)]
    assert small.core.scheduler.num_preemptions > 0  # shared blocks survived preemption and resume
    assert small.core.load().num_prefix_evictions > 0
    assert got == [o.token_ids for o in ref.generate(prompts, params)]
    small.core.scheduler.block_manager.check_invariants()
