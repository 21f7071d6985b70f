"""Token sampling for one step: penalties, temperature, top-k / top-p / min-p, seeded draws.

Order of operations per row (``logits[i]`` belongs to ``seqs[i]``; the runner passes only the
sequences with ``do_sample``):

1. repetition penalty (Hugging Face semantics, over prompt + generated tokens): a seen token's
   logit is divided by the penalty when positive and multiplied by it when negative;
2. presence / frequency penalties (OpenAI semantics, over generated tokens only):
   ``logit -= presence * (count > 0) + frequency * count``;
3. temperature ``T`` (greedy rows use 1 for what follows, and pick the argmax of step 2's logits);
4. the returned ``logprob`` of the chosen token (``x / T - logsumexp(x / T)``), the ``entropy``
   (nats; NaN for requests with ``SamplingParams.entropy`` off) and the top-k logprobs all
   describe the *unfiltered* distribution of ``x / T``;
5. filters: top-k, then top-p on the top-k-renormalised distribution, and min-p relative to the
   most likely token (always keeping that one); tokens tied with a filter's last kept token are
   kept; the draw is from what survives (`engine/runner/sample_filters.py`).

No row builds float32 log-probabilities unless its request asked for top logprobs: greedy rows
take their token, logprob and entropy from one pass over the logits in their own dtype
(`engine/kernels/sample_stats.py`); random rows reduce their filters to one floor per row and
draw with one pass that also yields the log-sum-exp and, where wanted, the entropy
(`engine/kernels/gumbel_sample.py`).

Seeded draws: the draw for a request's n-th generated token uses the Gumbel-max trick on
``x / T`` with noise computed by a counter-based hash of (seed, n, token id). It depends on
nothing else (not the batch, not the device's RNG state, not the device type), so a request's
output is the same alone or in any batch, and can be resumed on another engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from isthmus.engine.core.plan import SampledToken, ScheduledSeq
from isthmus.engine.kernels.gumbel_sample import as_i64, gumbel_draw, row_key, uniform_noise
from isthmus.engine.kernels.sample_stats import row_stats
from isthmus.engine.runner.sample_filters import filter_floors, host_to_device

__all__ = ["apply_penalties", "row_key", "sample", "sample_async", "uniform_noise"]


def apply_penalties(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> torch.Tensor:
    """Repetition / presence / frequency penalties, in place on ``logits`` [n, vocab].

    Index lists go to the device from pinned memory without blocking, so on CUDA nothing here
    waits for the queued forward pass."""
    device = logits.device
    rows: list[int] = []
    ids: list[int] = []
    pens: list[float] = []
    for i, s in enumerate(seqs):
        rp = s.params.repetition_penalty
        if rp != 1.0 and s.history_ids:
            rows += [i] * len(s.history_ids)
            ids += s.history_ids
            pens += [rp] * len(s.history_ids)
    if rows:
        r, t = host_to_device(rows, torch.int64, device), host_to_device(ids, torch.int64, device)
        pen = host_to_device(pens, logits.dtype, device)
        picked = logits[r, t]
        # Duplicated ids write the same value, so scattering is idempotent.
        logits[r, t] = torch.where(picked > 0, picked / pen, picked * pen)
    pf = [
        (i, s)
        for i, s in enumerate(seqs)
        if (s.params.presence_penalty or s.params.frequency_penalty) and len(s.history_ids) > s.prompt_len
    ]
    if pf:
        gen = [s.history_ids[s.prompt_len :] for _, s in pf]
        at = host_to_device([j for j, g in enumerate(gen) for _ in g], torch.int64, device)
        tok = host_to_device([t for g in gen for t in g], torch.int64, device)
        counts = torch.zeros(len(pf), logits.shape[1], dtype=logits.dtype, device=device)  # [rows, vocab]
        counts.index_put_((at, tok), torch.ones_like(tok, dtype=logits.dtype), accumulate=True)
        pres = host_to_device([s.params.presence_penalty for _, s in pf], logits.dtype, device)[:, None]
        freq = host_to_device([s.params.frequency_penalty for _, s in pf], logits.dtype, device)[:, None]
        idx = host_to_device([i for i, _ in pf], torch.int64, device)
        logits[idx] -= pres * (counts > 0) + freq * counts
    return logits


def _has_penalty(s: ScheduledSeq) -> bool:
    p = s.params
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


def _rows(idx: list[int], n: int, device: torch.device) -> slice | torch.Tensor:
    """An index for rows ``idx`` of an [n, ...] tensor: a slice (no gather) when they are all rows."""
    return slice(None) if len(idx) == n else host_to_device(idx, torch.int64, device)


def sample(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> list[SampledToken]:
    """Pick one token per row of ``logits`` [n, vocab] for ``seqs`` (same order); see `sample_async`."""
    return sample_async(logits, seqs)()


@torch.no_grad()
def sample_async(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> Callable[[], list[SampledToken]]:
    """Enqueue the sampling of ``logits`` [n, vocab] (any float dtype) for ``seqs`` (same order);
    returns a function giving the tokens.

    Greedy rows read the logits once (`engine/kernels/sample_stats.py`); random rows turn their
    filters into per-row floors (bounded candidate sets) and draw in one pass that also gives the
    log-sum-exp and, for requests with ``SamplingParams.entropy``, the entropy
    (`engine/kernels/gumbel_sample.py`). Only rows that ask for top logprobs get a log-softmax.
    On CUDA nothing here waits for the device: everything the host needs leaves it in one copy
    (checked by the GPU test under ``torch.cuda.set_sync_debug_mode("error")``). Only a CUDA
    install without Triton would read back, for top-p, which rows need the full-sort fallback.
    A batch with penalties is copied to float32 first (penalties are defined in float32).
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
    if greedy:
        _greedy_rows(logits, [seqs[i] for i in greedy], _rows(greedy, n, device), chosen, chosen_lp, entropy)
    if rand:
        _random_rows(logits, [seqs[i] for i in rand], _rows(rand, n, device), chosen, chosen_lp, entropy)
    return _collect(logits, seqs, chosen, chosen_lp, entropy)


