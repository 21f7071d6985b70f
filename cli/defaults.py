"""Default small checkpoints for `isthmus up` / `isthmus demo`, and where the network's files live.

Both defaults are random-weight LLaMA checkpoints written by `isthmus.engine.tiny` with the same
tiny BPE tokenizer (same vocab size), so their tokenizer fingerprints match and a hand-over
carries token ids. The center's model is larger and differently seeded, so the tiers' answers
differ. Written once into the cache folder; later runs reuse them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = Path(os.environ.get("ISTHMUS_CACHE_DIR", "~/.cache/isthmus")).expanduser()
STATE_FILE = "up.json"  # written by `isthmus up`, read by `isthmus chat`
MODELS_VERSION = 1  # bump when the default shapes change: a new folder is written

VOCAB_SIZE = 1024  # tokens, shared by both defaults (same tokenizer => same fingerprint)
EDGE_SHAPE: dict[str, Any] = {
    "arch": "llama",
    "seed": 1,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "vocab_size": VOCAB_SIZE,
}
CENTER_SHAPE: dict[str, Any] = {
    "arch": "llama",
    "seed": 2,
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 256,
    "vocab_size": VOCAB_SIZE,
}


def is_checkpoint(path: Path) -> bool:
    """A folder with config.json, weights and tokenizer.json."""
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def ensure_default_model(cache_dir: Path, which: str, progress: Callable[[str], None]) -> Path:
    """The default `which` ("edge" or "center") checkpoint in `cache_dir`, written on first use."""
    shape = EDGE_SHAPE if which == "edge" else CENTER_SHAPE
    path = cache_dir / "models" / f"tiny-{which}-v{MODELS_VERSION}"
    if is_checkpoint(path):
        progress(f"using the default {which} model {path}")
        return path
    from isthmus.engine.tiny import make_tiny_checkpoint

    hidden = shape["hidden_size"]
    progress(f"writing the default {which} model (random weights, hidden {hidden}) to {path} ...")
    kwargs = {k: v for k, v in shape.items() if k != "arch"}
    tmp = path.with_name(path.name + ".tmp")
    for stale in (tmp, path):  # a half-written folder from an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    make_tiny_checkpoint(tmp, shape["arch"], **kwargs)
    tmp.replace(path)
    return path


def read_state(cache_dir: Path) -> dict[str, Any] | None:
    """The running `isthmus up`'s state (addresses, CA path), or None when there is none."""
    try:
        data = json.loads((cache_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
