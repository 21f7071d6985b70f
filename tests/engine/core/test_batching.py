"""Continuous batching must not change a request's output (fp32 CPU, tiny checkpoint)."""

import random

import pytest
from isthmus.engine.core.core import EngineCore
from isthmus.engine.core.llm import LLM
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=5, ignore_eos=True)


def alone(path, prompt_ids, params):
    [out] = LLM(str(path), num_kv_blocks=64, block_size=4).generate(prompt_ids, params)
    return out.token_ids


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_output_identical_alone_and_while_others_join_and_leave(tiny_llama, params):
    rng = random.Random(1)
    target = [rng.randrange(2, 1000) for _ in range(11)]
    expected = alone(tiny_llama, target, params)
    core = EngineCore(
        EngineOptions(model=str(tiny_llama), num_kv_blocks=256, block_size=4, max_num_batched_tokens=40)
    )
    core.add("target", target, params)
    got: list[int] = []
    live: list[str] = []
    n_added = 0
    while core.has_unfinished:
        if n_added < 30 and rng.random() < 0.6:
            rid = f"other{n_added}"
            core.add(
                rid,
                [rng.randrange(2, 1000) for _ in range(rng.randrange(1, 40))],
                SamplingParams(max_tokens=rng.randrange(1, 30), temperature=rng.choice([0.0, 1.0])),
            )
            live.append(rid)
            n_added += 1
        if live and rng.random() < 0.1:
            core.abort(live.pop(rng.randrange(len(live))))
        for out in core.step():
            if out.request_id == "target":
                got += out.new_token_ids
    assert n_added == 30
    assert got == expected
    bm = core.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_total_blocks


def test_preemption_with_a_small_kv_pool_keeps_outputs(tiny_qwen2):
    rng = random.Random(2)
    prompts = [[rng.randrange(2, 1000) for _ in range(rng.randrange(5, 20))] for _ in range(8)]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    expected = [alone(tiny_qwen2, p, params) for p in prompts]
    # 16 blocks of 4 = 64 positions for 8 requests that grow to 25-40 tokens each
    llm = LLM(str(tiny_qwen2), num_kv_blocks=16, block_size=4, max_num_batched_tokens=64)
    outs = llm.generate(prompts, params)
    assert llm.core.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == expected
    assert llm.core.scheduler.block_manager.num_free_blocks == 16
