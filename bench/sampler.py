"""Sampler cost per step on CPU: the float32-log-probabilities path it replaced vs. the current one.

Same process, same logits (float32, vocab 102,400 by default), rows 1 / 32 / 64, seeded requests:

- **fp32-logprobs** (the sampler before issue 14 point 5): ``log_softmax(x / T)`` over every row,
  top-k / top-p / min-p as a mask from a full sort of the float32 probabilities, the seeded
  Gumbel noise for every token of every row, entropy from the log-probabilities;
- **new** (`isthmus.engine.runner.sampler.sample`): filters as per-row floors on the raw logits
  (top-k candidates, top-p from 1,024 candidates), one draw pass without log-probabilities,
  noise hashed only for the tokens that survive the filters.

Both use the same noise hash (`engine/kernels/gumbel_sample.py`) and end in one copy to the host.

    .venv/bin/python bench/sampler.py [--vocab 102400] [--reps 5] [--rows 1 32 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import ScheduledSeq
from isthmus.engine.runner.sampler import row_key, sample, uniform_noise

CASES = {
    "temperature 0.8": dict(temperature=0.8),
    "top-k 50 + top-p 0.9": dict(temperature=0.8, top_k=50, top_p=0.9),
    "top-p 0.9": dict(temperature=0.8, top_p=0.9),
    "min-p 0.05": dict(temperature=0.8, min_p=0.05),
}


def old_filter_mask(lp: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The replaced filters: a full sort of the float32 probabilities of every filtered row."""
    n, vocab = lp.shape
    probs = lp.exp()
    mask = torch.zeros_like(probs, dtype=torch.bool)
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = torch.arange(vocab)[None, :] >= torch.tensor([p.top_k or vocab for p in params])[:, None]
        kept = sorted_p.masked_fill(drop, 0.0)
        kept = kept / kept.sum(dim=-1, keepdim=True)
        drop |= kept.cumsum(dim=-1) - kept >= torch.tensor([p.top_p for p in params])[:, None]
        drop[:, 0] = False
        mask.scatter_(1, order, drop)
    if any(p.min_p > 0 for p in params):
        floor = torch.tensor([p.min_p for p in params])[:, None] * probs.max(dim=-1, keepdim=True).values
        mask |= probs < floor
    mask[torch.arange(n), probs.argmax(dim=-1)] = False
    return mask


def old_sample(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> list[float]:
    """The replaced random-row path (float32 log-softmax of every row), ending in one host copy."""
    p = [s.params for s in seqs]
    lp = torch.log_softmax(logits.float() / torch.tensor([q.temperature for q in p])[:, None], dim=-1)
    mask = old_filter_mask(lp, p)
    u = uniform_noise([row_key(q.seed or 0, s.num_generated) for q, s in zip(p, seqs, strict=True)],
                      lp.shape[1], logits.device)
    tok = (lp.double().masked_fill(mask, float("-inf")) - torch.log(-torch.log(u))).argmax(dim=-1)
    chosen_lp = lp.gather(1, tok[:, None])[:, 0]
    ent = -torch.where(lp > float("-inf"), lp.exp() * lp, 0.0).sum(dim=-1)
    return torch.cat([tok.double(), chosen_lp.double(), ent.double()]).cpu().tolist()


def seqs_for(rows: int, case: dict, entropy: bool) -> list[ScheduledSeq]:
    return [
        ScheduledSeq(seq_id=i, token_ids=[1], start_pos=0, block_table=[0], do_sample=True,
                     params=SamplingParams(seed=i, entropy=entropy, **case), prompt_len=1, history_ids=[1],
                     num_generated=7)
        for i in range(rows)
    ]


def timed_pair(old, new, reps: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Fewest CPU seconds (this process, `time.process_time`) of ``old()`` and of ``new()`` over
    ``reps`` interleaved runs after a warm-up each: on a shared host wall time mostly measures the
    other processes, CPU time and the minimum much less."""
    old(), new()
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        for j, fn in enumerate((old, new)):
            t = time.process_time()
            fn()
            best[j] = min(best[j], time.process_time() - t)
    return best[0], best[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=102400)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 32, 64])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"vocab {args.vocab}, float32 logits, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':<22} {'rows':>4} {'entropy':>7} {'fp32-logprobs CPU ms':>20} {'new CPU ms':>10}"
          f" {'ratio':>6}")
    for name, case in CASES.items():
        for rows in args.rows:
            logits = torch.randn(rows, args.vocab, generator=g) * 4
            for entropy in (False, True):
                seqs = seqs_for(rows, case, entropy)
                old, new = timed_pair(lambda x=logits, s=seqs: old_sample(x, s),
                                      lambda x=logits, s=seqs: sample(x, s), args.reps)
                print(f"{name:<22} {rows:>4} {entropy!s:>7} {old * 1e3:>20.1f} {new * 1e3:>10.1f} "
                      f"{old / new:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
