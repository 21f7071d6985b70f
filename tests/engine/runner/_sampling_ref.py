"""Shared by the sampler tests: request builders and the full-vocabulary oracles (the sampler
before floors: float32 log-softmax of every row, filters from a sort, noise for every token)."""

import torch
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import ScheduledSeq
from isthmus.engine.runner.sampler import uniform_noise

V = 32


def filter_mask(logprobs, top_k, top_p, min_p):
    """The full-vocabulary filters of the sampler before floors (sort of float32 probabilities):
    True where a token is filtered out; the argmax always survives. The oracle for the floors."""
    n, vocab = logprobs.shape
    probs = logprobs.exp()
    mask = torch.zeros_like(probs, dtype=torch.bool)
    if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [n, vocab]
        k_row = torch.tensor([k if k > 0 else vocab for k in top_k])[:, None]
        drop = torch.arange(vocab)[None, :] >= k_row
        kept = sorted_p.masked_fill(drop, 0.0)
        kept = kept / kept.sum(dim=-1, keepdim=True)
        drop |= kept.cumsum(dim=-1) - kept >= torch.tensor(top_p)[:, None]
        drop[:, 0] = False
        mask.scatter_(1, order, drop)
    if any(m > 0 for m in min_p):
        mask |= probs < torch.tensor(min_p)[:, None] * probs.max(dim=-1, keepdim=True).values
    mask[torch.arange(n), probs.argmax(dim=-1)] = False
    return mask


def seq(
    params: SamplingParams, history=(1, 2, 3), prompt_len=None, num_generated=0, seq_id=0
) -> ScheduledSeq:
    history = list(history)
    return ScheduledSeq(
        seq_id=seq_id,
        token_ids=history[-1:],
        start_pos=len(history) - 1,
        block_table=[0],
        do_sample=True,
        params=params,
        prompt_len=len(history) if prompt_len is None else prompt_len,
        history_ids=history,
        num_generated=num_generated,
    )


def rand_logits(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * 3


def brute_mask(lp, k, p, m):
    probs = lp.exp()
    order = sorted(range(V), key=lambda t: -float(probs[t]))
    keep = set(order[:k] if k > 0 else order)
    kept = [t for t in order if t in keep]
    total = sum(float(probs[t]) for t in kept)
    mass, keep_p = 0.0, set()
    for t in kept:
        if mass >= p:
            break
        keep_p.add(t)
        mass += float(probs[t]) / total
    keep_m = {t for t in range(V) if float(probs[t]) >= m * float(probs.max())}
    keep = keep_p & keep_m
    keep.add(order[0])
    return torch.tensor([t not in keep for t in range(V)])


def reference_sample(logits, seqs):
    """The sampler before the greedy fast path (float32 log-softmax of every row): the oracle."""
    from isthmus.engine.runner.sampler import apply_penalties, row_key

    logits = apply_penalties(logits.float().clone(), seqs)
    temps = torch.tensor([s.params.temperature if s.params.temperature > 0 else 1.0 for s in seqs])
    lp = torch.log_softmax(logits / temps[:, None], dim=-1)
    entropy = -torch.where(lp > float("-inf"), lp.exp() * lp, 0.0).sum(-1)
    chosen = lp.argmax(-1)
    for i, s in enumerate(seqs):
        if s.params.is_greedy:
            continue
        p = s.params
        mask = filter_mask(lp[i : i + 1], [p.top_k], [p.top_p], [p.min_p])
        u = uniform_noise([row_key(p.seed or 0, s.num_generated)], lp.shape[1], torch.device("cpu"))
        score = lp[i : i + 1].double().masked_fill(mask, float("-inf")) - torch.log(-torch.log(u))
        chosen[i] = score.argmax()
    return [(int(chosen[i]), float(lp[i, chosen[i]]), float(entropy[i])) for i in range(len(seqs))]


