"""The audit log: one JSON line per admin action and per refused authentication.

Each line holds the time (UTC, ISO 8601), the action (``auth.refused``, ``weights.sync``, ...), the
actor (a key name or token subject, never a secret), the source address, the outcome and a small
``details`` object saying what changed. Prompts and answers never go in: `audit_line` drops any
detail whose name says it may hold a secret or user content (``key``, ``token``, ``secret``,
``password``, ``prompt``, ``messages``, ...) and caps every string, so a careless caller cannot leak
one either.

`audit_line` is the sans-IO core (a record in, a line of text out, `now` passed in). `AuditLog`
writes lines to a sink: `FileSink` (append, rotated by size like ``logrotate``: ``audit.log`` ->
``audit.log.1`` -> ...) or `StreamSink` (stdout, for the journal). Callers use
``audit.record(action, actor=..., source=..., outcome=..., details={...})``.

It lives in `isthmus.engine` (stdlib only, no torch) because both tiers write it and edge and center
may not import each other; `isthmus.edge.audit` re-exports it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

MAX_STRING = 256  # characters kept of any string in a record
MAX_DETAILS = 32  # entries kept of a details object (and of a list inside it)
REDACTED = "[redacted]"
# detail names that may carry a credential or user content: their values never reach the log
_SECRET_NAME = re.compile(
    r"(secret|passw|token|api_?key|^key$|_key$|authorization|credential|bearer|jwt|prompt|message|"
    r"answer|content|text|completion)",
    re.IGNORECASE,
)
OUTCOMES = ("ok", "refused", "failed")


class AuditError(ValueError):
    """A record that cannot be written as asked (an unknown outcome, an empty action)."""


def _clean(value: object, depth: int = 0) -> object:
    """A JSON-safe, bounded copy of `value`: strings capped, containers shortened, secrets dropped."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "..."
    if depth >= 3:
        return "..."
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_DETAILS:
                out["..."] = f"{len(value) - MAX_DETAILS} more"
                break
            name = str(k)[:64]
            out[name] = REDACTED if _SECRET_NAME.search(name) else _clean(v, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        return [_clean(v, depth + 1) for v in items[:MAX_DETAILS]]
    return _clean(str(value), depth)


def audit_line(
    action: str,
    *,
    actor: str,
    source: str,
    outcome: str,
    details: Mapping[str, object] | None = None,
    now: float,
) -> str:
    """One audit record as a JSON line (with its newline); `now` is a Unix time in seconds."""
    if not action or not isinstance(action, str):
        raise AuditError("action: expected a non-empty string")
    if outcome not in OUTCOMES:
        raise AuditError(f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r}")
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record = {
        "time": stamp,
        "action": _clean(action),
        "actor": _clean(actor or ""),
        "source": _clean(source or ""),
        "outcome": outcome,
        "details": _clean(dict(details or {})),
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


class Sink(Protocol):
    def write(self, line: str) -> None: ...

    def close(self) -> None: ...


class StreamSink:
    """Lines to a text stream (default stdout: systemd puts them in the journal)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def write(self, line: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(line)
        stream.flush()

    def close(self) -> None:
        pass


class FileSink:
    """Appends lines to `path`; past `max_bytes` it rotates to ``path.1`` .. ``path.<backups>``."""

    def __init__(self, path: str | Path, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes: expected an integer >= 1")
        if backups < 0:
            raise ValueError("backups: expected an integer >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes  # bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write(self, line: str) -> None:
        data = line.encode("utf-8")
        fd = self._open()
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
            fd = self._open()
        os.write(fd, data)
        self._size += len(data)

    def _rotate(self) -> None:
        self.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AuditLog:
    """Writes audit records to a sink. Thread-safe; a failing sink is reported, never raised."""

    def __init__(self, sink: Sink, clock: Callable[[], float] = time.time) -> None:
        self.sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self.num_records = 0
        self.num_write_errors = 0

    @classmethod
    def open(cls, path: str, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> AuditLog:
        """``"-"`` for stdout, else a rotated file at `path`."""
        if path == "-":
            return cls(StreamSink())
        return cls(FileSink(path, max_bytes=max_bytes, backups=backups))

    def record(
        self,
        action: str,
        *,
        actor: str,
        source: str = "",
        outcome: str = "ok",
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Write one record (see `audit_line`); raises `AuditError` only for a malformed call."""
        now = self._clock()
        line = audit_line(action, actor=actor, source=source, outcome=outcome, details=details, now=now)
        with self._lock:
            try:
                self.sink.write(line)
            except OSError as exc:  # a full disk must not take the request path down with it
                self.num_write_errors += 1
                print(f"isthmus audit: cannot write the audit log ({exc})", file=sys.stderr)
                return
            self.num_records += 1

    def close(self) -> None:
        with self._lock:
            self.sink.close()
