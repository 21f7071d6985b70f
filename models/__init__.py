"""The trained default checkpoints shipped with isthmus, and the code that trains them.

`edge-default/` and `center-default/` are package data: found beside this file whether isthmus
is an editable install or a wheel. `train_tiny.py` rewrites them (see their README.md cards).
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
EDGE_DEFAULT = MODELS_DIR / "edge-default"
CENTER_DEFAULT = MODELS_DIR / "center-default"


def default_model_path(which: str) -> Path:
    """The shipped default checkpoint folder for `which` ("edge" or "center")."""
    if which not in ("edge", "center"):
        raise ValueError(f"which must be 'edge' or 'center', got {which!r}")
    return EDGE_DEFAULT if which == "edge" else CENTER_DEFAULT
