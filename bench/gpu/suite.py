"""GPU decode suite: ours vs transformers `generate` on DeepSeek-LLM-7B's shape, same run.

Cases (each: `--prompt`-token random prompts, `--new` new tokens, greedy, ignore_eos; tok/s
end-to-end = generated tokens / wall time of the whole generate call, prefill included; decode =
the same minus a timed max_tokens=1 run on the same prompts; both sides measured alike):
  bf16 b1, nf4 b1, bf16 b<--batch>   (ours: LLM with CUDA graphs; hf: generate, nf4 via
                                        BitsAndBytesConfig)

transformers' KV cache (`--hf-cache`): dynamic (generate's default), static (StaticCache, eager),
or compile (StaticCache; generate then torch.compiles the forward itself on CUDA, except for
bitsandbytes models, which it does not compile). A case that fails prints its traceback and
the others still run; the table marks it and the exit status is 1.

    python3 bench/gpu/suite.py                       # H100: writes the 7B-shaped checkpoint to /tmp
    python3 bench/gpu/suite.py --hf-cache compile    # against transformers' fastest generate
    .venv/bin/python bench/gpu/suite.py --tiny       # CPU smoke run of the same code path
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CASES = (("bf16", None, 1), ("bf16", None, 0), ("nf4", "nf4", 1))  # batch 0 -> --batch
HF_CACHES = ("dynamic", "static", "compile")


def checkpoint(args: argparse.Namespace) -> str:
    from isthmus.models.tiny_checkpoint import make_7b_shaped_checkpoint, make_tiny_checkpoint

    if args.model:
        return args.model
    if args.tiny:
        return str(make_tiny_checkpoint(tempfile.mkdtemp(prefix="isthmus-gpu-tiny-"), "llama", seed=0))
    path = Path("/tmp/isthmus-7b-shaped")
    if not (path / "config.json").exists():
        t0 = time.perf_counter()
        make_7b_shaped_checkpoint(path)
        print(f"wrote 7B-shaped checkpoint in {time.perf_counter() - t0:.0f} s", flush=True)
    return str(path)


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(length)] for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exc:  # a sticky CUDA error from a failed case: report, go on
            print(f"  empty_cache failed: {exc}", flush=True)


def run_ours(
    path: str, quant: str | None, reqs: list[list[int]], args: argparse.Namespace
) -> tuple[float, float]:
    """(end-to-end tok/s, decode-only tok/s): the latter subtracts a timed max_tokens=1 run."""
    from isthmus.engine.core.llm import LLM
    from isthmus.engine.core.params import SamplingParams

    t0 = time.perf_counter()
    blocks_per_seq = -(-(args.prompt + args.new) // 16)
    llm = LLM(
        path,
        device=args.device,
        dtype="bfloat16" if args.device.startswith("cuda") else "float32",
        quantization=quant,
        block_size=16,
        num_kv_blocks=max(args.batch, 1) * blocks_per_seq + 16,
        max_num_seqs=max(args.batch, 1),
        max_num_batched_tokens=max(args.batch, 1) * args.prompt,
        max_model_len=args.prompt + args.new + 16,
        use_cuda_graphs=not args.no_graphs,
    )
    sync(args.device)
    load_s = time.perf_counter() - t0
    llm.generate([reqs[0][:8]], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    first = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    prefill_s = 0.0
    for _ in range(2):  # the first warms the prefill shapes; the second is timed
        sync(args.device)
        t0 = time.perf_counter()
        llm.generate(reqs, [first] * len(reqs))
        sync(args.device)
        prefill_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=args.new, temperature=0.0, ignore_eos=True)
    sync(args.device)
    t0 = time.perf_counter()
    outs = llm.generate(reqs, [params] * len(reqs))
    sync(args.device)
    dt = time.perf_counter() - t0
    n = sum(len(o.token_ids) for o in outs)
    assert n == len(reqs) * args.new, n
    print(
        f"  ours load+capture {load_s:.1f} s; {n} tokens in {dt:.2f} s (prefill+1st token {prefill_s:.3f} s)",
        flush=True,
    )
    del llm, outs
    free(args.device)
    return n / dt, (n - len(reqs)) / max(dt - prefill_s, 1e-9)


def load_hf(path: str, quant: str | None, args: argparse.Namespace):
    import transformers

    kw = {}
    if quant == "nf4":
        kw["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, device_map=args.device, **kw
    ).eval()


@torch.inference_mode()
def run_hf(model, reqs: list[list[int]], args: argparse.Namespace) -> tuple[float, float]:
    """(end-to-end tok/s, decode-only tok/s), as `run_ours`."""
    cache: dict[str, Any] = {}
    if args.hf_cache != "dynamic":
        cache["cache_implementation"] = "static"
        cache["disable_compile"] = args.hf_cache == "static"

    def gen(ids: torch.Tensor, new: int) -> torch.Tensor:
        return model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            **cache,
        )

    ids = torch.tensor(reqs, device=args.device)
    if cache:
        # A static cache is sized per call (prompt + new) and compiled graphs are specialized on
        # its shape: warm up at the timed shape so compilation stays out of the timing (the
        # max_tokens=1 shape is warmed by the first of the two runs below).
        gen(ids, args.new)
    else:
        gen(ids[:1, :8], 8)
    prefill_s = 0.0
    for _ in range(2):
        sync(args.device)
        t0 = time.perf_counter()
        gen(ids, 1)
        sync(args.device)
        prefill_s = time.perf_counter() - t0
    sync(args.device)
    t0 = time.perf_counter()
    out = gen(ids, args.new)
    sync(args.device)
    dt = time.perf_counter() - t0
    n = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    assert n == len(reqs) * args.new, n
    print(f"  hf {n} tokens in {dt:.2f} s (prefill+1st token {prefill_s:.3f} s)", flush=True)
    return n / dt, (n - len(reqs)) / max(dt - prefill_s, 1e-9)


def attempt(what: str, errors: list[str], fn: Callable[..., Any], *fn_args: Any) -> Any:
    """fn(*fn_args), or None after printing its traceback: one failing configuration must not cost
    the figures of the others."""
    try:
        return fn(*fn_args)
    except Exception:
        tb = traceback.format_exc()
        print(f"  {what} FAILED:\n{tb}", flush=True)
        errors.append(f"{what}: {tb.strip().splitlines()[-1]}")
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny checkpoint (CPU smoke run)")
    ap.add_argument("--model", help="checkpoint folder (default: the 7B-shaped one in /tmp)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--hf-cache", choices=HF_CACHES, default="dynamic", help="transformers' KV cache")
    ap.add_argument("--no-graphs", action="store_true", help="ours without CUDA graphs")
    ap.add_argument("--cases", default="bf16-b1,nf4-b1,bf16-bN")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    path = checkpoint(args)
    vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    wanted = set(args.cases.split(","))
    results: dict[str, dict[str, float]] = {}
    errors: list[str] = []
    hf_models: dict[str | None, Any] = {}  # quant -> loaded model, or None if its load failed
    for name, quant, batch in CASES:
        b = batch or args.batch
        key = f"{name}-b{'1' if batch == 1 else 'N'}"
        if key not in wanted:
            continue
        if quant == "nf4" and not args.device.startswith("cuda"):
            print(f"{key}: skipped (bitsandbytes nf4 needs CUDA here)")
            continue
        label = f"{name} b{b}"
        reqs = prompts(b, args.prompt, vocab, seed=b)
        r = results[label] = {}
        print(f"{label}: ours ...", flush=True)
        ours = attempt(f"{label} ours", errors, run_ours, path, quant, reqs, args)
        free(args.device)
        if ours is not None:
            r["ours"], r["ours_decode"] = ours
        if not args.skip_hf:
            print(f"{label}: transformers ({args.hf_cache} cache) ...", flush=True)
            if quant not in hf_models:
                for q in list(hf_models):
                    del hf_models[q]
                free(args.device)
                t0 = time.perf_counter()
                hf_models[quant] = attempt(f"{label} hf load", errors, load_hf, path, quant, args)
                print(f"  hf load {time.perf_counter() - t0:.1f} s", flush=True)
            if hf_models[quant] is not None:
                hf = attempt(f"{label} hf", errors, run_hf, hf_models[quant], reqs, args)
                free(args.device)
                if hf is not None:
                    r["hf"], r["hf_decode"] = hf
        parts = [f"{side} {r[side]:.1f} tok/s" for side in ("ours", "hf") if side in r]
        ratio = f"  ours/hf {r['ours'] / r['hf']:.2f}x" if "ours" in r and "hf" in r else ""
        print(f"{label}: {', '.join(parts) or 'no figures'}{ratio}")
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n{dev}, torch {torch.__version__}, prompt {args.prompt}, new {args.new}")
    print(f"transformers {args.hf_cache} cache")
    print("tok/s: e2e = all generated tokens / whole generate call; decode = prefill run subtracted")
    print(f"{'case':<12}{'ours e2e':>10}{'ours dec':>10}{'hf e2e':>10}{'hf dec':>10}{'e2e x':>8}{'dec x':>8}")

    def cell(r: dict[str, float], k: str) -> str:
        return f"{r[k]:.1f}" if k in r else "-"

    def ratio_cell(r: dict[str, float], a: str, b: str) -> str:
        return f"{r[a] / r[b]:.2f}" if a in r and r.get(b) else "-"

    for label, r in results.items():
        row = [cell(r, k) for k in ("ours", "ours_decode", "hf", "hf_decode")]
        x, xd = ratio_cell(r, "ours", "hf"), ratio_cell(r, "ours_decode", "hf_decode")
        print(f"{label:<12}{row[0]:>10}{row[1]:>10}{row[2]:>10}{row[3]:>10}{x:>8}{xd:>8}")
    for e in errors:
        print(f"FAILED {e}")
    if args.json:
        out = {"device": dev, "hf_cache": args.hf_cache, "results": results, "errors": errors}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
