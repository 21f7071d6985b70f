"""Token sampling for one step: penalties, temperature, top-k / top-p / min-p, seeded draws.

Order of operations per row (``logits[i]`` belongs to ``seqs[i]``; the runner passes only the
sequences with ``do_sample``):

1. repetition penalty (Hugging Face semantics, over prompt + generated tokens): a seen token's
   logit is divided by the penalty when positive and multiplied by it when negative;
2. presence / frequency penalties (OpenAI semantics, over generated tokens only):
   ``logit -= presence * (count > 0) + frequency * count``;
3. temperature (greedy rows use 1 for what follows, and pick the argmax of step 2's logits);
4. ``logprobs = log_softmax`` of that: the returned ``logprob`` of the chosen token, the
   ``entropy`` (nats; NaN for requests with ``SamplingParams.entropy`` off) and the top-k
   logprobs all come from this *unfiltered* distribution (greedy rows compute the first two from
   one reduction over the logits instead, `engine/kernels/sample_stats.py`);
5. filters: top-k, then top-p on the top-k-renormalised distribution, and min-p relative to the
   most likely token (always keeping that one); the draw is from what survives.

Seeded draws: the draw for a request's n-th generated token uses the Gumbel-max trick with
noise computed by a counter-based hash of (seed, n, token id) in int64 tensor arithmetic. It
depends on nothing else (not the batch, not the device's RNG state, not the device type), so a
request's output is the same alone or in any batch, and can be resumed on another engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from isthmus.engine.core.plan import SampledToken, ScheduledSeq
from isthmus.engine.kernels.sample_stats import row_stats

_MASK64 = (1 << 64) - 1


def _as_i64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_GOLDEN_I64, _M1_I64, _M2_I64 = _as_i64(_GOLDEN), _as_i64(_M1), _as_i64(_M2)


def _splitmix64(x: int) -> int:
    """Exact splitmix64 finaliser on a Python int (per-row keys)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on an int64 tensor (multiplication wraps modulo 2**64)."""
    x = x ^ _srl(x, 30)
    x = x * _M1_I64
    x = x ^ _srl(x, 27)
    x = x * _M2_I64
    return x ^ _srl(x, 31)


def row_key(seed: int, n: int) -> int:
    """The 64-bit key of the draw for the n-th generated token of a request with this seed."""
    return _splitmix64(_splitmix64(seed) + n * _GOLDEN)


def uniform_noise(keys: list[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """Uniforms in (0, 1) of shape [len(keys), vocab_size]; element (i, v) depends on keys[i], v."""
    k = torch.tensor([_as_i64(key) for key in keys], dtype=torch.int64, device=device)  # [n]
    v = torch.arange(vocab_size, dtype=torch.int64, device=device) * _GOLDEN_I64  # [vocab]
    x = _mix(k[:, None] + v[None, :])  # [n, vocab]
    return (_srl(x, 11).to(torch.float64) + 0.5) * (1.0 / (1 << 53))


def apply_penalties(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> torch.Tensor:
    """Repetition / presence / frequency penalties, in place on ``logits`` [n, vocab]."""
    device = logits.device
    vocab = logits.shape[1]
    rep_rows, rep_ids, rep_vals = [], [], []
    for i, s in enumerate(seqs):
        rp = s.params.repetition_penalty
        if rp != 1.0 and s.history_ids:
            rep_rows.append(torch.full((len(s.history_ids),), i, dtype=torch.int64))
            rep_ids.append(torch.tensor(s.history_ids, dtype=torch.int64))
            rep_vals.append(rp)
    if rep_rows:
        rows = torch.cat(rep_rows).to(device)
        ids = torch.cat(rep_ids).to(device)
        rp_row = torch.ones(len(seqs), device=device)
        for i, val in zip([int(r[0]) for r in rep_rows], rep_vals, strict=True):
            rp_row[i] = val
        picked = logits[rows, ids]
        pen = rp_row[rows]
        # Duplicated ids write the same value, so scattering is idempotent.
        logits[rows, ids] = torch.where(picked > 0, picked / pen, picked * pen)
    pf = [
        (i, s)
        for i, s in enumerate(seqs)
        if (s.params.presence_penalty or s.params.frequency_penalty) and len(s.history_ids) > s.prompt_len
    ]
    if pf:
        counts = torch.zeros(len(pf), vocab, device=device)  # [rows, vocab]
        for j, (_, s) in enumerate(pf):
            gen = torch.tensor(s.history_ids[s.prompt_len :], dtype=torch.int64, device=device)
            counts[j].index_add_(0, gen, torch.ones(len(gen), device=device))
        pres = torch.tensor([s.params.presence_penalty for _, s in pf], device=device)[:, None]
        freq = torch.tensor([s.params.frequency_penalty for _, s in pf], device=device)[:, None]
        idx = torch.tensor([i for i, _ in pf], device=device)
        logits[idx] -= pres * (counts > 0) + freq * counts
    return logits


def filter_mask(
    logprobs: torch.Tensor, top_k: list[int], top_p: list[float], min_p: list[float]
) -> torch.Tensor:
    """True where a token is filtered out. ``logprobs`` [n, vocab]; the argmax always survives."""
    n, vocab = logprobs.shape
    device = logprobs.device
    probs = logprobs.exp()
    mask = torch.zeros_like(probs, dtype=torch.bool)
    if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [n, vocab]
        k_row = torch.tensor([k if k > 0 else vocab for k in top_k], device=device)[:, None]
        ranks = torch.arange(vocab, device=device)[None, :]
        drop = ranks >= k_row
        kept = sorted_p.masked_fill(drop, 0.0)
        kept = kept / kept.sum(dim=-1, keepdim=True)
        before = kept.cumsum(dim=-1) - kept  # mass of the more likely tokens
        drop |= before >= torch.tensor(top_p, device=device)[:, None]
        drop[:, 0] = False
        mask.scatter_(1, order, drop)
    if any(m > 0 for m in min_p):
        floor = torch.tensor(min_p, device=device)[:, None] * probs.max(dim=-1, keepdim=True).values
        mask |= probs < floor
    mask[torch.arange(n, device=device), probs.argmax(dim=-1)] = False
    return mask


def _has_penalty(s: ScheduledSeq) -> bool:
    p = s.params
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


def _rows(idx: list[int], n: int, device: torch.device) -> slice | torch.Tensor:
    """An index for rows ``idx`` of an [n, ...] tensor: a slice (no gather) when they are all rows."""
    return slice(None) if len(idx) == n else torch.tensor(idx, device=device)


def sample(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> list[SampledToken]:
    """Pick one token per row of ``logits`` [n, vocab] for ``seqs`` (same order); see `sample_async`."""
    return sample_async(logits, seqs)()


@torch.no_grad()
def sample_async(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> Callable[[], list[SampledToken]]:
    """Enqueue the sampling of ``logits`` [n, vocab] (any float dtype) for ``seqs`` (same order);
    returns a function giving the tokens.

    Greedy rows never build float32 log-probabilities: their token, its logprob and (when the
    request wants it, ``SamplingParams.entropy``) the entropy come from one pass over the logits
    (`engine/kernels/sample_stats.py`). Random rows keep the exact arithmetic the seeded draw is defined
    on (float32 log-softmax, filters, float64 Gumbel scores). Rows that ask for top logprobs get
    them. Everything the host needs leaves the device in one copy.
    """
    if logits.dim() != 2 or logits.shape[0] != len(seqs):
        raise ValueError(f"logits shape {tuple(logits.shape)} does not match {len(seqs)} sequences")
    if not seqs:
        return list
    n, device = len(seqs), logits.device
    if any(_has_penalty(s) for s in seqs):
        logits = apply_penalties(logits.float().clone(), seqs)  # [n, vocab]
    chosen = torch.empty(n, dtype=torch.int64, device=device)
    chosen_lp = torch.empty(n, dtype=torch.float32, device=device)
    entropy = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
    greedy = [i for i, s in enumerate(seqs) if s.params.is_greedy]
    rand = [i for i, s in enumerate(seqs) if not s.params.is_greedy]
    logprobs: dict[int, torch.Tensor] = {}  # row -> float32 log-probabilities, where built
    if greedy:
        _greedy_rows(logits, [seqs[i] for i in greedy], _rows(greedy, n, device), chosen, chosen_lp, entropy)
    if rand:
        lp = _random_rows(logits, [seqs[i] for i in rand], _rows(rand, n, device), chosen, chosen_lp, entropy)
        logprobs.update((i, lp[j]) for j, i in enumerate(rand))
    return _collect(logits, seqs, chosen, chosen_lp, entropy, logprobs)


def _greedy_rows(
    logits: torch.Tensor,
    seqs: list[ScheduledSeq],
    idx: slice | torch.Tensor,
    chosen: torch.Tensor,
    chosen_lp: torch.Tensor,
    entropy: torch.Tensor,
) -> None:
    """Argmax, its logprob (logit - log-sum-exp) and the entropy where wanted, for greedy rows."""
    x = logits[idx]  # [g, vocab]
    want = [s.params.entropy for s in seqs]
    tok, lse, ent = row_stats(x, any(want))
    chosen[idx] = tok
    chosen_lp[idx] = x.gather(1, tok[:, None])[:, 0].float() - lse
    if ent is not None:
        if not all(want):
            ent = ent.masked_fill(~torch.tensor(want, device=ent.device), float("nan"))
        entropy[idx] = ent


def _random_rows(
    logits: torch.Tensor,
    seqs: list[ScheduledSeq],
    idx: slice | torch.Tensor,
    chosen: torch.Tensor,
    chosen_lp: torch.Tensor,
    entropy: torch.Tensor,
) -> torch.Tensor:
    """Seeded draws for the non-greedy rows; returns their float32 log-probabilities [r, vocab]."""
    device = logits.device
    x = logits[idx].float()
    temps = [s.params.temperature for s in seqs]
    if any(t != 1.0 for t in temps):
        x = x / torch.tensor(temps, device=device)[:, None]
    lp = torch.log_softmax(x, dim=-1)  # [r, vocab]
    p = [s.params for s in seqs]
    mask = filter_mask(lp, [q.top_k for q in p], [q.top_p for q in p], [q.min_p for q in p])
    keys = [row_key(q.seed or 0, s.num_generated) for q, s in zip(p, seqs, strict=True)]
    u = uniform_noise(keys, lp.shape[1], device)  # [r, vocab] float64
    gumbel = -torch.log(-torch.log(u))
    tok = (lp.double().masked_fill(mask, float("-inf")) + gumbel).argmax(dim=-1)
    chosen[idx] = tok
    chosen_lp[idx] = lp.gather(1, tok[:, None])[:, 0]
    want = [q.entropy for q in p]
    if any(want):
        ent = -torch.where(lp > float("-inf"), lp.exp() * lp, 0.0).sum(dim=-1)
        if not all(want):
            ent = ent.masked_fill(~torch.tensor(want, device=device), float("nan"))
        entropy[idx] = ent
    return lp


def _collect(
    logits: torch.Tensor,
    seqs: list[ScheduledSeq],
    chosen: torch.Tensor,
    chosen_lp: torch.Tensor,
    entropy: torch.Tensor,
    logprobs: dict[int, torch.Tensor],
) -> Callable[[], list[SampledToken]]:
    """One device-to-host copy of every row's token, logprob, entropy and top logprobs.

    On CUDA the copy goes into pinned memory without blocking; the returned function waits for
    it, so the host can do other work (the previous step's output processing) meanwhile.
    """
    max_top = min(max((s.params.logprobs or 0) for s in seqs), logits.shape[1])
    parts = [chosen.double(), chosen_lp.double(), entropy.double()]
    if max_top > 0:
        tops = [i for i, s in enumerate(seqs) if (s.params.logprobs or 0) > 0]
        rows = torch.stack([
            logprobs[i] if i in logprobs else torch.log_softmax(logits[i].float(), dim=-1) for i in tops
        ])  # [t, vocab]: only the rows that asked for top logprobs
        tv, ti = rows.topk(max_top, dim=-1)
        parts += [ti.double().flatten(), tv.double().flatten()]
    top_at = {i: j for j, i in enumerate(tops)} if max_top > 0 else {}  # row -> its top block
    flat_dev = torch.cat(parts)
    if not flat_dev.is_cuda:
        flat = flat_dev.cpu().tolist()
        return lambda: _tokens(seqs, flat, max_top, top_at)
    host = torch.empty(flat_dev.shape, dtype=flat_dev.dtype, pin_memory=True)
    host.copy_(flat_dev, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def finish() -> list[SampledToken]:
        done.synchronize()
        return _tokens(seqs, host.tolist(), max_top, top_at)

    return finish


def _tokens(
    seqs: list[ScheduledSeq], flat: list[float], max_top: int, top_at: dict[int, int]
) -> list[SampledToken]:
    n = len(seqs)
    out = []
    id_base, val_base = 3 * n, 3 * n + len(top_at) * max_top
    for i, s in enumerate(seqs):
        k = min(s.params.logprobs or 0, max_top)
        top = None
        if k > 0:
            o = top_at[i] * max_top
            top = [(int(flat[id_base + o + j]), flat[val_base + o + j]) for j in range(k)]
        out.append(SampledToken(int(flat[i]), float(flat[n + i]), float(flat[2 * n + i]), top))
    return out
