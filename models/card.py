"""The model card (README.md) written beside each trained default checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LICENCE = (
    "The training text is CPython's documentation (`pydoc_data.topics`) and the docstrings of its "
    "standard library, both under the Python Software Foundation License Version 2 (PSF-2.0). The "
    "weights are released under the project's Apache-2.0 licence."
)


def _rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    s = facts["shape"]
    return [
        (
            "parameters",
            f"{facts['num_parameters']:,} (hidden {s['hidden_size']}, {s['num_layers']} layers, "
            f"{s['num_heads']} heads / {s['num_kv_heads']} KV heads, MLP {s['intermediate_size']}, "
            "tied embeddings)",
        ),
        (
            "tokenizer",
            f"byte-level BPE, {s['vocab_size']} tokens, trained on the same text, shared by both defaults",
        ),
        ("chat template", "DeepSeek-LLM style `User: ...` / `Assistant: ...<eos>` (trained with it)"),
        ("weights", "float16 safetensors; `sha256sums.txt` lists every file"),
        (
            "data",
            f"{facts['train_samples']} chat samples ({facts['train_tokens']:,} tokens): a question about "
            "a documentation section or a standard-library object, answered by one prose paragraph of it",
        ),
        (
            "training",
            f"{facts['steps']} steps x {facts['batch_size']} windows x {facts['seq_len']} tokens "
            f"({facts['tokens_seen']:,} tokens), AdamW, peak lr {facts['lr']}, seed {facts['seed']}, "
            f"{facts['train_cpu_seconds']} s of CPU time on one thread ({facts['train_wall_seconds']} s "
            f"wall on a shared 2-core host; Python {facts['python']}, torch {facts['torch']})",
        ),
        (
            "held-out perplexity",
            f"**{facts['held_out_perplexity']}** (NLL {facts['held_out_nll']} nats/token) on "
            f"{facts['held_out_samples']} samples ({facts['held_out_tokens']:,} tokens) from documents "
            "never trained on",
        ),
    ]


def card_text(facts: dict[str, Any]) -> str:
    """Markdown: what the model is, what it was trained on, how, and how well it does on held-out text."""
    table = "\n".join(f"| {k} | {v} |" for k, v in _rows(facts))
    tier = facts["name"].split("-")[0]
    return f"""# {facts["name"]}

A small LLaMA-architecture model trained by `models/train_tiny.py`: the default {tier} model of
`isthmus up`, `isthmus chat` and `isthmus demo`. It writes documentation-style English about
Python; it is there to demonstrate the network, not to be a useful assistant.

| | |
|---|---|
{table}

Reproduce: `.venv/bin/python -m isthmus.models.train_tiny` (trains both defaults and rewrites
this folder; the docstrings, and so the exact figures, follow the Python build).

## Licence

{LICENCE}
"""


def write_card(folder: Path, facts: dict[str, Any]) -> Path:
    path = folder / "README.md"
    path.write_text(card_text(facts), encoding="utf-8")
    return path
