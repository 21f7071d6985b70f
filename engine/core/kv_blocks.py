"""KV blocks that travel with a migrating request (pure Python, no torch).

A replica exporting a request can ship its KV cache so the target need not recompute it. The
payload is token-major (`LAYOUT`): positions ``[0, num_tokens)`` of every layer, K and V, as raw
bytes of the cache's dtype, so sender and receiver may use different block sizes. The receiver
uses it only when `check_payload` finds it matches its own cache (`KVSpec`): same model
fingerprint, dtype, layer count, KV heads, head size and tensor-parallel size, and exactly the
positions the resumed sequence needs (all but its last token, which the first step computes).

The scheduler admits a sequence that brought a payload with every position but the last
already "computed", and puts a `KVImport` in that step's plan; the runner writes the bytes into
the sequence's fresh blocks before the forward pass reads them (`SchedulePlan.kv_imports`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

LAYOUT = "layer,kv,token,head,dim"  # the order of the elements in `KVPayload.data`
DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2}  # bytes per element


class KVMismatch(ValueError):
    """A KV payload that does not fit this engine's cache (other model, dtype, shape, length)."""


@dataclass(frozen=True, slots=True)
class KVSpec:
    """What a KV cache's contents depend on, and its shape per token (one rank's shard)."""

    fingerprint: str  # the model's weights, config, dtype and quantization (see kv_transfer)
    dtype: str  # a key of DTYPE_SIZES
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int  # the sender's; informative (the payload is token-major)
    tp_size: int = 1
    layout: str = LAYOUT

    @property
    def bytes_per_token(self) -> int:
        """Bytes one position takes across all layers, K and V."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_SIZES.get(self.dtype, 0)


@dataclass(frozen=True, slots=True)
class KVPayload:
    """The KV of positions ``[0, num_tokens)`` of one sequence, laid out as ``spec.layout``."""

    spec: KVSpec
    num_tokens: int
    data: bytes

    @property
    def num_bytes(self) -> int:
        return len(self.data)


@dataclass(slots=True)
class KVImport:
    """A step's instruction to the runner: write ``payload`` into ``block_table`` first."""

    seq_id: int
    block_table: list[int]  # covers at least payload.num_tokens positions
    payload: KVPayload


def check_payload(own: KVSpec, payload: KVPayload, num_tokens: int) -> None:
    """Raise `KVMismatch` unless ``payload`` can be written into a cache of ``own``'s kind as
    positions ``[0, num_tokens)``. The block size may differ (the payload is token-major)."""
    check_spec(own, payload.spec, payload.num_tokens, num_tokens, payload.num_bytes)


def check_spec(own: KVSpec, got: KVSpec, got_tokens: int, num_tokens: int, num_bytes: int) -> None:
    """`check_payload` on a payload's description alone (``got_tokens`` positions in ``num_bytes``):
    a replica checks KV held elsewhere this way before fetching it, and again once it has it."""
    for name in ("fingerprint", "dtype", "layout", "num_layers", "num_kv_heads", "head_dim", "tp_size"):
        if getattr(got, name) != getattr(own, name):
            raise KVMismatch(f"kv.{name}: {getattr(got, name)!r} does not match this engine's "
                             f"{getattr(own, name)!r}")
    if own.dtype not in DTYPE_SIZES:
        raise KVMismatch(f"kv.dtype: {own.dtype!r} cannot be imported")
    if got_tokens != num_tokens:
        raise KVMismatch(f"kv.num_tokens: {got_tokens}, the resumed sequence needs {num_tokens}")
    expected = num_tokens * own.bytes_per_token
    if num_bytes != expected:
        raise KVMismatch(f"kv.data: {num_bytes} bytes, {num_tokens} positions take {expected}")


def usable_payload(
    own: KVSpec | None, payload: KVPayload | None, num_tokens: int, request_id: str = ""
) -> KVPayload | None:
    """``payload`` when it can be imported as positions ``[0, num_tokens)``, else None (logged):
    the request then recomputes its cache from its token ids, as a token migration does."""
    if payload is None:
        return None
    why = "this engine cannot import KV blocks (tensor-parallel or foreign runner)"
    if own is not None:
        try:
            check_payload(own, payload, num_tokens)
            return payload
        except KVMismatch as exc:
            why = str(exc)
    log.warning("request %s: KV payload not used, recomputing its cache instead: %s", request_id, why)
    return None
