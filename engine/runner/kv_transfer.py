"""Copying a sequence's KV out of the paged cache as bytes, and writing such bytes back in.

The bytes are token-major (`engine.core.kv_blocks.LAYOUT`: layer, K/V, token, head, dim) in the
cache's own dtype: a replica exporting a migrating request sends them, the target writes them
into fresh blocks of its own block size (`SchedulePlan.kv_imports`) and computes only the last
token. `model_fingerprint` says whether two caches hold comparable KV at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from isthmus.engine.core.kv_blocks import DTYPE_SIZES, LAYOUT, KVMismatch, KVPayload, KVSpec
from isthmus.engine.model.causal_lm import KVCaches

FINGERPRINT_SAMPLE = 64 * 1024  # bytes read from each end of each weights file (header + some weights)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32 (the `KVSpec.dtype` spelling)."""
    return str(dtype).removeprefix("torch.")


def model_fingerprint(model_dir: str | Path, dtype: torch.dtype, quantization: str | None) -> str:
    """A sha256 of what a model's KV depends on: config, weights, dtype and quantization.

    The weights are read in part (the first and last `FINGERPRINT_SAMPLE` bytes of each
    ``*.safetensors`` file, with its size) plus the whole ``sha256sums.txt`` manifest when there
    is one: cheap for a 67B checkpoint, and two checkpoints written with other weights differ.
    """
    folder = Path(model_dir)
    h = hashlib.sha256(f"isthmus-kv|{dtype_name(dtype)}|{quantization}".encode())
    for name in ("config.json", "sha256sums.txt"):
        path = folder / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            h.update(f.read(FINGERPRINT_SAMPLE))
            f.seek(max(0, size - FINGERPRINT_SAMPLE))
            h.update(f.read(FINGERPRINT_SAMPLE))
    return h.hexdigest()


def _slots(block_table: list[int], num_tokens: int, block_size: int, device: torch.device) -> torch.Tensor:
    """Cache rows (block * block_size + offset) of positions ``[0, num_tokens)``."""
    needed = -(-num_tokens // block_size)
    if len(block_table) < needed:
        raise KVMismatch(f"block table has {len(block_table)} blocks, {num_tokens} positions need {needed}")
    blocks = torch.tensor(block_table[:needed], dtype=torch.long)
    rows = (blocks[:, None] * block_size + torch.arange(block_size)).reshape(-1)[:num_tokens]
    return rows.to(device)  # [num_tokens]


def export_kv(kv_caches: KVCaches, block_table: list[int], num_tokens: int, block_size: int) -> bytes:
    """Positions ``[0, num_tokens)`` of every layer's K and V, as `LAYOUT` bytes on the host."""
    k0 = kv_caches[0][0]
    slots = _slots(block_table, num_tokens, block_size, k0.device)
    heads, dim = k0.shape[2], k0.shape[3]
    parts = [cache.view(-1, heads, dim).index_select(0, slots) for layer in kv_caches for cache in layer]
    out = torch.stack(parts).cpu().contiguous()  # [num_layers * 2, num_tokens, heads, dim]
    return out.view(torch.uint8).numpy().tobytes()


def import_kv(kv_caches: KVCaches, block_table: list[int], payload: KVPayload, block_size: int) -> None:
    """Write ``payload`` (positions ``[0, payload.num_tokens)``) into the blocks of ``block_table``.

    Raises `KVMismatch` when its shape or dtype is not this cache's (the scheduler checks before;
    this is the runner's own guard, before anything is written).
    """
    k0 = kv_caches[0][0]
    heads, dim = k0.shape[2], k0.shape[3]
    spec, n = payload.spec, payload.num_tokens
    shape = (len(kv_caches) * 2, n, heads, dim)
    if (spec.num_layers, spec.num_kv_heads, spec.head_dim) != (len(kv_caches), heads, dim):
        raise KVMismatch(f"kv: {spec.num_layers} layers x {spec.num_kv_heads} heads x {spec.head_dim} "
                         "is not the cache's shape")
    if TORCH_DTYPES.get(spec.dtype) != k0.dtype or spec.layout != LAYOUT:
        raise KVMismatch(f"kv: dtype {spec.dtype} / layout {spec.layout} is not the cache's {k0.dtype}")
    if payload.num_bytes != n * spec.bytes_per_token:
        raise KVMismatch(f"kv.data: {payload.num_bytes} bytes, expected {n * spec.bytes_per_token}")
    slots = _slots(block_table, n, block_size, k0.device)
    raw = torch.frombuffer(bytearray(payload.data), dtype=torch.uint8)
    src = raw.view(k0.dtype).view(shape).to(k0.device)  # [num_layers * 2, num_tokens, heads, dim]
    for i, cache in enumerate(cache for layer in kv_caches for cache in layer):
        cache.view(-1, heads, dim).index_copy_(0, slots, src[i])


def cache_spec(
    fingerprint: str, dtype: torch.dtype, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int
) -> KVSpec | None:
    """The `KVSpec` of an unsharded cache, or None when its dtype cannot travel."""
    name = dtype_name(dtype)
    if name not in DTYPE_SIZES:
        return None
    return KVSpec(fingerprint=fingerprint, dtype=name, num_layers=num_layers, num_kv_heads=num_kv_heads,
                  head_dim=head_dim, block_size=block_size)
