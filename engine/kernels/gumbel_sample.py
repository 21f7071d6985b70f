"""Seeded Gumbel-max draws over a logits row in one pass, without log-probabilities.

The draw for a request's n-th generated token is defined on the row's logits ``x`` (any float
dtype, read as float32), its temperature ``T`` and a threshold ``thr`` on the raw logits that
the filters (top-k, top-p, min-p) reduce to (``engine/runner/sample_filters.py``)::

    token = argmax over {v : x[v] >= thr} of  float64(x[v] / T) + g(key, v)
    g(key, v) = -log(-log(u)),  u = ((mix(key + v * GOLDEN) >> 11) + 0.5) / 2**53

``mix`` is the splitmix64 finaliser and ``key = row_key(seed, n)``: the noise depends on nothing
but (seed, n, token id), so a request's draw is the same alone or in any batch, on any engine.
``x / T`` differs from the log-probability ``x / T - lse`` by one constant per row, so the token
is the argmax of the same scores as a draw over a float32 log-softmax (up to the rounding of that
subtraction), without building one. The same pass returns the row's log-sum-exp of ``x / T``
(the chosen token's logprob is ``x[token] / T - lse``) and, when asked, the entropy.

On CUDA (or under Triton's interpreter) one Triton program per row reads the logits once in their
own dtype, hashes the noise in registers and keeps float32 online sums; elsewhere (and as the
reference) PyTorch computes the same, a few rows at a time.
"""

from __future__ import annotations

import torch
from isthmus.engine.kernels._triton import available, interpreting, on_device, tl, triton

BLOCK = 1024  # logits per program iteration
ROWS_PER_CHUNK = 8  # the PyTorch path's rows per [rows, vocab] float64 temporary
Draw = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def as_i64(x: int) -> int:
    """A 64-bit pattern as a signed int64 value (what a torch int64 tensor stores)."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN_I64, _M1_I64, _M2_I64 = as_i64(_GOLDEN), as_i64(_M1), as_i64(_M2)


def _splitmix64(x: int) -> int:
    """Exact splitmix64 finaliser on a Python int (per-row keys)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def row_key(seed: int, n: int) -> int:
    """The 64-bit key of the draw for the n-th generated token of a request with this seed."""
    return _splitmix64(_splitmix64(seed) + n * _GOLDEN)


