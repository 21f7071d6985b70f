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
"""
