"""Tensor parallelism on CPU with two gloo processes: TP=2 matches TP=1; a dead rank fails fast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from isthmus.center.distributed import single_process_group
from isthmus.center.tp import TPConfigError, check_tp_size, shard_heads
from isthmus.center.worker import build_shard_runner
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.model.config import ModelConfig

from tests.center import tp_procs
from tests.center.conftest import free_port

PROMPT = [5, 17, 99, 300, 42, 7, 8, 250, 11]
PROMPTS = [[3, 14, 15, 92, 65], [27, 18, 28, 182, 84, 59, 4], [100, 200]]
PARAMS = [
    SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True),
    SamplingParams(max_tokens=8, temperature=0.8, top_k=50, seed=1234, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True),
]


def _spawn(
    target: Any, world: int, *args: Any, timeout_s: float = 120.0, expect: int | None = None
) -> dict[int, tuple[str, Any]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, tuple[str, Any]] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while len(results) < (world if expect is None else expect):
            rank, status, payload = queue.get(timeout=max(deadline - time.monotonic(), 0.1))
            results[rank] = (status, payload)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


def _single_process(model: Path) -> tuple[torch.Tensor, list[list[int]]]:
    opts = tp_procs.options_for(str(model))
    runner = build_shard_runner(opts, single_process_group())
    logits = torch.tensor(tp_procs._prefill_logits(runner, PROMPT))
    ids = asyncio.run(tp_procs.generate_all(opts, runner, PROMPTS, PARAMS))
    return logits, ids


@pytest.mark.parametrize("fixture", ["tp_llama", "tp_qwen2"])
def test_tp2_matches_tp1(fixture: str, request: pytest.FixtureRequest) -> None:
    model: Path = request.getfixturevalue(fixture)
    ref_logits, ref_ids = _single_process(model)
    results = _spawn(tp_procs.tp_rank, 2, str(model), PROMPT, PROMPTS, PARAMS)
    for rank, (status, payload) in results.items():
        assert status == "ok", f"rank {rank}: {payload}"
    logits, kv_heads, ids = results[0][1]
    assert kv_heads == 1 and results[1][1] == 1  # llama: split 2 -> 1 each; qwen2: 1 replicated
    assert torch.allclose(torch.tensor(logits), ref_logits, atol=1e-4, rtol=0)
    assert ids == ref_ids  # greedy and seeded sampling alike
    assert all(len(x) == p.max_tokens for x, p in zip(ids, PARAMS, strict=True))


def test_dead_rank_fails_the_group_with_a_clear_error(tp_llama: Path) -> None:
    results = _spawn(tp_procs.dying_rank, 2, str(tp_llama), timeout_s=90.0, expect=1)
    status, message = results[0]
    assert status == "raised", message
    assert "TPGroupError" in message and "tensor-parallel group broken" in message


def test_head_sharding() -> None:
    assert shard_heads(8, 8, 1, 4) == tp_procs_head(2, 2, 2, 2)
    # 8 query heads, 2 KV heads over 4 ranks: ranks 0,1 share KV head 0; ranks 2,3 KV head 1
    assert [shard_heads(8, 2, r, 4).kv_head_start for r in range(4)] == [0, 0, 1, 1]
    assert all(shard_heads(8, 2, r, 4).num_kv_heads == 1 for r in range(4))
    assert [shard_heads(8, 2, r, 4).head_start for r in range(4)] == [0, 2, 4, 6]


def tp_procs_head(h: int, kv: int, hs: int, kvs: int) -> Any:
    from isthmus.center.tp import HeadShard

    return HeadShard(h, kv, hs, kvs)


def test_tp_size_checks(tp_llama: Path) -> None:
    cfg = ModelConfig.from_pretrained(tp_llama)  # 4 heads, 2 KV heads, intermediate 128
    check_tp_size(cfg, 1)
    check_tp_size(cfg, 4)  # KV heads replicated twice
    with pytest.raises(TPConfigError, match="does not divide the 4 attention heads"):
        check_tp_size(cfg, 3)
    with pytest.raises(TPConfigError, match="does not divide the 4 attention heads"):
        check_tp_size(cfg, 8)


def test_idle_longer_than_the_collective_timeout_is_fine(tp_llama: Path) -> None:
    results = _spawn(tp_procs.idle_rank, 2, str(tp_llama), timeout_s=90.0)
    assert results[0] == ("ok", (True, [0])), results[0]
    assert results[1] == ("ok", 1), results[1]
