"""Engine throughput vs transformers' generate on the same checkpoint, in the same run.

64 requests (prompt lengths 16-256, max_tokens 16-128, greedy, ignore_eos) go through:
  ours      isthmus LLM.generate (continuous batching, paged KV, chunked prefill)
  hf-1      transformers generate, one request at a time
  hf-16     transformers generate, left-padded static batches of 16 (each batch runs to its
            longest max_tokens; only the requested tokens count)
and it prints useful generated tokens/s of each plus the ratios.

Default checkpoint (written by models/tiny_checkpoint.py into a temp folder): LLaMA, hidden 384, 6 layers,
6 heads (head_dim 64) with 2 KV heads, ffn 1024, vocab 8192 (~17 M parameters), fp32; big enough
that matmuls, not Python, dominate a transformers step on CPU.

    .venv/bin/python bench/engine.py                 # CPU, full run
    .venv/bin/python bench/engine.py --num-requests 16 --skip-hf1   # quick look
    .venv/bin/python bench/engine.py --device cuda --dtype bfloat16  # GPU, if present

GPU mode (`--gpu-suite`; remaining arguments go to bench/gpu/suite.py): DeepSeek-LLM-7B's shape,
128-token prompts, 128 new tokens: ours bf16 b1, nf4 b1, bf16 b32 vs transformers `generate`.

    python3 bench/engine.py --gpu-suite                   # on an H100 (see bench/gpu/run_h100.sh)
    .venv/bin/python bench/engine.py --gpu-suite --tiny   # CPU smoke run of the same path
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import torch


def make_requests(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        ([rng.randrange(2, vocab) for _ in range(rng.randrange(16, 257))], rng.randrange(16, 129))
        for _ in range(n)
    ]


def bench_ours(path: str, reqs: list[tuple[list[int], int]], args: argparse.Namespace) -> tuple[float, int]:
    from isthmus.engine.core.llm import LLM
    from isthmus.engine.core.params import SamplingParams

    llm = LLM(
        path,
        dtype=args.dtype,
        device=args.device,
        num_kv_blocks=args.num_kv_blocks,
        block_size=16,
        max_num_seqs=64,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up
    params = [SamplingParams(max_tokens=mt, temperature=0.0, ignore_eos=True) for _, mt in reqs]
    t0 = time.perf_counter()
    outs = llm.generate([p for p, _ in reqs], params)
    dt = time.perf_counter() - t0
    n = sum(len(o.token_ids) for o in outs)
    assert n == sum(mt for _, mt in reqs)
    return dt, n


def load_hf(path: str, args: argparse.Namespace):
    import transformers

    dtype = torch.float32 if args.dtype in ("auto", "float32") else getattr(torch, args.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    return model


@torch.inference_mode()
def bench_hf(model, reqs: list[tuple[list[int], int]], batch: int, device: str) -> tuple[float, int]:
    def gen(group: list[tuple[list[int], int]]) -> None:
        width = max(len(p) for p, _ in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, _) in enumerate(group):  # left padding
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        mt = max(m for _, m in group)
        model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=mt,
            min_new_tokens=mt,
            do_sample=False,
            pad_token_id=0,
        )

    gen(reqs[:1])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        gen(reqs[i : i + batch])
    return time.perf_counter() - t0, sum(mt for _, mt in reqs)


def gpu_suite(argv: list[str]) -> int:
    """Run bench/gpu/suite.py (loaded by path: bench/ is not a package); its exit status."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_suite", Path(__file__).parent / "gpu" / "suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(argv) or 0)


def main() -> None:
    if "--gpu-suite" in sys.argv[1:]:
        sys.exit(gpu_suite([a for a in sys.argv[1:] if a != "--gpu-suite"]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder (default: write the bench checkpoint)")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--num-kv-blocks", type=int, default=2048)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--skip-hf1", action="store_true", help="skip the slow one-at-a-time baseline")
    ap.add_argument(
        "--profile", action="store_true",
        help="print a cProfile summary of our run (sorted by $BENCH_SORT, default cumulative)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = args.model
    vocab = 8192
    if path is None:
        from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

        path = str(
            make_tiny_checkpoint(
                tempfile.mkdtemp(prefix="isthmus-bench-"),
                "llama",
                seed=0,
                hidden_size=args.hidden,
                num_layers=args.layers,
                num_heads=args.hidden // 64,
                num_kv_heads=2,
                intermediate_size=args.hidden * 8 // 3 // 64 * 64,
                vocab_size=vocab,
                tokenizer_vocab_size=1024,
            )
        )
    else:
        import json
        from pathlib import Path

        vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    reqs = make_requests(args.num_requests, args.seed, vocab)
    total = sum(mt for _, mt in reqs)
    print(
        f"model {path}; {len(reqs)} requests, {total} generated tokens; "
        f"torch threads {torch.get_num_threads()}"
    )

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    dt, n = bench_ours(path, reqs, args)
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(25)
    ours = n / dt
    print(f"ours     {dt:8.2f} s  {ours:9.1f} tok/s")

    model = load_hf(path, args)
    dt16, n16 = bench_hf(model, reqs, 16, args.device)
    print(f"hf-16    {dt16:8.2f} s  {n16 / dt16:9.1f} tok/s   ours/hf-16 = {ours / (n16 / dt16):.2f}x")
    if not args.skip_hf1:
        dt1, n1 = bench_hf(model, reqs, 1, args.device)
        print(f"hf-1     {dt1:8.2f} s  {n1 / dt1:9.1f} tok/s   ours/hf-1  = {ours / (n1 / dt1):.2f}x")


if __name__ == "__main__":
    main()
