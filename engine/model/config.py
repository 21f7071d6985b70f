"""Model configuration read from a Hugging Face `config.json` (LLaMA and Qwen2 families).

Only what the one model definition in `engine/model/causal_lm.py` implements is accepted; anything else is
refused with `UnsupportedModelError` naming the offending field, rather than silently running a
different model than the checkpoint describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
ROPE_TYPES = ("default", "linear", "llama3")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


class UnsupportedModelError(ValueError):
    """The checkpoint asks for an architecture or option this engine does not implement."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"unsupported model config field {field_name!r}: {message}")
        self.field = field_name


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """Rotary embedding settings; `type` is "default", "linear" or "llama3"."""

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The architecture hyper-parameters the model definition needs."""

    architecture: str  # "LlamaForCausalLM" | "Qwen2ForCausalLM"
    model_type: str  # "llama" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig = field(default_factory=RopeConfig)
    qkv_bias: bool = False  # Qwen2: always; LLaMA: attention_bias
    o_bias: bool = False  # LLaMA attention_bias also biases o_proj
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "float32"  # the dtype the checkpoint's weights were saved in

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelConfig:
        """Read `<path>/config.json` (or a config.json path)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no config.json at {p}") from exc
        except json.JSONDecodeError as exc:
            raise UnsupportedModelError("config.json", f"not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        archs = raw.get("architectures") or []
        if len(archs) != 1 or archs[0] not in ARCHITECTURES:
            raise UnsupportedModelError(
                "architectures", f"{archs!r}; supported: {sorted(ARCHITECTURES)}"
            )
        arch = archs[0]
        model_type = ARCHITECTURES[arch]
        if raw.get("model_type", model_type) != model_type:
            raise UnsupportedModelError("model_type", f"{raw.get('model_type')!r} does not match {arch}")
        if raw.get("quantization_config"):
            raise UnsupportedModelError("quantization_config", "pre-quantized checkpoints are not supported")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError("hidden_act", f"{act!r}; only 'silu'")
        if raw.get("mlp_bias", False):
            raise UnsupportedModelError("mlp_bias", "MLP biases are not supported")
        if model_type == "qwen2" and raw.get("use_sliding_window", False):
            raise UnsupportedModelError("use_sliding_window", "sliding-window attention is not supported")
        layer_types = raw.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise UnsupportedModelError("layer_types", "only full attention layers are supported")

        hidden = _int(raw, "hidden_size")
        num_heads = _int(raw, "num_attention_heads")
        num_kv_heads = _int(raw, "num_key_value_heads", num_heads)
        head_dim = raw.get("head_dim") or hidden // num_heads
        if num_heads % num_kv_heads:
            raise UnsupportedModelError(
                "num_key_value_heads", f"{num_kv_heads} does not divide num_attention_heads={num_heads}"
            )
        if head_dim % 2:
            raise UnsupportedModelError("head_dim", f"{head_dim} is odd; rotary needs an even head_dim")
        attention_bias = bool(raw.get("attention_bias", False))
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=arch,
            model_type=model_type,
            vocab_size=_int(raw, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_int(raw, "intermediate_size"),
            num_layers=_int(raw, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=_int(raw, "max_position_embeddings", 2048),
            rope=_rope(raw),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type == "llama" and attention_bias,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        )


def _int(raw: dict[str, Any], key: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UnsupportedModelError(key, f"must be a positive integer, got {value!r}")
    return value


def _rope(raw: dict[str, Any]) -> RopeConfig:
    """Rope settings from transformers-4 (`rope_theta` + `rope_scaling`) or -5 (`rope_parameters`)."""
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    source = "rope_scaling"
    if isinstance(params, dict) and scaling is None:
        scaling, source = params, "rope_parameters"
    theta = float((scaling or {}).get("rope_theta", raw.get("rope_theta", 10000.0)))
    if not scaling:
        return RopeConfig(theta=theta)
    if not isinstance(scaling, dict):
        raise UnsupportedModelError(source, f"expected an object, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(source, f"rope type {rope_type!r}; supported: {list(ROPE_TYPES)}")
    if rope_type == "default":
        return RopeConfig(theta=theta)
    factor = float(scaling.get("factor", 0.0))
    if factor <= 0:
        raise UnsupportedModelError(source, f"factor must be > 0, got {scaling.get('factor')!r}")
    if rope_type == "linear":
        return RopeConfig(theta=theta, type="linear", factor=factor)
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise UnsupportedModelError(source, f"llama3 rope needs {missing}")
    return RopeConfig(
        theta=theta,
        type="llama3",
        factor=factor,
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )
