"""bitsandbytes quantization as a linear rewrite: nf4 (4-bit NormalFloat) and int8.

Each projection of the decoder layers becomes a bitsandbytes module built on `meta`; its weight
is quantized the moment it is read from the checkpoint (`load_from_slice`), so at most one layer's
full-precision weight is alive at a time. Embeddings, norms and the LM head stay unquantized.
int8 is bitsandbytes' Linear8bitLt with int8 weights (`has_fp16_weights=False`) and, by default,
no outlier decomposition (threshold 0): the fastest int8 mode at large batch (see ANCHORS.md).
On CUDA, nf4 calls with few rows (decode) go to the Triton GEMV in `engine/kernels/nf4.py`, which
reads bitsandbytes' packed weights and absmax as stored; larger batches stay on bitsandbytes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from isthmus.engine.model.checkpoint import CheckpointError, TensorSlice
from isthmus.engine.model.rewrite import LinearFactory, rewrite_linears
from torch import nn

QUANTIZATIONS = ("nf4", "int8")


class UnsupportedQuantizationError(ValueError):
    pass


class _DropInt8CastNotice(logging.Filter):
    """bitsandbytes logs "inputs will be cast from ... to float16" on *every* int8 matmul with
    bf16/fp32 inputs (hundreds of lines per eager step). The cast is expected here: drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


def _bnb() -> Any:
    import bitsandbytes

    notices = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNotice) for f in notices.filters):
        notices.addFilter(_DropInt8CastNotice())
    return bitsandbytes


def _check_shape(module: nn.Module, tensor: TensorSlice, expected: tuple[int, ...]) -> None:
    if tuple(tensor.get_shape()) != expected:
        raise CheckpointError(
            f"{tensor.file_name}: tensor {tensor.name!r} has shape {tensor.get_shape()}, "
            f"{type(module).__name__} expects {list(expected)}"
        )


def _load_bias(module: nn.Module, tensor: TensorSlice, device: torch.device, dtype: torch.dtype) -> None:
    _check_shape(module, tensor, (module.out_features,))  # type: ignore[arg-type]
    module.bias = nn.Parameter(tensor.read().to(dtype).to(device), requires_grad=False)


def make_nf4_linear(linear: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
    bnb = _bnb()

    class NF4Linear(bnb.nn.Linear4bit):  # type: ignore[misc, name-defined]
        """bitsandbytes Linear4bit (nf4) that quantizes its weight as it is loaded."""

        def load_from_slice(
            self, param_name: str, tensor: TensorSlice, *, device: torch.device, dtype: torch.dtype
        ) -> None:
            if param_name == "bias":
                _load_bias(self, tensor, device, dtype)
                return
            _check_shape(self, tensor, (self.out_features, self.in_features))
            weight = tensor.read().to(dtype)
            param = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", module=self)
            self.weight = param.to(device)  # .to() quantizes

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from isthmus.engine.kernels import nf4 as nf4_kernel

            if nf4_kernel.supports(x, self.weight):
                bias = None if self.bias is None else self.bias.to(x.dtype)
                return nf4_kernel.triton_nf4_linear(x, self.weight, bias)  # type: ignore[no-any-return]
            return super().forward(x)  # type: ignore[no-any-return]

    module = NF4Linear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        quant_type="nf4",
        device="meta",
    )
    return module.eval()


def make_int8_linear(linear: nn.Linear, threshold: float = 0.0) -> nn.Module:
    bnb = _bnb()

    class Int8Linear(bnb.nn.Linear8bitLt):  # type: ignore[misc, name-defined]
        """bitsandbytes Linear8bitLt with int8 weights, quantized as it is loaded."""

        def load_from_slice(
            self, param_name: str, tensor: TensorSlice, *, device: torch.device, dtype: torch.dtype
        ) -> None:
            if param_name == "bias":
                _load_bias(self, tensor, device, dtype)
                return
            _check_shape(self, tensor, (self.out_features, self.in_features))
            # Quantization starts from fp16 inside bitsandbytes; bf16/fp32 are converted there.
            weight = tensor.read().to(dtype)
            param = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            self.weight = param.to(device)  # .to() quantizes row-wise to int8 (+ scales in .SCB)

    module = Int8Linear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=threshold,
        device="meta",
    )
    return module.eval()


def quantization_factory(
    method: str, compute_dtype: torch.dtype, *, int8_threshold: float = 0.0
) -> LinearFactory:
    """A `rewrite_linears` factory for `method` ("nf4" or "int8")."""
    if method == "nf4":
        return lambda _name, linear: make_nf4_linear(linear, compute_dtype)
    if method == "int8":
        return lambda _name, linear: make_int8_linear(linear, int8_threshold)
    raise UnsupportedQuantizationError(f"quantization must be one of {QUANTIZATIONS} or None, got {method!r}")


def quantize_linears(model: nn.Module, method: str, compute_dtype: torch.dtype) -> list[str]:
    """Rewrite the model's projections (not `lm_head`) to `method`; returns the replaced names."""
    return rewrite_linears(model, quantization_factory(method, compute_dtype))
