"""Default checkpoints for `isthmus up` / `isthmus demo`, the routing knobs tuned to them, and where
the network's files live.

The defaults are the small trained models shipped in the package (`isthmus.models`:
`models/edge-default/`, `models/center-default/`, trained by `models/train_tiny.py` on CPython's
documentation). Both share one tokenizer, so their fingerprints match and a hand-over carries
token ids. Nothing is written or downloaded at start: the shipped folder is checked against its
`sha256sums.txt` and used in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = Path(os.environ.get("ISTHMUS_CACHE_DIR", "~/.cache/isthmus")).expanduser()
STATE_FILE = "up.json"  # written by `isthmus up`, read by `isthmus chat`

# Routing knobs measured on the trained default edge model (nf4, greedy, the demo's presence and
# frequency penalties): `python -m isthmus.cli.signals` prints the figures for the demo's prompts and
# tests/cli/test_demo_margins.py keeps the margins below true.
# Prompt perplexity: mean NLL of the chat-templated prompt (nats/token). Documentation questions
# measure 0.7-3.1 (the demo's edge prompts 1.75 and 2.2, its hand-over prompt 3.8); chit-chat and
# questions far from the docs 3.4-6.7. At or below LOW the after-prefill reconsideration adds
# nothing, so the demo's edge prompts stay >= 0.7 nats clear of it (tested with 0.5).
PERPLEXITY_LOW_NATS = 4.5
PERPLEXITY_HIGH_NATS = 8.0
# Confidence monitor: (window tokens, mean-entropy threshold nats, max checked tokens): the mean
# entropy of the first four answer tokens decides. Measured means: the demo's edge prompts 4.4
# and 4.6, its hand-over prompt ("What is the capital of France?") 5.95; other documentation
# questions 4.3-5.8 (a few, e.g. "What is the json module?" at 5.5, are handed over too).
# The demo's hand-over relies on >= 0.65 nats either side of 5.25 (tested with 0.5).
CONFIDENCE: tuple[int, float, int] = (4, 5.25, 4)


class DefaultModelError(RuntimeError):
    """The shipped default checkpoint is missing or does not match its manifest."""


def is_checkpoint(path: Path) -> bool:
    """A folder with config.json, weights and tokenizer.json."""
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def default_model_path(which: str) -> Path:
    """The shipped default checkpoint folder for `which` ("edge" or "center")."""
    from isthmus.models import default_model_path as shipped

    return shipped(which)


def ensure_default_model(cache_dir: Path, which: str, progress: Callable[[str], None]) -> Path:
    """The shipped default `which` ("edge" or "center") checkpoint, verified against its manifest.

    `cache_dir` is unused (the weights ship with the package); the argument stays for callers.
    """
    del cache_dir
    from isthmus.engine.model.checkpoint import ChecksumError, verify_checksums

    path = default_model_path(which)
    if not is_checkpoint(path):
        raise DefaultModelError(
            f"the default {which} model is missing from {path}; reinstall isthmus, or retrain it with "
            "`python -m isthmus.models.train_tiny`"
        )
    try:
        verify_checksums(path)
    except ChecksumError as exc:
        raise DefaultModelError(
            f"the default {which} model in {path} does not match its sha256sums.txt ({exc}); "
            "restore it with `git checkout -- models/` or reinstall isthmus"
        ) from exc
    progress(f"using the default {which} model {path} (trained; see its README.md)")
    return path


def read_state(cache_dir: Path) -> dict[str, Any] | None:
    """The running `isthmus up`'s state (addresses, CA path), or None when there is none."""
    try:
        data = json.loads((cache_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
