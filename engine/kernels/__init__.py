"""Triton kernels for the CUDA path, each with a portable PyTorch fallback.

- `decode`: split-K paged decode attention ("flash-decoding") and its combine kernel.
- `prefill`: batched variable-length causal prefill attention over the paged cache.
- `norm`: RMSNorm, optionally fused with the residual add.
- `rope`: rotary embeddings applied to q and k in place from a cos/sin table.
- `act`: SiLU(gate) * up, from a fused [.., 2 * ffn] input or separate gate and up.
- `nf4`: GEMV / small-batch GEMM over bitsandbytes' packed nf4 weights.

The public functions without a `triton_` prefix dispatch: the Triton kernel on CUDA (when the
shapes are supported), the portable path elsewhere. The `triton_*` functions always launch the
kernel (tests run them on CPU through Triton's interpreter, TRITON_INTERPRET=1).

Wiring into the model (each a drop-in for the current line; the portable path is the same math):
- `norm.rms_norm(x, layer.weight, layer.eps)` for `RMSNorm.forward`; in a decoder layer
  `normed, h = norm.add_rms_norm(attn_out, h, post_norm.weight, eps)` for
  `h = h + attn_out; normed = post_norm(h)`.
- `rope.apply_rope_(q, k, rotary.cos_sin, positions)` for `q, k = rotary(positions, q, k)`;
  q and k may be views into the fused qkv output (rotated in place, v untouched).
- `act.silu_mul(gate_up_proj(x))` for `F.silu(gate) * up` of a fused [gate; up] projection.
- `nf4.nf4_linear(x.to(compute_dtype), module.weight, bias)` in an nf4 `Linear4bit`'s forward.
Attention needs no wiring: `attention.paged_attention` dispatches to `prefill` and `decode`.
"""