def _put_entropy(entropy: torch.Tensor, idx: slice | torch.Tensor, ent: torch.Tensor | None,
                 want: list[bool]) -> None:
    """Store the rows' entropies, NaN for the requests that did not ask for one."""
    if ent is None:
        return
    if not all(want):
        ent = ent.masked_fill(~host_to_device(want, torch.bool, ent.device), float("nan"))
    entropy[idx] = ent


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
    _put_entropy(entropy, idx, ent, want)


def _random_rows(
    logits: torch.Tensor,
    seqs: list[ScheduledSeq],
    idx: slice | torch.Tensor,
    chosen: torch.Tensor,
    chosen_lp: torch.Tensor,
    entropy: torch.Tensor,
) -> None:
    """Seeded draws for the non-greedy rows: filters as floors, then one Gumbel-max pass."""
    device = logits.device
    x = logits[idx]  # [r, vocab], the logits' own dtype
    p = [s.params for s in seqs]
    temps = host_to_device([q.temperature for q in p], torch.float32, device)
    floors = filter_floors(x, temps, p)
    keys = [as_i64(row_key(q.seed or 0, s.num_generated)) for q, s in zip(p, seqs, strict=True)]
    want = [q.entropy for q in p]
    tok, lse, ent = gumbel_draw(x, temps, floors, host_to_device(keys, torch.int64, device), any(want))
    chosen[idx] = tok
    chosen_lp[idx] = x.gather(1, tok[:, None])[:, 0].float() / temps - lse
    _put_entropy(entropy, idx, ent, want)


def _top_logprobs(
    logits: torch.Tensor, seqs: list[ScheduledSeq], tops: list[int], k: int
) -> list[torch.Tensor]:
    """[ids, values] of the k most likely tokens of each row in ``tops``, from a float32
    log-softmax of those rows only (at the row's temperature; 1 for greedy rows)."""
    device = logits.device
    temps = [seqs[i].params.temperature or 1.0 for i in tops]
    x = logits[host_to_device(tops, torch.int64, device)].float()  # [t, vocab]
    if any(t != 1.0 for t in temps):
        x = x / host_to_device(temps, torch.float32, device)[:, None]
    tv, ti = torch.log_softmax(x, dim=-1).topk(k, dim=-1)
    return [ti.double().flatten(), tv.double().flatten()]


def _collect(
    logits: torch.Tensor,
    seqs: list[ScheduledSeq],
    chosen: torch.Tensor,
    chosen_lp: torch.Tensor,
    entropy: torch.Tensor,
) -> Callable[[], list[SampledToken]]:
    """One device-to-host copy of every row's token, logprob, entropy and top logprobs.

    On CUDA the copy goes into pinned memory without blocking; the returned function waits for
    it, so the host can do other work (the previous step's output processing) meanwhile.
    """
    max_top = min(max((s.params.logprobs or 0) for s in seqs), logits.shape[1])
    parts = [chosen.double(), chosen_lp.double(), entropy.double()]
    tops = [i for i, s in enumerate(seqs) if (s.params.logprobs or 0) > 0] if max_top > 0 else []
    if tops:
        parts += _top_logprobs(logits, seqs, tops, max_top)
    top_at = {i: j for j, i in enumerate(tops)}  # row -> its top block
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
