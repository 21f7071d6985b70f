"""Checks of the Triton kernels against their references, shared by the CPU and GPU tests.

Each `check_*(device)` builds inputs on the CPU from a seeded generator, moves them to `device`,
runs the `triton_*` launcher and asserts agreement with the portable reference. The CPU tests run
them in a subprocess under TRITON_INTERPRET=1 (Triton's interpreter must be chosen before the
kernels are defined); the GPU tests call them directly with "cuda". Shapes are the 7B's where
the interpreter allows it: head_dim 128, hidden 4096, ffn 11008, MHA and GQA groups of 4, bf16.
"""

from __future__ import annotations

import itertools

import torch


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _row_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    dims = tuple(range(1, out.dim()))
    return ((out.float() - ref.float()).norm(dim=dims) / ref.float().norm(dim=dims)).max().item()


def _tol(dtype: torch.dtype) -> float:
    # float32: online vs. one-pass softmax; bf16: rounding of p and of the output.
    return 2e-5 if dtype == torch.float32 else 2e-2


def _paged(num_blocks: int, bs: int, kvh: int, hd: int, dtype: torch.dtype, g: torch.Generator, device: str):
    k = torch.randn(num_blocks, bs, kvh, hd, generator=g).to(dtype).to(device)
    v = torch.randn(num_blocks, bs, kvh, hd, generator=g).to(dtype).to(device)
    return k, v


