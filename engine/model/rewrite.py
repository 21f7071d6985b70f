"""Rewrites of the vanilla model's linears, applied on the `meta` device before loading.

A rewrite replaces `nn.Linear` children with other modules (quantized, tensor-parallel, ...). A
replacement that needs to see its weights as they are read implements `load_from_slice`: the
loader then hands it the checkpoint tensor as a lazy slice (`engine/model/checkpoint.py` `TensorSlice`,
the same interface as safetensors' `get_slice`), so a tensor-parallel shard reads only its rows or
columns and a quantized linear quantizes as soon as its weight arrives. Modules without it get the
whole tensor, converted to the model dtype, assigned in place of the meta parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from isthmus.engine.model.checkpoint import CheckpointError, TensorSlice
from torch import nn

# (dotted module name, the linear it would replace) -> replacement, or None to keep it
LinearFactory = Callable[[str, nn.Linear], nn.Module | None]


@runtime_checkable
class SliceLoadable(Protocol):
    """A module that loads its own parameters from checkpoint slices."""

    def load_from_slice(
        self, param_name: str, tensor: TensorSlice, *, device: torch.device, dtype: torch.dtype
    ) -> None: ...


def rewrite_linears(
    model: nn.Module, factory: LinearFactory, *, skip: tuple[str, ...] = ("lm_head",)
) -> list[str]:
    """Replace every plain `nn.Linear` (except names in `skip`) by what `factory` returns.

    Returns the dotted names of the replaced modules.
    """
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not nn.Linear or full in skip:
                continue
            new = factory(full, child)
            if new is not None:
                setattr(parent, child_name, new)
                replaced.append(full)
    return replaced


def load_plain(
    module: nn.Module, param_name: str, tensor: TensorSlice, *, device: torch.device, dtype: torch.dtype
) -> None:
    """Assign the whole checkpoint tensor (floats converted to `dtype`) as `module.<param_name>`."""
    current = module._parameters[param_name]
    if current is not None and tuple(current.shape) != tuple(tensor.get_shape()):
        raise CheckpointError(
            f"{tensor.file_name}: tensor {tensor.name!r} has shape {tensor.get_shape()}, "
            f"the model expects {list(current.shape)}"
        )
    value = tensor.read()
    if value.is_floating_point():
        value = value.to(dtype)
    module._parameters[param_name] = nn.Parameter(value.to(device), requires_grad=False)
