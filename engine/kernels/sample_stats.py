"""Per-row statistics of a logits matrix in one pass: argmax, log-sum-exp and (optionally) entropy.

What the sampler needs for a greedy row: the chosen token, its log-probability (its logit minus
the row's log-sum-exp) and, for requests the edge's hand-over monitor watches, the entropy of the
distribution. None of that needs the [n, vocab] float32 log-probabilities: on CUDA one Triton
program per row reads the logits once in their own dtype (bf16) and keeps an online max, sum of
exponentials and exponential-weighted sum of logits in float32 registers
(``entropy = lse - sum(p * x)``). Elsewhere (and as the reference) the same values come from
PyTorch ops.
"""

from __future__ import annotations

import torch
from isthmus.engine.kernels._triton import available, interpreting, on_device, tl, triton

BLOCK = 2048  # logits per program iteration
Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def row_stats(x: torch.Tensor, want_entropy: bool, *, use_triton: bool | None = None) -> Stats:
    """(argmax int64 [n], log-sum-exp float32 [n], entropy float32 [n] or None) of x [n, vocab].

    ``use_triton`` None: the kernel on CUDA (or under Triton's interpreter), PyTorch otherwise.
    """
    if x.dim() != 2:
        raise ValueError(f"row_stats wants [n, vocab] logits, got shape {tuple(x.shape)}")
    if use_triton is None:
        use_triton = available(x.device) or (interpreting() and triton is not None)
    if use_triton and x.shape[0] > 0 and x.shape[1] > 0:
        return _row_stats_triton(x, want_entropy)
    return _row_stats_torch(x, want_entropy)


def _row_stats_torch(x: torch.Tensor, want_entropy: bool) -> Stats:
    x32 = x.float()
    lse = torch.logsumexp(x32, dim=-1)  # [n]
    entropy = None
    if want_entropy:
        lp = x32 - lse[:, None]
        entropy = -torch.where(lp > float("-inf"), lp.exp() * lp, 0.0).sum(dim=-1)
    return x.argmax(dim=-1), lse, entropy


def _row_stats_triton(x: torch.Tensor, want_entropy: bool) -> Stats:
    if x.stride(1) != 1:
        x = x.contiguous()
    n, vocab = x.shape
    idx = torch.empty(n, dtype=torch.int32, device=x.device)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    ent = torch.empty(n if want_entropy else 1, dtype=torch.float32, device=x.device)
    with on_device(x):
        _row_stats_kernel[(n,)](x, x.stride(0), vocab, idx, lse, ent, BLOCK=BLOCK, ENTROPY=want_entropy,
                                num_warps=8)
    return idx.long(), lse, (ent if want_entropy else None)


if triton is not None:

    @triton.jit
    def _row_stats_kernel(x_ptr, stride, vocab, idx_ptr, lse_ptr, ent_ptr,
                          BLOCK: tl.constexpr, ENTROPY: tl.constexpr):
        row = tl.program_id(0)
        base = x_ptr + row.to(tl.int64) * stride
        offs = tl.arange(0, BLOCK)
        neg_inf = float("-inf")
        m = tl.full([BLOCK], neg_inf, tl.float32)  # per-lane running max
        s = tl.zeros([BLOCK], tl.float32)  # per-lane sum of exp(x - m)
        t = tl.zeros([BLOCK], tl.float32)  # per-lane sum of exp(x - m) * x
        best = tl.zeros([BLOCK], tl.int32)  # per-lane first index of its max
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            x = tl.load(base + cols, mask=cols < vocab, other=neg_inf).to(tl.float32)
            best = tl.where(x > m, cols, best)  # strict: a lane keeps the first of equal maxima
            m_new = tl.maximum(m, x)
            alpha = tl.where(m_new == neg_inf, 0.0, tl.exp(m - m_new))
            e = tl.where(x == neg_inf, 0.0, tl.exp(x - m_new))
            s = s * alpha + e
            if ENTROPY:
                t = t * alpha + tl.where(x == neg_inf, 0.0, e * x)
            m = m_new
        top = tl.max(m, axis=0)
        scale = tl.where(m == neg_inf, 0.0, tl.exp(m - top))
        total = tl.sum(s * scale, axis=0)
        lse = top + tl.log(total)
        tl.store(lse_ptr + row, lse)
        tl.store(idx_ptr + row, tl.min(tl.where(m == top, best, vocab), axis=0))
        if ENTROPY:
            tl.store(ent_ptr + row, lse - tl.sum(t * scale, axis=0) / total)
