"""Tensor parallelism as a rewrite of the vanilla model's linears (gpt-fast style).

Applied on the `meta` device before loading (`engine/model/rewrite.py`), so each rank only ever
allocates and reads its own shard:

- column-parallel (output features split): the packed ``qkv_proj`` (by heads: this rank's q
  heads, then its k heads, then its v heads) and ``gate_up_proj`` (this rank's slice of gate,
  then of up). No communication.
- row-parallel (input features split): ``o_proj`` and ``down_proj``; their partial products are
  summed with one all-reduce each, and the bias (if any) is added once, after the sum.
- attention heads: rank ``r`` of ``T`` holds query heads ``[r*H/T, (r+1)*H/T)``. With at least
  as many KV heads as ranks the KV heads are split the same way; with fewer (``T % KV == 0``)
  each rank holds the one KV head its query heads read, so every KV head is replicated on
  ``T / KV`` ranks. The `Attention` modules' ``num_heads`` / ``num_kv_heads`` are set to the
  per-rank counts: the model splits its packed qkv by them and the runner sizes its KV cache
  from them, so no model code changes.
- embedding and LM head: **replicated** on every rank (our choice). One vocabulary-sized matrix
  each per rank (about 1.6 GiB for DeepSeek-67B in bf16) buys a forward pass with exactly two
  all-reduces per layer and none for the logits, and lets rank 0 sample from full logits with the
  engine's own sampler.

Weights come from the checkpoint's lazy slices (`get_slice`-style): row shards read only their
rows; column shards are read a block of rows at a time and keep only their columns, so host
memory never holds more than the shard plus one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from isthmus.center.distributed import TPGroup
from isthmus.engine.model.config import ModelConfig
from isthmus.engine.model.rewrite import rewrite_linears
from torch import nn

COLUMN_READ_BYTES = 64 * 1024 * 1024  # bytes of full-width rows read at once for a column shard


class TPConfigError(ValueError):
    """The model cannot be split across this many ranks."""


@dataclass(frozen=True, slots=True)
class HeadShard:
    """One rank's attention heads."""

    num_heads: int  # query heads on this rank
    num_kv_heads: int  # key/value heads on this rank
    head_start: int  # first query head
    kv_head_start: int  # first key/value head


def check_tp_size(config: ModelConfig, world_size: int) -> None:
    """Raise `TPConfigError` unless heads and MLP split evenly over ``world_size`` ranks."""
    h, kv, t = config.num_heads, config.num_kv_heads, world_size
    if t < 1:
        raise TPConfigError(f"TP size must be >= 1, got {t}")
    if h % t:
        raise TPConfigError(f"TP size {t} does not divide the {h} attention heads")
    if kv >= t and kv % t:
        raise TPConfigError(f"TP size {t} does not divide the {kv} key/value heads")
    if kv < t and t % kv:
        raise TPConfigError(f"TP size {t} is not a multiple of the {kv} key/value heads (replication)")
    if config.intermediate_size % t:
        raise TPConfigError(f"TP size {t} does not divide intermediate_size {config.intermediate_size}")


def shard_heads(num_heads: int, num_kv_heads: int, rank: int, world_size: int) -> HeadShard:
    """Which query and KV heads rank ``rank`` holds (see the module docstring)."""
    local = num_heads // world_size
    if num_kv_heads >= world_size:
        local_kv = num_kv_heads // world_size
        kv_start = rank * local_kv
    else:  # fewer KV heads than ranks: replicate the one KV head this rank's queries use
        local_kv = 1
        kv_start = rank // (world_size // num_kv_heads)
    return HeadShard(local, local_kv, rank * local, kv_start)


