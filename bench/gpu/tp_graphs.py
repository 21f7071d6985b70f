"""Tensor parallelism with CUDA graphs on several GPUs: greedy tokens and decode speed, graphs vs eager.

One command on a host with N GPUs (N divides the model's heads; the default tiny checkpoint has
4 heads, 2 KV heads, so N in 1, 2, 4)::

    torchrun --nproc-per-node=2 bench/gpu/tp_graphs.py                    # tiny checkpoint
    torchrun --nproc-per-node=8 bench/gpu/tp_graphs.py --model /path/ckpt # a real one

Every rank builds its shard through `TensorParallelRewrite` twice: once capturing decode graphs
(the all-reduces inside them) and once eager. Rank 0 drives `LLM.generate` over a `TPRunner`
(the others follow its broadcast plans, replaying in lockstep), and prints the greedy tokens'
agreement and tok/s of both. Exit status 1 when the tokens differ or a rank fails.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from isthmus.center.distributed import DistEnv, destroy_tp_group, init_tp_group
from isthmus.center.tp import TensorParallelRewrite
from isthmus.center.worker import TPRunner, follow_plans
from isthmus.engine.core.llm import LLM
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.runner.model_runner import ModelRunner


def _model(args: argparse.Namespace, rank: int) -> str:
    if args.model:
        return str(args.model)
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    # Same seed on every rank: identical weights without a shared file system.
    return str(make_tiny_checkpoint(tempfile.mkdtemp(prefix=f"isthmus-tp{rank}-"), "llama", seed=0))


def _phase(args: argparse.Namespace, group, model: str, graphs: bool) -> tuple[list[list[int]], float] | None:
    cuda = args.device == "cuda"
    opts = EngineOptions(model=model, device=str(group.device), dtype="bfloat16" if cuda else "float32",
                         block_size=16, max_num_seqs=args.batch,
                         max_model_len=args.prompt + args.new + 16, use_cuda_graphs=graphs,
                         kv_cache_memory=args.kv_gib << 30)
    runner = ModelRunner(opts, rewrites=[TensorParallelRewrite(group)])
    if graphs and cuda and runner.graphs is None:
        raise RuntimeError(f"rank {group.rank}: no decode graphs captured")
    if not group.is_driver:
        follow_plans(runner, group)
        return None
    tp = TPRunner(runner, group)
    try:
        llm = LLM(model, runner=tp, max_num_seqs=args.batch, block_size=16, num_kv_blocks=tp.num_kv_blocks,
                  max_model_len=opts.max_model_len, max_num_batched_tokens=args.batch * args.prompt)
        vocab = runner.vocab_size
        prompts = [[(7 * i + 13 * j) % vocab for j in range(args.prompt)] for i in range(args.batch)]
        params = SamplingParams(max_tokens=args.new, temperature=0.0, ignore_eos=True)
        llm.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up
        _sync(cuda)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, [params] * len(prompts))
        _sync(cuda)
        dt = time.perf_counter() - t0
    finally:
        tp.stop()
    ids = [list(o.token_ids) for o in outs]
    return ids, sum(len(x) for x in ids) / dt


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--kv-gib", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a gloo smoke run of the same plumbing (no graphs there)")
    args = ap.parse_args()
    env = DistEnv.from_environ() or DistEnv(0, 1, 0)
    if env.world_size == 1:
        import os

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
    group = init_tp_group(env, device=args.device, timeout_s=300.0)
    model = _model(args, env.rank)
    try:
        graph = _phase(args, group, model, graphs=True)
        eager = _phase(args, group, model, graphs=False)
    finally:
        destroy_tp_group(group)
    if graph is None or eager is None:
        return 0
    same = graph[0] == eager[0]
    result = {"world_size": env.world_size, "batch": args.batch, "new": args.new, "tokens_equal": same,
              "graphs_tok_s": round(graph[1], 1), "eager_tok_s": round(eager[1], 1)}
    print(f"TP={env.world_size} b{args.batch}: graphs {graph[1]:.1f} tok/s, eager {eager[1]:.1f} tok/s, "
          f"greedy tokens {'equal' if same else 'DIFFER'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
