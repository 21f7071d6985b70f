"""Build the model on `meta`, apply rewrites, then stream the checkpoint's tensors into it.

Tensors are read one at a time (`engine/model/checkpoint.py`), converted to the target dtype and placed
on the target device (quantized on the way by a quantization rewrite), so peak host memory stays
near the size of the loaded model plus one tensor, never the whole full-precision checkpoint.
Packed projections (`qkv_proj`, `gate_up_proj`, see `engine/model/packed.py`) are assembled from the
checkpoint's separate parts as they stream past: the parts stay lazy until the last one arrives,
so a packed weight costs one layer's q/k/v (or gate/up) of host memory at most.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from isthmus.engine.model.causal_lm import CausalLM
from isthmus.engine.model.checkpoint import CheckpointError, open_checkpoint, verify_checksums
from isthmus.engine.model.config import ModelConfig
from isthmus.engine.model.packed import PackedAssembler
from isthmus.engine.model.quant import quantize_linears
from isthmus.engine.model.rewrite import SliceLoadable, load_plain
from torch import nn

Rewrite = Callable[[nn.Module], object]  # e.g. a tensor-parallel rewrite of the linears
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved


def load_model(
    path: str | Path,
    config: ModelConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
    verify: bool = False,
    rewrites: Sequence[Rewrite] = (),
) -> CausalLM:
    """Load a checkpoint folder into a ready-to-run `CausalLM` (eval mode, no grads)."""
    folder = Path(path)
    device = torch.device(device)
    if config is None:
        config = ModelConfig.from_pretrained(folder)
    if verify:
        verify_checksums(folder)
    with torch.device("meta"):
        model = CausalLM(config)
    if quantization is not None:
        quantize_linears(model, quantization, dtype)
    for rewrite in rewrites:
        rewrite(model)

    targets = _parameter_targets(model)
    if config.tie_word_embeddings:
        targets.pop("lm_head.weight", None)
    packed = PackedAssembler(model)
    for name, tensor in open_checkpoint(folder):
        if name.endswith(IGNORED_SUFFIXES) or (config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        if packed.is_part(name):
            ready = packed.add(name, tensor)
            if ready is None:
                continue  # the other parts of this packed tensor are still to come
            name, tensor = ready
        target = targets.pop(name, None)
        if target is None:
            raise CheckpointError(f"{tensor.file_name}: unexpected tensor {name!r} for {config.architecture}")
        _load_one(target, tensor, device, dtype)
    if targets:
        missing = sorted(p for name in targets for p in packed.missing_parts(name))
        raise CheckpointError(f"checkpoint {folder} is missing tensors: {missing[:8]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb.materialize(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_one(
    target: tuple[nn.Module, str], tensor: Any, device: torch.device, dtype: torch.dtype
) -> None:
    module, param_name = target
    if isinstance(module, SliceLoadable):
        module.load_from_slice(param_name, tensor, device=device, dtype=dtype)
    else:
        load_plain(module, param_name, tensor, device=device, dtype=dtype)
    _return_freed_memory()


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()


def _return_freed_memory() -> None:
    """Hand the freed read/convert buffers of the last tensor back to the OS.

    glibc raises its mmap threshold after large frees, so later multi-MB buffers come from the
    heap and freed ones stay resident: without this, peak RSS while quantizing grows with the
    number of tensors read instead of staying near the quantized model plus one tensor.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _parameter_targets(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Checkpoint name -> (module, parameter name) for every parameter slot."""
    targets: dict[str, tuple[nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        for param_name in module._parameters:
            full = f"{module_name}.{param_name}" if module_name else param_name
            if module._parameters[param_name] is not None:
                targets[full] = (module, param_name)
    return targets
