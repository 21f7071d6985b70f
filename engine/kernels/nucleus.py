"""Top-p (nucleus) as a floor on the raw logits, found without sorting the vocabulary on CUDA.

Top-p keeps the most likely tokens, in order, up to and including the first at which their
cumulative probability reaches ``top_p``; tokens tied with that last one are kept too (so the
kept set does not depend on how a sort orders equal values). That set is ``{v : x[v] >= floor}``
with ``floor`` the largest logit value ``f`` whose mass ``P(x >= f)`` is still >= ``top_p``
(probabilities of ``x / T``), or -inf where even the whole row's (rounded) mass falls short.

- CUDA / Triton's interpreter: one program per row finds the row's log-sum-exp, then bisects
  ``f`` over the order-preserving integer image of float32 (32 halvings, each one pass over the
  row in its own dtype: the row stays in L2), with no host round-trip.
- PyTorch (CPU, the reference): the ``CANDIDATES`` largest logits by `torch.topk`, a cumulative
  sum over them, and a full sort only for rows whose candidates hold less than ``top_p``.
"""

from __future__ import annotations

import torch
from isthmus.engine.kernels._triton import available, interpreting, on_device, tl, triton

BLOCK = 1024  # logits per program iteration on a GPU
INTERPRET_BLOCK = 8192  # under the interpreter: fewer, larger numpy steps
CANDIDATES = 1024  # the PyTorch path's bounded candidate set per row


def nucleus_floor(
    x: torch.Tensor, temps: torch.Tensor, top_p: torch.Tensor, *, use_triton: bool | None = None
) -> torch.Tensor:
    """The top-p floor (float32 [n], on raw logits) of x [n, vocab] at temperatures ``temps``."""
    if x.dim() != 2 or not temps.shape == top_p.shape == (x.shape[0],):
        raise ValueError(f"nucleus_floor: logits {tuple(x.shape)} and per-row tensors disagree")
    if use_triton is None:
        use_triton = available(x.device) or (interpreting() and triton is not None)
    if use_triton and x.shape[0] > 0 and x.shape[1] > 0:
        return _floor_triton(x, temps, top_p)
    return _floor_torch(x, temps, top_p)


def floor_from_sorted(vals: torch.Tensor, weights: torch.Tensor, total: torch.Tensor,
                      top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor [n], found [n] bool) from each row's largest raw logits ``vals`` [n, k] (sorted,
    descending), their probabilities ``weights`` [n, k] and the normaliser ``total`` [n]."""
    reached = weights.cumsum(dim=-1) >= top_p[:, None] * total[:, None]
    found = reached.any(dim=-1)
    first = reached.to(torch.int8).argmax(dim=-1)  # the first rank that reaches top_p
    floor = vals.gather(1, first[:, None])[:, 0].float()
    return floor, found


def _floor_torch(x: torch.Tensor, temps: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    t = temps.float()[:, None]
    lse = torch.logsumexp(x.float() / t, dim=-1)  # [n]
    one = torch.ones_like(lse)
    k = min(CANDIDATES, x.shape[1])
    vals = x.topk(k, dim=-1).values.float()  # [n, k]
    floor, found = floor_from_sorted(vals, torch.exp(vals / t - lse[:, None]), one, top_p)
    for i in (~found).nonzero()[:, 0].tolist():  # rows whose mass lies beyond the candidates
        row = x[i].float().sort(descending=True).values[None]
        f, ok = floor_from_sorted(row, torch.exp(row / t[i] - lse[i]), one[i : i + 1], top_p[i : i + 1])
        floor[i] = f[0] if bool(ok[0]) else float("-inf")
    return floor


def _floor_triton(x: torch.Tensor, temps: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    if x.stride(1) != 1:
        x = x.contiguous()
    n, vocab = x.shape
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    with on_device(x):
        _nucleus_kernel[(n,)](x, x.stride(0), vocab, temps.float().contiguous(), top_p.float().contiguous(),
                              out, BLOCK=INTERPRET_BLOCK if interpreting() else BLOCK, num_warps=8)
    return out


if triton is not None:

    @triton.jit
    def _order_key(xf):
        """float32 -> int32 with the same order (-0.0 and +0.0 share 0)."""
        bits = xf.to(tl.int32, bitcast=True)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        return tl.where(key == -1, 0, key)

    @triton.jit
    def _nucleus_kernel(x_ptr, stride, vocab, t_ptr, p_ptr, out_ptr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = x_ptr + row.to(tl.int64) * stride
        temp = tl.load(t_ptr + row)
        top_p = tl.load(p_ptr + row)
        offs = tl.arange(0, BLOCK)
        neg_inf = float("-inf")
        m = tl.full([BLOCK], neg_inf, tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            y = tl.math.div_rn(tl.load(base + cols, mask=cols < vocab, other=neg_inf).to(tl.float32), temp)
            m_new = tl.maximum(m, y)
            alpha = tl.where(m_new == neg_inf, 0.0, tl.exp(m - m_new))
            s = s * alpha + tl.where(y == neg_inf, 0.0, tl.exp(y - m_new))
            m = m_new
        mx = tl.max(m, axis=0)
        lse = mx + tl.log(tl.sum(s * tl.where(m == neg_inf, 0.0, tl.exp(m - mx)), axis=0))
        # Invariant: mass(x >= lo) >= top_p > mass(x >= hi), over order keys (lo: -inf; hi: past +inf).
        lo = tl.full([], -2139095041, tl.int64)
        hi = tl.full([], 2139095041, tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            acc = tl.zeros([BLOCK], tl.float32)
            for start in range(0, vocab, BLOCK):
                cols = start + offs
                xf = tl.load(base + cols, mask=cols < vocab, other=neg_inf).to(tl.float32)
                p = tl.exp(tl.math.div_rn(xf, temp) - lse)
                acc += tl.where((_order_key(xf) >= mid) & (cols < vocab), p, 0.0)
            ok = tl.sum(acc, axis=0) >= top_p
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid)
        bits = tl.where(lo >= 0, lo, lo ^ 0x7FFFFFFF).to(tl.int32)
        tl.store(out_ptr + row, bits.to(tl.float32, bitcast=True))
