"""Process bodies for the tensor-parallel tests (spawned: importable at module level).

Each function runs as one rank of a gloo group on CPU, with ``MASTER_ADDR``/``MASTER_PORT`` set
by the parent, and puts its result (or the error text) on a queue.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from typing import Any

import torch
from isthmus.center.distributed import DistEnv, destroy_tp_group, init_tp_group
from isthmus.center.worker import TPRunner, build_shard_runner, follow_plans
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import ScheduledSeq, SchedulePlan

TIMEOUT_S = 20.0  # seconds: collective timeout in tests


def options_for(model: str) -> EngineOptions:
    return EngineOptions(model=model, dtype="float32", device="cpu", num_kv_blocks=32, block_size=16,
                         max_num_seqs=8, max_num_batched_tokens=256)


def _join(rank: int, world: int, port: int, timeout_s: float = TIMEOUT_S) -> Any:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return init_tp_group(DistEnv(rank, world, rank), device="cpu", timeout_s=timeout_s)


def prefill_plan(prompt: list[int]) -> SchedulePlan:
    seq = ScheduledSeq(seq_id=0, token_ids=prompt, start_pos=0, block_table=[0, 1, 2, 3], do_sample=True,
                       params=SamplingParams(temperature=0.0), prompt_len=len(prompt),
                       history_ids=list(prompt), num_generated=0)
    return SchedulePlan(seqs=[seq])


def _prefill_logits(runner: Any, prompt: list[int]) -> list[list[float]]:
    """Every position's logits of one prefill (all ranks run the forward; logits are local)."""
    with torch.inference_mode():
        batch = runner._prepare(prefill_plan(prompt))
        hidden = runner.model(batch.input_ids, batch.positions, batch.attn, runner.kv_caches)
        return runner.model.compute_logits(hidden).tolist()  # [num_tokens, vocab]


def tp_rank(rank: int, world: int, port: int, model: str, prompt: list[int], prompts: list[list[int]],
            params: list[SamplingParams], queue: Any) -> None:
    """One rank: prefill logits of ``prompt``, then an AsyncEngine over a TPRunner on rank 0 (the
    others follow its plans). Rank 0 reports (logits, KV heads per rank, generated ids)."""
    try:
        group = _join(rank, world, port)
        opts = options_for(model)
        runner = build_shard_runner(opts, group)
        logits = _prefill_logits(runner, prompt)
        if rank != 0:
            follow_plans(runner, group)
            destroy_tp_group(group)
            queue.put((rank, "ok", runner.num_kv_heads))
            return
        tp = TPRunner(runner, group)
        try:
            ids = asyncio.run(generate_all(opts, tp, prompts, params))
        finally:
            tp.stop()
        destroy_tp_group(group)
        queue.put((rank, "ok", (logits, runner.num_kv_heads, ids)))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))


async def generate_all(opts: EngineOptions, runner: Any, prompts: list[list[int]],
                        params: list[SamplingParams]) -> list[list[int]]:
    from isthmus.engine.core.async_engine import AsyncEngine, EngineRequest

    engine = AsyncEngine(opts, runner=runner)
    await engine.start()
    try:
        async def one(i: int) -> list[int]:
            ids: list[int] = []
            async for out in engine.generate(EngineRequest(f"r{i}", prompts[i], params[i])):
                ids.extend(out.new_token_ids)
            return ids

        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))
    finally:
        await engine.stop()


def dying_rank(rank: int, world: int, port: int, model: str, queue: Any) -> None:
    """Rank 1 dies after one plan; rank 0 must fail with TPGroupError, not hang."""
    try:
        group = _join(rank, world, port, timeout_s=10.0)
        runner = build_shard_runner(options_for(model), group)
        if rank != 0:
            group.all_reduce_min_int(runner.num_kv_blocks)
            group.broadcast_object()  # the first plan arrives ...
            os._exit(3)  # ... and this rank dies without a word
        tp = TPRunner(runner, group, heartbeat_s=0)
        plan = prefill_plan([1, 2, 3, 4])
        try:
            tp.run(plan)  # the follower got the plan, then died before the all-reduce
            tp.run(plan)
        except Exception as exc:
            queue.put((rank, "raised", f"{type(exc).__name__}: {exc}"))
            queue.close()
            queue.join_thread()  # flush before the hard exit
            os._exit(0)  # the group is broken: do not wait for a clean teardown
        queue.put((rank, "no error", None))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))


def idle_rank(rank: int, world: int, port: int, model: str, queue: Any) -> None:
    """Idle for longer than the collective timeout: heartbeats keep the followers' wait alive."""
    import time

    try:
        group = _join(rank, world, port, timeout_s=2.0)
        runner = build_shard_runner(options_for(model), group)
        if rank != 0:
            num = follow_plans(runner, group)
            destroy_tp_group(group)
            queue.put((rank, "ok", num))
            return
        tp = TPRunner(runner, group, heartbeat_s=0.4)
        time.sleep(5.0)  # 2.5x the collective timeout with no plan at all
        out = tp.run(prefill_plan([1, 2, 3, 4]))
        healthy = tp.is_healthy
        tp.stop()
        destroy_tp_group(group)
        queue.put((rank, "ok", (healthy, list(out.sampled))))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
