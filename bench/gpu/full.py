"""Every GPU figure of issue 14 in one run: decode, first-token latency, long context, profiles, transformers.

Cases on DeepSeek-LLM-7B's shape (random bf16 weights written on the GPU to /tmp; greedy,
ignore_eos; prompts of random ids):

  ours   bf16 b1 / b32 / b64 and nf4 b1 decode (128-token prompts, --new tokens): e2e tok/s
         (whole generate call) and decode tok/s (the time of a max_tokens=1 run subtracted);
         b1 decode after a 2,048-token prompt; time to first token at b1 for 128 / 2,048 /
         4,000-token prompts; first tokens of 32 x 128-token prompts at once;
         a torch.profiler summary per decode case (GPU-busy share of the wall time, top kernels).
  hf     transformers `generate` with a static cache + torch.compile (compiled once per
         shape, outside the timing) and with its dynamic cache, on bf16 b1 and b32; nf4 b1 with
         the dynamic cache (transformers does not compile bitsandbytes models).

Prints one table and writes JSON (--json). `bash bench/gpu/run.sh` runs it with the GPU tests.

    python3 bench/gpu/full.py --json $OUT/full.json
    .venv/bin/python bench/gpu/full.py --tiny --new 8 --batches 4 --ttft 16,64 --long 64 \
        --hf-batch 4 --hf-caches dynamic                               # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_summary import format_summary, profile_call
from suite import checkpoint, free, load_hf, prompts, run_hf, sync


def _save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Write the JSON now: a run stopped at its time limit keeps every figure measured so far."""
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _llm(path: str, quant: str | None, args: argparse.Namespace, max_seqs: int, max_len: int) -> Any:
    from isthmus.engine.core.llm import LLM

    blocks = max(max_seqs * math.ceil((args.prompt + args.new) / 16), math.ceil(max_len / 16)) + 16
    return LLM(path, device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32",
               quantization=quant, block_size=16, num_kv_blocks=blocks, max_num_seqs=max_seqs,
               max_num_batched_tokens=max(max_seqs * args.prompt, 4096), max_model_len=max_len)


