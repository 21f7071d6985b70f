"""Top-k, top-p and min-p as one floor per row on the raw logits (kept: ``x >= floor``).

A filter over a sorted distribution keeps a prefix of it, which is every token whose logit is at
least the prefix's last logit. So each row's filters reduce to a float32 floor that the draw
(`engine/kernels/gumbel_sample.py`) applies while it streams the row; nothing [rows, vocab] in
float32 is built for it:

- top-k: the k-th largest logit (``torch.topk`` over the row in its own dtype); tokens tied with it
  are kept too, so the kept set does not depend on how a device orders equal values;
- top-p with top-k: on the k candidates only (softmax over them, counting the mass of any ties
  beyond the k-th), the first logit at which the renormalised cumulative mass reaches ``top_p``;
- top-p alone: `engine/kernels/nucleus.py` (a bisection kernel on CUDA, bounded candidates with
  a full-sort fallback on CPU);
- min-p: ``max logit + T * log(min_p)`` (a token survives when ``p >= min_p * p_max``).

Several filters keep the intersection: the largest floor. The most likely token always survives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.kernels.nucleus import floor_from_sorted, nucleus_floor


def host_to_device(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small per-row tensor on ``device`` without stalling the host: on CUDA it is copied from
    pinned memory asynchronously (a pageable copy would wait for the queued forward pass)."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def filter_floors(x: torch.Tensor, temps: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """float32 [r] floors on the raw logits ``x`` [r, vocab] (-inf: nothing filtered)."""
    r, vocab = x.shape
    device = x.device
    floor = torch.full((r,), float("-inf"), dtype=torch.float32, device=device)
    top_k = [i for i, p in enumerate(params) if 0 < p.top_k < vocab]
    nucleus = [i for i, p in enumerate(params) if not 0 < p.top_k < vocab and p.top_p < 1.0]
    min_p = [i for i, p in enumerate(params) if p.min_p > 0.0]
    if top_k:
        rows = host_to_device(top_k, torch.int64, device)
        ks = [params[i].top_k for i in top_k]
        tps = [params[i].top_p for i in top_k]
        floor[rows] = top_k_floor(x[rows], temps[rows], ks, tps)
    if nucleus:
        rows = host_to_device(nucleus, torch.int64, device)
        floor[rows] = nucleus_floor(x[rows], temps[rows], host_to_device(
            [params[i].top_p for i in nucleus], torch.float32, device))
    if min_p:
        rows = host_to_device(min_p, torch.int64, device)
        log_min_p = host_to_device([params[i].min_p for i in min_p], torch.float32, device).log()
        top = x[rows].max(dim=-1).values.float()
        floor[rows] = torch.maximum(floor[rows], top + temps[rows] * log_min_p)
    return floor


def top_k_floor(x: torch.Tensor, temps: torch.Tensor, ks: list[int], top_p: list[float]) -> torch.Tensor:
    """Floors of rows with top-k (``0 < k < vocab``) and optional top-p (< 1) over the k."""
    device = x.device
    vals = x.topk(max(ks), dim=-1).values.float()  # [r, K] descending, raw logits
    k = host_to_device(ks, torch.int64, device)
    kth = vals.gather(1, (k - 1)[:, None])[:, 0]  # [r]
    if all(p >= 1.0 for p in top_p):
        return kth
    t = temps[:, None]
    ranks = torch.arange(vals.shape[1], device=device)[None, :]
    w = torch.exp(vals / t - vals[:, :1] / t).masked_fill(ranks >= k[:, None], 0.0)  # relative probs
    ties = (x >= kth.to(x.dtype)[:, None]).sum(dim=-1) - k  # tokens equal to the k-th beyond the k
    total = w.sum(dim=-1) + ties * w.gather(1, (k - 1)[:, None])[:, 0]
    p = host_to_device(top_p, torch.float32, device)
    f, found = floor_from_sorted(vals, w, total, p)
    return torch.where(found & (p < 1.0), f, kth)