def _mix_(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on an int64 tensor, in place (multiplication wraps modulo 2**64;
    torch's >> is arithmetic, so the logical shift masks the sign bits off)."""
    x ^= (x >> 30) & ((1 << 34) - 1)
    x *= _M1_I64
    x ^= (x >> 27) & ((1 << 37) - 1)
    x *= _M2_I64
    x ^= (x >> 31) & ((1 << 33) - 1)
    return x


def noise_at(keys: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), float64: element (i, j) is u(keys[i], cols[i, j]) (cols [m] broadcasts)."""
    x = cols.to(torch.int64) * _GOLDEN_I64
    x = _mix_(x + keys[:, None])  # [n, m]
    x >>= 11
    x &= (1 << 53) - 1
    return x.to(torch.float64).add_(0.5).mul_(1.0 / (1 << 53))


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """-log(-log(u)), in place on the float64 uniforms ``u``."""
    return u.log_().neg_().log_().neg_()


def uniform_noise(keys: list[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """Uniforms in (0, 1) of shape [len(keys), vocab_size]; element (i, v) depends on keys[i], v."""
    k = torch.tensor([as_i64(key) for key in keys], dtype=torch.int64, device=device)
    return noise_at(k, torch.arange(vocab_size, device=device))


def gumbel_draw(
    x: torch.Tensor, temps: torch.Tensor, thr: torch.Tensor, keys: torch.Tensor, want_entropy: bool,
    *, use_triton: bool | None = None,
) -> Draw:
    """(token int64 [n], lse of x/T float32 [n], entropy float32 [n] or None) for x [n, vocab].

    ``temps`` float32 [n] (> 0), ``thr`` float32 [n] (raw-logit floor; -inf keeps every token),
    ``keys`` int64 [n] (`row_key` as int64). ``use_triton`` None: the kernel on CUDA (or under
    Triton's interpreter), PyTorch otherwise.
    """
    if x.dim() != 2 or not temps.shape == thr.shape == keys.shape == (x.shape[0],):
        raise ValueError(f"gumbel_draw: logits {tuple(x.shape)} and per-row tensors disagree")
    if use_triton is None:
        use_triton = available(x.device) or (interpreting() and triton is not None)
    if use_triton and x.shape[0] > 0 and x.shape[1] > 0:
        return _draw_triton(x, temps, thr, keys, want_entropy)
    return _draw_torch(x, temps, thr, keys, want_entropy)


def _draw_torch(x: torch.Tensor, temps: torch.Tensor, thr: torch.Tensor, keys: torch.Tensor,
                want_entropy: bool) -> Draw:
    n = x.shape[0]
    tok = torch.empty(n, dtype=torch.int64, device=x.device)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    ent = torch.empty(n, dtype=torch.float32, device=x.device) if want_entropy else None
    for a in range(0, n, ROWS_PER_CHUNK):
        b = min(n, a + ROWS_PER_CHUNK)
        xf = x[a:b].float()
        s = xf / temps[a:b, None]  # [c, vocab]
        lse[a:b] = torch.logsumexp(s, dim=-1)
        if ent is not None:
            lp = s - lse[a:b, None]
            ent[a:b] = -torch.where(lp > float("-inf"), lp.exp() * lp, 0.0).sum(dim=-1)
        unfiltered = bool(torch.isneginf(thr[a:b]).all()) if not x.is_cuda else False
        if x.is_cuda or unfiltered:
            score = gumbel(noise_at(keys[a:b], torch.arange(x.shape[1], device=x.device)))
            score += s
            if not unfiltered:
                score.masked_fill_(xf < thr[a:b, None], float("-inf"))
            tok[a:b] = score.argmax(dim=-1)
        else:  # CPU, filtered rows: hash only the tokens that survive the filters
            for i in range(a, b):
                cols = (xf[i - a] >= thr[i]).nonzero()[:, 0]
                score = gumbel(noise_at(keys[i : i + 1], cols)[0]) + s[i - a, cols]
                tok[i] = cols[score.argmax()]
    return tok, lse, ent


def _draw_triton(x: torch.Tensor, temps: torch.Tensor, thr: torch.Tensor, keys: torch.Tensor,
                 want_entropy: bool) -> Draw:
    if x.stride(1) != 1:
        x = x.contiguous()
    n, vocab = x.shape
    tok = torch.empty(n, dtype=torch.int32, device=x.device)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    ent = torch.empty(n if want_entropy else 1, dtype=torch.float32, device=x.device)
    args = (temps.float().contiguous(), thr.float().contiguous(), keys.to(torch.int64).contiguous())
    with on_device(x):
        _gumbel_kernel[(n,)](x, x.stride(0), vocab, *args, tok, lse, ent, BLOCK=BLOCK,
                             ENTROPY=want_entropy, num_warps=8)
    return tok.long(), lse, (ent if want_entropy else None)


if triton is not None:

    @triton.jit
    def gumbel_noise(key, cols):
        """-log(-log(u)) in float64 for uint64 key and int32 cols, as `noise_at` defines u."""
        z = key + cols.to(tl.uint64) * 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        z = z ^ (z >> 31)
        u = ((z >> 11).to(tl.float64) + 0.5) * (1.0 / 9007199254740992.0)
        return -tl.log(-tl.log(u))

    @triton.jit
    def _gumbel_kernel(x_ptr, stride, vocab, t_ptr, thr_ptr, key_ptr, tok_ptr, lse_ptr, ent_ptr,
                       BLOCK: tl.constexpr, ENTROPY: tl.constexpr):
        row = tl.program_id(0)
        base = x_ptr + row.to(tl.int64) * stride
        temp = tl.load(t_ptr + row)
        floor = tl.load(thr_ptr + row)
        key = tl.load(key_ptr + row).to(tl.uint64, bitcast=True)
        offs = tl.arange(0, BLOCK)
        neg_inf = float("-inf")
        m = tl.full([BLOCK], neg_inf, tl.float32)  # per-lane running max of x / T
        s = tl.zeros([BLOCK], tl.float32)  # per-lane sum of exp(x / T - m)
        t = tl.zeros([BLOCK], tl.float32)  # per-lane sum of exp(x / T - m) * x / T
        best = tl.full([BLOCK], neg_inf, tl.float64)  # per-lane best Gumbel score
        arg = tl.zeros([BLOCK], tl.int32)  # per-lane first index of that score
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            xf = tl.load(base + cols, mask=cols < vocab, other=neg_inf).to(tl.float32)
            y = tl.math.div_rn(xf, temp)
            score = tl.where(xf >= floor, y.to(tl.float64) + gumbel_noise(key, cols), neg_inf)
            arg = tl.where(score > best, cols, arg)  # strict: a lane keeps the first of equal scores
            best = tl.maximum(best, score)
            m_new = tl.maximum(m, y)
            alpha = tl.where(m_new == neg_inf, 0.0, tl.exp(m - m_new))
            e = tl.where(y == neg_inf, 0.0, tl.exp(y - m_new))
            s = s * alpha + e
            if ENTROPY:
                t = t * alpha + tl.where(y == neg_inf, 0.0, e * y)
            m = m_new
        top = tl.max(best, axis=0)
        tl.store(tok_ptr + row, tl.min(tl.where(best == top, arg, vocab), axis=0))
        mx = tl.max(m, axis=0)
        scale = tl.where(m == neg_inf, 0.0, tl.exp(m - mx))
        total = tl.sum(s * scale, axis=0)
        lse = mx + tl.log(total)
        tl.store(lse_ptr + row, lse)
        if ENTROPY:
            tl.store(ent_ptr + row, lse - tl.sum(t * scale, axis=0) / total)