def _timed(args: argparse.Namespace, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(args.device)
    t0 = time.perf_counter()
    out = fn()
    sync(args.device)
    return time.perf_counter() - t0, out


def _decode(llm: Any, reqs: list[list[int]], args: argparse.Namespace, new: int) -> dict[str, float]:
    """e2e and decode tok/s of ``reqs`` x ``new`` tokens; the max_tokens=1 time is the prefill."""
    from isthmus.engine.core.params import SamplingParams

    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    full = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    llm.generate(reqs, [one] * len(reqs))  # warm the prefill shapes
    prefill_s, _ = _timed(args, lambda: llm.generate(reqs, [one] * len(reqs)))
    dt, outs = _timed(args, lambda: llm.generate(reqs, [full] * len(reqs)))
    n = sum(len(o.token_ids) for o in outs)
    assert n == len(reqs) * new, n
    decode = (n - len(reqs)) / max(dt - prefill_s, 1e-9)
    return {"e2e": n / dt, "decode": decode, "prefill_ms": prefill_s * 1e3}


def _profile(llm: Any, reqs: list[list[int]], label: str, results: dict[str, Any]) -> None:
    from isthmus.engine.core.params import SamplingParams

    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    summary = profile_call(lambda: llm.generate(reqs, [params] * len(reqs)))
    results.setdefault("profiles", {})[label] = summary
    print(format_summary(label, summary), flush=True)


def ours_bf16(path: str, vocab: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    max_len = max(*args.ttft, args.long, args.prompt) + args.new + 16
    llm = _llm(path, None, args, max(args.batches), max_len)
    for b in (1, *args.batches):
        reqs = prompts(b, args.prompt, vocab, seed=b)
        r = results.setdefault("ours", {})[f"bf16 b{b}"] = _decode(llm, reqs, args, args.new)
        print(f"ours bf16 b{b}: e2e {r['e2e']:.1f} tok/s, decode {r['decode']:.1f} tok/s", flush=True)
        _profile(llm, reqs, f"bf16 b{b}", results)
        _save(args, results)
    long = prompts(1, args.long, vocab, seed=7)
    r = results["ours"][f"bf16 b1 ctx{args.long}"] = _decode(llm, long, args, args.new)
    print(f"ours bf16 b1 after {args.long}: decode {r['decode']:.1f} tok/s", flush=True)
    _profile(llm, long, f"bf16 b1 ctx{args.long}", results)
    _ttft(llm, vocab, args, results)
    del llm
    free(args.device)


def _ttft(llm: Any, vocab: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    from isthmus.engine.core.params import SamplingParams

    ttft = results.setdefault("ttft_ms", {})

    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    for n in args.ttft:
        req = prompts(1, n, vocab, seed=n)
        llm.generate(req, one)  # warm-up at this length
        ttft[f"b1 {n}"] = _timed(args, lambda req=req: llm.generate(req, one))[0] * 1e3
    batch32 = prompts(32, args.prompt, vocab, seed=32)
    llm.generate(batch32, [one] * 32)
    ttft[f"b32 {args.prompt}"] = _timed(args, lambda: llm.generate(batch32, [one] * 32))[0] * 1e3
    print("ours first token (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in ttft.items()), flush=True)


def ours_nf4(path: str, vocab: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    llm = _llm(path, "nf4", args, 1, args.prompt + args.new + 16)
    reqs = prompts(1, args.prompt, vocab, seed=1)
    r = results.setdefault("ours", {})["nf4 b1"] = _decode(llm, reqs, args, args.new)
    print(f"ours nf4 b1: e2e {r['e2e']:.1f} tok/s, decode {r['decode']:.1f} tok/s", flush=True)
    _profile(llm, reqs, "nf4 b1", results)
    del llm
    free(args.device)


def hf_cases(path: str, vocab: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    for quant, caches, batches in ((None, args.hf_caches, (1, args.hf_batch)), ("nf4", ("dynamic",), (1,))):
        if quant == "nf4" and args.device != "cuda":
            continue
        model = load_hf(path, quant, args)
        for cache in caches:
            args.hf_cache = cache
            for b in batches:
                label = f"{quant or 'bf16'} b{b}"
                e2e, dec = run_hf(model, prompts(b, args.prompt, vocab, seed=b), args)
                results.setdefault(f"hf {cache}", {})[label] = {"e2e": e2e, "decode": dec}
                print(f"hf {cache} {label}: e2e {e2e:.1f} tok/s, decode {dec:.1f} tok/s", flush=True)
                _save(args, results)
        del model
        free(args.device)


def table(results: dict[str, Any]) -> str:
    sides = [k for k in results if k == "ours" or k.startswith("hf ")]
    labels = list(dict.fromkeys(label for s in sides for label in results[s]))
    head = f"{'decode tok/s':<22}" + "".join(f"{s:>14}" for s in sides)
    rows = [head]
    for label in labels:
        cells = [results[s].get(label, {}).get("decode") for s in sides]
        rows.append(f"{label:<22}" + "".join(f"{c:>14.1f}" if c else f"{'-':>14}" for c in cells))
    for k, v in results.get("ttft_ms", {}).items():
        rows.append(f"first token {k:<10}{v:>14.1f} ms")
    for k, v in results.get("profiles", {}).items():
        if "gpu_busy_share" in v:
            top = v["top"][0]["name"][:40] if v.get("top") else "-"
            rows.append(f"profile {k:<14}GPU busy {v['gpu_busy_share']:.0%}, top kernel {top}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="32,64", help="decode batch sizes besides 1")
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--ttft", default="128,2048,4000", help="b1 prompt lengths timed to the first token")
    ap.add_argument("--long", type=int, default=2048, help="prompt length of the long-context decode case")
    ap.add_argument("--hf-caches", default="compile,dynamic", help="in this order (compile first: the bar)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-nf4", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.hf_caches = tuple(args.hf_caches.split(","))
    args.ttft = [int(n) for n in args.ttft.split(",") if n]
    path = checkpoint(args)
    vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "prompt": args.prompt,
                               "new": args.new}
    errors: list[str] = []
    steps = [ours_bf16] + ([] if args.skip_nf4 or args.device != "cuda" else [ours_nf4])
    steps += [] if args.skip_hf else [hf_cases]
    for step in steps:
        try:
            step(path, vocab, args, results)
        except Exception:
            tb = traceback.format_exc()
            print(f"{step.__name__} FAILED:\n{tb}", flush=True)
            errors.append(f"{step.__name__}: {tb.strip().splitlines()[-1]}")
            free(args.device)
        results["errors"] = errors
        _save(args, results)
    print(f"\n{name}, torch {torch.__version__}, prompts {args.prompt}, new {args.new}\n{table(results)}")
    for e in errors:
        print(f"FAILED {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
