"""Fused ("packed") projections: q/k/v in one linear and gate/up in one, assembled at load.

Checkpoints store `q_proj`, `k_proj`, `v_proj` (and `gate_proj`, `up_proj`) as separate tensors;
the model holds one `qkv_proj` ([q; k; v] rows) and one `gate_up_proj` ([gate; up] rows), so a
decode step runs two GEMMs where it ran five. A module that holds packed linears names them in
`packed_sizes`: ``{"qkv_proj": (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows))}``
with the *full* (checkpoint) row count of every part.

While streaming, the loader parks each part's lazy slice until all parts of one packed tensor
have arrived, then hands the module a `ConcatSlice`: a lazy slice over the concatenation, with
the same interface as `checkpoint.TensorSlice` (`get_shape`, `get_dtype`, row slicing, `read`).
So every loading path works unchanged on the fused tensor: a plain linear reads the whole
concatenation, a quantized one quantizes the fused weight (quantize after fusing), and a
tensor-parallel column shard reads, from each part, only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from isthmus.engine.model.checkpoint import CheckpointError
from torch import nn

PartSizes = tuple[tuple[str, int], ...]  # (checkpoint leaf name, full rows) per part, in order


class ConcatSlice:
    """A lazy slice over row-wise concatenated parts (each a `TensorSlice`-like object)."""

    def __init__(self, name: str, parts: list[Any]) -> None:
        first = parts[0]
        self.name, self.file_name = name, first.file_name
        self.dtype: torch.dtype = first.dtype
        self._dtype_str: str = first.get_dtype()
        self._parts = parts
        self._rows = [int(p.get_shape()[0]) for p in parts]
        rest = tuple(first.get_shape()[1:])
        for p in parts[1:]:
            if tuple(p.get_shape()[1:]) != rest:
                raise CheckpointError(
                    f"{p.file_name}: tensor {p.name!r} has shape {p.get_shape()}, "
                    f"its packed siblings have trailing shape {list(rest)}"
                )
        self.shape = (sum(self._rows), *rest)

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def get_dtype(self) -> str:
        return self._dtype_str

    def _rows_range(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the concatenation, reading only the parts they overlap."""
        pieces, offset = [], 0
        for part, n in zip(self._parts, self._rows, strict=True):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                pieces.append(part[lo - offset : hi - offset].to(self.dtype))
            offset += n
        if not pieces:
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)

    def __getitem__(self, index: Any) -> torch.Tensor:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(first, slice) and first.step in (None, 1):
            start, stop, _ = first.indices(self.shape[0])
            rows = self._rows_range(start, max(start, stop))
            return rows[(slice(None), *rest)] if rest else rows
        return self._rows_range(0, self.shape[0])[index]

    def read(self) -> torch.Tensor:
        """The whole concatenation."""
        return self[:]


@dataclass(slots=True)
class _Pending:
    fused_name: str  # e.g. model.layers.0.self_attn.qkv_proj.weight
    part_names: list[str]  # checkpoint names of the parts, in order
    sizes: list[int]  # full rows of each part
    slices: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slices = [None] * len(self.part_names)


class PackedAssembler:
    """Maps checkpoint part names to packed parameters and collects the parts while streaming."""

    def __init__(self, model: nn.Module) -> None:
        self._by_part: dict[str, tuple[_Pending, int]] = {}
        self._by_fused: dict[str, _Pending] = {}
        for module_name, module in model.named_modules():
            packed: dict[str, PartSizes] | None = getattr(module, "packed_sizes", None)
            if not packed:
                continue
            prefix = f"{module_name}." if module_name else ""
            for fused_leaf, parts in packed.items():
                fused = getattr(module, fused_leaf)
                for param_name in ("weight", "bias"):
                    if getattr(fused, param_name, None) is None:
                        continue
                    names = [f"{prefix}{leaf}.{param_name}" for leaf, _ in parts]
                    pending = _Pending(f"{prefix}{fused_leaf}.{param_name}", names, [n for _, n in parts])
                    self._by_fused[pending.fused_name] = pending
                    for i, name in enumerate(names):
                        self._by_part[name] = (pending, i)

    def is_part(self, name: str) -> bool:
        return name in self._by_part

    def add(self, name: str, tensor: Any) -> tuple[str, ConcatSlice] | None:
        """Park one part; returns (fused parameter name, its lazy slice) once all parts are in."""
        pending, index = self._by_part.pop(name)
        shape = tensor.get_shape()
        if not shape or int(shape[0]) != pending.sizes[index]:
            raise CheckpointError(
                f"{tensor.file_name}: tensor {name!r} has shape {shape}, "
                f"the model expects {pending.sizes[index]} rows"
            )
        pending.slices[index] = tensor
        if any(s is None for s in pending.slices):
            return None
        return pending.fused_name, ConcatSlice(pending.fused_name, pending.slices)

    def missing_parts(self, fused_name: str) -> list[str]:
        """Checkpoint names of the parts of ``fused_name`` never seen ([name] if not packed)."""
        pending = self._by_fused.get(fused_name)
        if pending is None:
            return [fused_name]
        return [n for n, s in zip(pending.part_names, pending.slices, strict=True) if s is None]
