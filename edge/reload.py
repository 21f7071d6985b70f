"""Config hot reload, the sans-IO part: old config vs new config -> the changes, or a refusal.

`plan_reload(old, new)` walks both `EdgeConfig`s field by field. A difference under a field that can
change live (`LIVE_FIELDS`: router settings and model file, API keys and their limits, JWT, the
center pool and its weights, the allowlists, the admin token, the log level) becomes a `Change`; a
difference anywhere else (ports, TLS files, the model path, engine sizing, ...) is a refusal that
names the field: `plan_reload` raises `ReloadRefused` and nothing may be applied.

Change summaries never carry a secret: API keys are shown by name and limit, never by digest, and
any field whose name says it may hold a credential is shown as ``[changed]``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

# dotted field prefixes whose values the running node can swap (see `reload_apply.py`)
LIVE_FIELDS = (
    "router",
    "auth",
    "center.endpoints",
    "center.weights",
    "http.allow",
    "listen.allow",
    "admin.token_sha256",
    "log",
    "ab.candidate_endpoints",
    "ab.candidate_weights",
    "ab.percent",
    "ab.sticky",
    "ab.salt",
)
_SECRET = re.compile(r"(sha256|secret|token|passw|^key$|_key$|credential)", re.IGNORECASE)
MAX_SUMMARY = 120  # characters of one value in a change summary


class ReloadRefused(ValueError):
    """The new config cannot be applied; `errors` name each offending field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs: its dotted name and short, secret-free summaries of both values."""

    field: str
    old: str
    new: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "old": self.old, "new": self.new}


def is_live(field_name: str) -> bool:
    """True when `field_name` (dotted) may change without a restart."""
    return any(field_name == p or field_name.startswith(p + ".") for p in LIVE_FIELDS)


def plan_reload(old: Any, new: Any) -> list[Change]:
    """The changes from config `old` to `new` (both `EdgeConfig`); [] when nothing differs.

    Raises `ReloadRefused` naming every differing field that cannot change live.
    """
    diffs: list[tuple[str, Any, Any]] = []
    _walk("", old, new, diffs)
    refused = [
        f"{name}: cannot change while running (restart the edge)" for name, _, _ in diffs if not is_live(name)
    ]
    if refused:
        raise ReloadRefused(refused)
    return [Change(name, _summary(name, a), _summary(name, b)) for name, a, b in diffs]


def _walk(prefix: str, old: Any, new: Any, out: list[tuple[str, Any, Any]]) -> None:
    """Collect (dotted name, old, new) for every leaf that differs; lists are leaves."""
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        for f in dataclasses.fields(old):
            if not f.compare:  # e.g. EdgeConfig.source: where it was read from, not what it says
                continue
            name = f"{prefix}.{f.name}" if prefix else f.name
            _walk(name, getattr(old, f.name), getattr(new, f.name), out)
        return
    if old != new:
        out.append((prefix, old, new))


def _summary(name: str, value: Any) -> str:
    """A short, secret-free rendering of one value."""
    leaf = name.rsplit(".", 1)[-1]
    if name == "auth.keys":  # keys by name and limit: the digests stay out of logs and answers
        return ", ".join(
            f"{k.name or f'key{i}'}(max_concurrent={k.max_concurrent})" for i, k in enumerate(value)
        )
    if _SECRET.search(leaf):
        return "[set]" if value else "[unset]"
    text = repr(value)
    return text if len(text) <= MAX_SUMMARY else text[:MAX_SUMMARY] + "..."