def check_decode(device: str) -> None:
    """Split-K decode vs. the gather-and-mask decode: lengths 1, block multiples, one past, and
    2,048; one split, the automatic choice and a forced 7 (most of them empty for short rows)."""
    from isthmus.engine.kernels.decode import choose_num_splits, triton_paged_decode
    from isthmus.engine.model.attention import _decode_batch

    bs, hd, num_blocks = 16, 128, 160
    lens = torch.tensor([1, bs, 4 * bs, 4 * bs + 1, 2048])
    # (query heads, KV heads, dtype, splits to try): MHA, GQA groups of 4; the interpreter is slow,
    # so few heads (the program structure does not depend on their number).
    cases = [
        (2, 2, torch.bfloat16, (1, None)),
        (4, 1, torch.bfloat16, (1, None, 7)),
        (4, 1, torch.float32, (None,)),
    ]
    for heads, kvh, dtype, split_choices in cases:
        g = torch.Generator().manual_seed(heads * 7 + kvh)
        k, v = _paged(num_blocks, bs, kvh, hd, dtype, g, device)
        width = -(-2048 // bs) + 2  # wider than any row needs, as a CUDA graph's static table is
        tables = torch.stack([torch.randperm(num_blocks, generator=g)[:width] for _ in lens])
        junk = tables.clone()  # entries past each row's context: an id far outside the cache
        for row, n in enumerate(((lens + bs - 1) // bs).tolist()):
            junk[row, n:] = 10**9
        q = torch.randn(len(lens), heads, hd, generator=g).to(dtype)
        q, tables, junk, lens_d = q.to(device), tables.to(device), junk.to(device), lens.to(device)
        ref = _decode_batch(q.float(), k.float(), v.float(), tables, lens_d, hd**-0.5)
        assert choose_num_splits(len(lens), kvh, width * bs) > 1  # the automatic choice splits here
        for splits in split_choices:
            out = triton_paged_decode(q, k, v, junk, lens_d, hd**-0.5, splits)
            assert out.dtype == dtype and out.shape == q.shape
            err = _row_rel(out, ref)
            assert err < _tol(dtype), (heads, kvh, dtype, splits, err)


def check_prefill(device: str) -> None:
    """Batched varlen prefill vs. `_prefill_one` per chunk: a 1-token chunk, a block multiple, a
    chunk after a cached prefix, an unaligned prefix, and a chunk ending near 2,048."""
    from isthmus.engine.kernels.prefill import triton_varlen_prefill
    from isthmus.engine.model.attention import AttentionMetadata, _prefill_one, prefill_tensors

    bs, hd, num_blocks = 16, 128, 200
    short = [(0, 1), (0, 4 * bs), (2 * bs, 5), (37, 70)]  # (cached prefix, new tokens)
    cases = [
        (2, 2, torch.bfloat16, [*short, (1990, 40)]),
        (4, 1, torch.bfloat16, [*short, (1990, 40)]),
        (4, 1, torch.float32, short),
    ]
    for heads, kvh, dtype, chunks in cases:
        g = torch.Generator().manual_seed(heads * 5 + kvh)
        k, v = _paged(num_blocks, bs, kvh, hd, dtype, g, device)
        perm = torch.randperm(num_blocks, generator=g)
        ids, used, starts = [], 0, [0]
        for pre, n in chunks:
            need = -(-(pre + n) // bs)
            ids.append(perm[used : used + need].to(device))
            used += need
            starts.append(starts[-1] + n)
        q = torch.randn(starts[-1], heads, hd, generator=g).to(dtype).to(device)
        meta = AttentionMetadata(
            slot_mapping=torch.zeros(starts[-1], dtype=torch.long, device=device), num_prefills=len(chunks),
            num_prefill_tokens=starts[-1], prefill_query_start_cpu=starts,
            prefill_start_pos_cpu=[c[0] for c in chunks], prefill_block_ids=ids,
            decode_block_tables=torch.zeros(0, 1, dtype=torch.long, device=device),
            decode_context_lens=torch.zeros(0, dtype=torch.long, device=device), block_size=bs,
        )
        t = prefill_tensors(meta, q.device)
        out = torch.full_like(q, float("nan"))
        triton_varlen_prefill(
            q, k, v, out, t.query_start, t.start_pos, t.block_tables, t.max_query_len, hd**-0.5
        )
        ref = torch.cat([
            _prefill_one(q[a:b].float(), k.float(), v.float(), ids[i], chunks[i][0], hd**-0.5)
            for i, (a, b) in enumerate(itertools.pairwise(starts))
        ])
        err = _row_rel(out, ref)
        assert err < _tol(dtype), (heads, kvh, dtype, err)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to one rounding step of the dtype (the GPU may reduce or fuse in another order)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    ulp = 2.0**-7 if out.dtype == torch.bfloat16 else 2.0**-20
    diff = (out.float() - ref.float()).abs()
    assert (diff <= ulp * ref.float().abs() + 1e-6).all(), diff.max().item()


def check_elementwise(device: str) -> None:
    """RMSNorm (with and without the residual), SiLU*up (fused and separate) and RoPE (default,
    linear and llama3 tables; q/k as slices of a fused qkv output) at the 7B's sizes."""
    from isthmus.engine.kernels import act, norm, rope
    from isthmus.engine.model.config import RopeConfig
    from isthmus.engine.model.rope import RotaryEmbedding

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(2, 3, 4096, generator=g).to(dtype).to(device)
        r = torch.randn(2, 3, 4096, generator=g).to(dtype).to(device)
        w = (1 + 0.1 * torch.randn(4096, generator=g)).to(dtype).to(device)
        out, total = norm.triton_rms_norm(x, w, 1e-6, r)
        assert torch.equal(total, x + r)
        _close(out, norm.portable_rms_norm(x + r, w, 1e-6))
        _close(norm.triton_rms_norm(x, w, 1e-5)[0], norm.portable_rms_norm(x, w, 1e-5))

        gate_up = torch.randn(3, 2 * 11008, generator=g).to(dtype).to(device)
        ref = act.portable_silu_mul(gate_up)
        _close(act.triton_silu_mul(gate_up), ref)
        _close(act.triton_silu_mul(gate_up[:, :11008].contiguous(), gate_up[:, 11008:].contiguous()), ref)

        heads, kvh, hd, n = 32, 8, 128, 5
        for cfg in (RopeConfig(), RopeConfig(theta=1e5, type="linear", factor=2.0),
                    RopeConfig(theta=5e5, type="llama3", factor=8.0, original_max_position_embeddings=256)):
            table = RotaryEmbedding(cfg, hd, 4096).cos_sin.to(device)
            qkv = torch.randn(n, (heads + 2 * kvh) * hd, generator=g).to(dtype).to(device)
            q = qkv[:, : heads * hd].view(n, heads, hd)
            k = qkv[:, heads * hd : (heads + kvh) * hd].view(n, kvh, hd)
            pos = torch.tensor([0, 1, 17, 2047, 4095], device=device)
            ref_q, ref_k = rope.portable_rope(q, k, table, pos)
            v_before = qkv[:, (heads + kvh) * hd :].clone()
            rope.triton_rope_(q, k, table, pos)
            _close(q, ref_q)
            _close(k, ref_k)
            assert torch.equal(qkv[:, (heads + kvh) * hd :], v_before)  # v untouched


def check_nf4(device: str) -> None:
    """The nf4 kernel vs. bitsandbytes' dequantize then a float32 matmul: 7B input size 4096,
    nested (double-quant) and plain absmax, 1, 4 and 8 rows, with and without bias."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from isthmus.engine.kernels.nf4 import triton_nf4_linear

    g = torch.Generator().manual_seed(0)
    for nested in (True, False):
        w = torch.randn(16, 4096, generator=g).to(torch.bfloat16)
        p = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=nested).to(device)
        deq = bnbf.dequantize_4bit(p.data, p.quant_state).float()  # the reference weights, bf16 values
        assert deq.shape == (16, 4096)
        for rows, with_bias in ((1, False), (4, True), (8, False))[:: 1 if nested else 2]:
            x = torch.randn(rows, 4096, generator=g).to(torch.bfloat16).to(device)
            bias = torch.randn(16, generator=g).to(torch.bfloat16).to(device) if with_bias else None
            ref = torch.nn.functional.linear(x.float(), deq, bias.float() if bias is not None else None)
            out = triton_nf4_linear(x, p, bias)
            assert out.dtype == torch.bfloat16 and out.shape == (rows, 16)
            err = _row_rel(out, ref)
            assert err < 1e-2, (nested, rows, with_bias, err)  # bf16 output rounding only