def _read_columns(tensor: Any, start: int, stop: int) -> torch.Tensor:
    """Columns [start, stop) of a 2-D lazy slice, read in blocks of rows to bound host memory."""
    rows, cols = tensor.get_shape()
    itemsize = torch.empty((), dtype=_dtype_of(tensor)).element_size()
    block = max(1, COLUMN_READ_BYTES // max(1, cols * itemsize))
    parts = [tensor[r : min(r + block, rows)][:, start:stop].clone() for r in range(0, rows, block)]
    return torch.cat(parts, dim=0)  # [rows, stop - start]


def _dtype_of(tensor: Any) -> torch.dtype:
    dtype = getattr(tensor, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(tensor.get_dtype(),
                                                                                   torch.float32)


def _as_param(value: torch.Tensor, device: torch.device, dtype: torch.dtype) -> nn.Parameter:
    if value.is_floating_point():
        value = value.to(dtype)
    return nn.Parameter(value.to(device).contiguous(), requires_grad=False)


def _check_shape(tensor: Any, expected: tuple[int, ...]) -> None:
    shape = tuple(tensor.get_shape())
    if shape != expected:
        name = getattr(tensor, "name", "tensor")
        raise TPConfigError(f"{name}: checkpoint shape {list(shape)}, the model expects {list(expected)}")


class ColumnParallelLinear(nn.Module):
    """``y = x @ W[rows].T + b[rows]``: this rank's slice ``[row_start, row_stop)`` of the outputs.

    ``more_rows``: further ``(start, stop)`` row ranges appended after the first (a packed linear
    keeps its slice of every part: q rows, k rows, v rows of the fused weight).
    """

    def __init__(
        self, linear: nn.Linear, row_start: int, row_stop: int,
        more_rows: tuple[tuple[int, int], ...] = (),
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.full_out_features = linear.out_features
        self.ranges = ((row_start, row_stop), *more_rows)
        self.out_features = sum(b - a for a, b in self.ranges)
        self.row_start, self.row_stop = row_start, row_stop
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, device="meta"),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(self.out_features, device="meta"), requires_grad=False)
                     if linear.bias is not None else None)

    def load_from_slice(
        self, param_name: str, tensor: Any, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        if param_name == "weight":
            _check_shape(tensor, (self.full_out_features, self.in_features))
        else:
            _check_shape(tensor, (self.full_out_features,))
        parts = [tensor[a:b] for a, b in self.ranges]  # reads only these rows
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        setattr(self, param_name, _as_param(value, device, dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # [num_tokens, out_features (local)]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features} rows {list(self.ranges)}"


class RowParallelLinear(nn.Module):
    """``y = all_reduce(x_local @ W[:, cols].T) + b``: this rank's slice of the inputs."""

    def __init__(self, linear: nn.Linear, col_start: int, col_stop: int, group: TPGroup) -> None:
        super().__init__()
        self.full_in_features = linear.in_features
        self.in_features = col_stop - col_start
        self.out_features = linear.out_features
        self.col_start, self.col_stop = col_start, col_stop
        self.group = group
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, device="meta"),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(self.out_features, device="meta"), requires_grad=False)
                     if linear.bias is not None else None)

    def load_from_slice(
        self, param_name: str, tensor: Any, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        if param_name == "weight":
            _check_shape(tensor, (self.out_features, self.full_in_features))
            value = _read_columns(tensor, self.col_start, self.col_stop)
        else:  # the bias is replicated and added once, after the all-reduce
            _check_shape(tensor, (self.out_features,))
            value = tensor[:]
        setattr(self, param_name, _as_param(value, device, dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)  # [num_tokens, out_features], this rank's partial sum
        self.group.all_reduce_(y)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features} cols [{self.col_start}, {self.col_stop}), out={self.out_features}"


class TensorParallelRewrite:
    """A loader rewrite (``ModelRunner(options, rewrites=[TensorParallelRewrite(group)])``)."""

    def __init__(self, group: TPGroup) -> None:
        self.group = group

    def __call__(self, model: nn.Module) -> list[str]:
        config = cast(ModelConfig, model.config)  # nn.Module attributes: typed by torch version, or Any
        check_tp_size(config, self.group.world_size)
        rank, world = self.group.rank, self.group.world_size
        heads = shard_heads(config.num_heads, config.num_kv_heads, rank, world)
        hd = config.head_dim
        ffn = config.intermediate_size // world
        q_rows = (heads.head_start * hd, (heads.head_start + heads.num_heads) * hd)
        kv_rows = (heads.kv_head_start * hd, (heads.kv_head_start + heads.num_kv_heads) * hd)
        ffn_rows = (rank * ffn, (rank + 1) * ffn)

        q_full, kv_full = config.num_heads * hd, config.num_kv_heads * hd

        def shifted(rows: tuple[int, int], by: int) -> tuple[int, int]:
            return rows[0] + by, rows[1] + by

        def factory(name: str, linear: nn.Linear) -> nn.Module | None:
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "qkv_proj":  # packed [q; k; v]: this rank's rows of each part
                more = (shifted(kv_rows, q_full), shifted(kv_rows, q_full + kv_full))
                return ColumnParallelLinear(linear, *q_rows, more_rows=more)
            if leaf == "gate_up_proj":  # packed [gate; up]
                more_ffn = (shifted(ffn_rows, config.intermediate_size),)
                return ColumnParallelLinear(linear, *ffn_rows, more_rows=more_ffn)
            if leaf == "o_proj":
                return RowParallelLinear(linear, *q_rows, group=self.group)
            if leaf == "down_proj":
                return RowParallelLinear(linear, *ffn_rows, group=self.group)
            raise TPConfigError(f"no tensor-parallel plan for linear {name!r}")

        replaced = rewrite_linears(model, factory)  # lm_head is skipped: replicated
        for layer in model.model.layers:  # type: ignore[union-attr]
            layer.self_attn.num_heads = heads.num_heads
            layer.self_attn.num_kv_heads = heads.num_kv_heads
        return replaced
