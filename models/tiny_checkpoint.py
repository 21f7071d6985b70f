"""Write small (or 7B-shaped, for GPU benchmarks) random Hugging Face checkpoints.

The files are what `transformers` itself would save for LlamaForCausalLM / Qwen2ForCausalLM:
`config.json` in the transformers-4 layout the DeepSeek checkpoints ship (`rope_theta`,
`rope_scaling`, `torch_dtype`), `model.safetensors` or shards plus `model.safetensors.index.json`,
`generation_config.json`, and the tiny BPE tokenizer of `models/tiny_tokenizer.py`. Only torch and
safetensors are needed (transformers is a dev dependency used by the parity tests).

Weights are deterministic per (seed, tensor name), so a sharded and a single-file checkpoint of the
same seed hold identical tensors. Initialisation is scaled (std 1/sqrt(fan_in) for projections,
std 1 embeddings, LM head with logits of std ~3) rather than the usual 0.02 so that a random model
still gives spread-out logits and greedy output is not one repeated token.

Tensors are generated and written shard by shard, so host memory stays near one shard: a
7B-shaped checkpoint (`make_7b_shaped_checkpoint`) can be written on a modest host.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from isthmus.engine.model.checkpoint import INDEX_FILE, SINGLE_FILE, write_checksums
from safetensors.torch import save_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRANSFORMERS_VERSION = "4.46.0"  # the config.json layout written (what DeepSeek checkpoints ship)


def make_tiny_checkpoint(
    path: str | Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 1024,
    rope_scaling: dict[str, Any] | None = None,
    rope_theta: float | None = None,
    tie_word_embeddings: bool | None = None,
    max_shard_size: int | None = None,
    dtype: str = "float32",
    max_position_embeddings: int = 2048,
    tokenizer_vocab_size: int | None = None,
    write_manifest: bool = False,
    device: str = "cpu",
) -> Path:
    """Write a random checkpoint of `arch` ("llama" or "qwen2") into the folder `path`; return it.

    `max_shard_size` (bytes) splits the weights into shards with an index. `tokenizer_vocab_size`
    defaults to `vocab_size`; a smaller tokenizer under a larger model vocab only suits benchmarks
    (ids past the tokenizer decode to nothing). `write_manifest` adds `sha256sums.txt`. `device`
    draws the random numbers there ("cuda": seconds instead of minutes for billions of them; the
    values differ from the CPU's for the same seed).
    """
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if tie_word_embeddings is None:
        tie_word_embeddings = arch == "qwen2"
    head_dim = hidden_size // num_heads
    _write_metadata(
        out, tokenizer_vocab_size or vocab_size, arch=arch, hidden_size=hidden_size,
        num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size, vocab_size=vocab_size, rope_scaling=rope_scaling,
        rope_theta=rope_theta if rope_theta is not None else 10000.0,
        tie_word_embeddings=tie_word_embeddings, dtype=dtype,
        max_position_embeddings=max_position_embeddings,
    )
    shapes = _tensor_shapes(
        arch, hidden_size, num_layers, num_heads * head_dim, num_kv_heads * head_dim,
        intermediate_size, vocab_size, tie_word_embeddings,
    )
    torch_dtype = DTYPES[dtype]
    files = _write_weights(out, shapes, seed, torch_dtype, max_shard_size, device)
    if write_manifest:
        write_checksums(out, files)
    return out


def _write_metadata(out: Path, tokenizer_vocab_size: int, *, arch: str, **config: Any) -> None:
    """The tokenizer files, config.json and generation_config.json of a tiny checkpoint."""
    from isthmus.models.tiny_tokenizer import BOS_TOKEN, EOS_TOKEN, write_tiny_tokenizer
    from tokenizers import Tokenizer

    write_tiny_tokenizer(out, tokenizer_vocab_size)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos_id, eos_id = tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)
    cfg = _config(arch, bos_id=bos_id, eos_id=eos_id, **config)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    generation = {
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "transformers_version": TRANSFORMERS_VERSION,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def make_7b_shaped_checkpoint(
    path: str | Path, *, seed: int = 0, num_layers: int = 30, device: str | None = None
) -> Path:
    """DeepSeek-LLM-7B's shape (6.9 B parameters, bf16, ~13.8 GB) with random weights, for GPU benchmarks.

    Written one ~2 GB shard at a time. The tokenizer is the tiny 1024-token one: the model's vocab
    (102400) is larger, which is harmless for throughput benchmarks only.
    """
    return make_tiny_checkpoint(
        path,
        "llama",
        seed=seed,
        hidden_size=4096,
        num_layers=num_layers,
        num_heads=32,
        num_kv_heads=32,
        intermediate_size=11008,
        vocab_size=102400,
        dtype="bfloat16",
        max_position_embeddings=4096,
        max_shard_size=2 * 1024**3,
        tokenizer_vocab_size=1024,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )


def _config(
    arch: str,
    *,
    rope_scaling: dict[str, Any] | None,
    rope_theta: float,
    dtype: str,
    bos_id: int,
    eos_id: int,
    **kw: Any,
) -> dict[str, Any]:
    common: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": kw["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": kw["intermediate_size"],
        "max_position_embeddings": kw["max_position_embeddings"],
        "num_attention_heads": kw["num_heads"],
        "num_hidden_layers": kw["num_layers"],
        "num_key_value_heads": kw["num_kv_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": rope_scaling,
        "rope_theta": rope_theta,
        "tie_word_embeddings": kw["tie_word_embeddings"],
        "torch_dtype": dtype,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": kw["vocab_size"],
    }
    if arch == "llama":
        common.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    else:
        common.update(
            {
                "max_window_layers": kw["num_layers"],
                "sliding_window": kw["max_position_embeddings"],
                "use_sliding_window": False,
            }
        )
    return dict(sorted(common.items()))


def _tensor_shapes(
    arch: str, hidden: int, num_layers: int, q_size: int, kv_size: int, ffn: int, vocab: int, tied: bool
) -> list[tuple[str, tuple[int, ...]]]:
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (q_size, hidden)),
            (p + "self_attn.k_proj.weight", (kv_size, hidden)),
            (p + "self_attn.v_proj.weight", (kv_size, hidden)),
        ]
        if arch == "qwen2":
            shapes += [
                (p + "self_attn.q_proj.bias", (q_size,)),
                (p + "self_attn.k_proj.bias", (kv_size,)),
                (p + "self_attn.v_proj.bias", (kv_size,)),
            ]
        shapes += [
            (p + "self_attn.o_proj.weight", (hidden, q_size)),
            (p + "mlp.gate_proj.weight", (ffn, hidden)),
            (p + "mlp.up_proj.weight", (ffn, hidden)),
            (p + "mlp.down_proj.weight", (hidden, ffn)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    shapes.append(("model.norm.weight", (hidden,)))
    if not tied:
        shapes.append(("lm_head.weight", (vocab, hidden)))
    return shapes


def _init(name: str, shape: tuple[int, ...], seed: int, tied: bool, device: str = "cpu") -> torch.Tensor:
    """Deterministic float32 tensor for (seed, name), drawn on `device`."""
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=gen, device=device)
    if name == "model.norm.weight" and tied:
        return 6.0 * (1.0 + 0.1 * x)  # the small tied embeddings (below) still give logits of std ~2
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * x
    if name.endswith(".bias"):
        return 0.1 * x
    if "embed_tokens" in name:
        # Small enough that the layers, not the input token's own embedding, dominate the residual
        # stream: with tied embeddings a large one makes the model repeat its input token.
        return x * (0.05 if tied else 1.0)
    fan_in = shape[-1]
    if name == "lm_head.weight":
        return x * (3.0 / math.sqrt(fan_in))
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return x * (0.5 / math.sqrt(fan_in))  # keeps the residual stream from growing layer by layer
    return x / math.sqrt(fan_in)


def _plan_shards(
    shapes: list[tuple[str, tuple[int, ...]]], itemsize: int, max_shard_size: int | None
) -> list[list[tuple[str, tuple[int, ...]]]]:
    if max_shard_size is None:
        return [shapes]
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _write_weights(
    out: Path,
    shapes: list[tuple[str, tuple[int, ...]]],
    seed: int,
    dtype: torch.dtype,
    max_shard_size: int | None,
    device: str = "cpu",
) -> list[str]:
    tied = not any(name == "lm_head.weight" for name, _ in shapes)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards = _plan_shards(shapes, itemsize, max_shard_size)
    for stale in [*out.glob("model*.safetensors"), out / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1 and max_shard_size is None:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    for fname, shard in zip(names, shards, strict=True):
        tensors = dict(_generate(shard, seed, dtype, tied, device))
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
        del tensors
    if names != [SINGLE_FILE]:
        total = sum(math.prod(s) * itemsize for _, s in shapes)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return [*names, INDEX_FILE]
    return names


def _generate(
    shard: list[tuple[str, tuple[int, ...]]], seed: int, dtype: torch.dtype, tied: bool, device: str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    for name, shape in shard:
        yield name, _init(name, shape, seed, tied, device).to(dtype).contiguous().cpu()
