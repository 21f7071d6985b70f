"""Options that shape one engine instance (model, memory, batching limits)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineOptions:
    """How to load the model and size the batch.

    KV memory: ``num_kv_blocks`` when set, else ``kv_cache_memory`` bytes when set, else
    ``kv_memory_fraction`` of the device's free memory (host RAM on CPU) after loading.
    """

    model: str  # path to a Hugging Face checkpoint folder
    dtype: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16", "float16"
    quantization: str | None = None  # None, "nf4" or "int8"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    verify_checksums: bool = False  # check a shipped sha256 manifest before loading
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None
    kv_cache_memory: int | None = None  # bytes
    kv_memory_fraction: float = 0.3
    max_num_seqs: int = 64  # running requests at most
    max_num_batched_tokens: int = 512  # tokens per step (prefill chunks + decodes)
    max_waiting: int = 1024  # queued requests at most; more are refused
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    use_cuda_graphs: bool = True  # decode steps on CUDA are captured for a set of batch sizes
    seed: int = 0  # seed for requests that give none
    enable_prefix_caching: bool = True  # reuse the KV of cached full blocks of a shared prefix
