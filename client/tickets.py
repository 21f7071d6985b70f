"""TLS session tickets for 0-RTT resumption, kept in memory or in a file.

A ticket lets the next connection to the same edge resume the TLS session and send its first
request as QUIC early data (0-RTT): no handshake round trip before the request leaves. Tickets are
taken (used once, RFC 8446 section C.4) and every resumed connection receives fresh ones.
The file form holds resumption secrets: it is written with mode 0600.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from aioquic.tls import CipherSuite, SessionTicket

MAX_TICKETS_PER_KEY = 4  # tickets kept per edge: servers send one per connection


class TicketStore(Protocol):
    """Where a client keeps session tickets, keyed by edge (``"server_name@host:port"``)."""

    def take(self, key: str) -> SessionTicket | None:
        """Remove and return the newest valid ticket for `key`, or None."""
        ...

    def put(self, key: str, ticket: SessionTicket) -> None:
        """Keep a ticket received from the edge `key`."""
        ...


class MemoryTicketStore:
    """Tickets in memory; safe to share between clients and threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: dict[str, list[SessionTicket]] = {}

    def take(self, key: str) -> SessionTicket | None:
        with self._lock:
            tickets = self._tickets.get(key, [])
            while tickets:
                ticket = tickets.pop()
                if ticket.is_valid:
                    self._changed()
                    return ticket
            return None

    def put(self, key: str, ticket: SessionTicket) -> None:
        with self._lock:
            tickets = self._tickets.setdefault(key, [])
            tickets.append(ticket)
            del tickets[:-MAX_TICKETS_PER_KEY]
            self._changed()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(t) for t in self._tickets.values())

    def _changed(self) -> None:
        """Hook for subclasses, called with the lock held after every change."""


class FileTicketStore(MemoryTicketStore):
    """Tickets persisted to a JSON file (mode 0600), so they survive the process.

    An unreadable or corrupt file is treated as empty: a lost ticket only costs one round trip.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            raw = json.loads(self.path.read_text())
            self._tickets = {str(key): [_ticket_from_json(t) for t in items] for key, items in raw.items()}
        except (OSError, ValueError, KeyError, TypeError):
            self._tickets = {}

    def _changed(self) -> None:
        data = {k: [_ticket_to_json(t) for t in v] for k, v in self._tickets.items() if v}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp creates it with mode 0600
                json.dump(data, f)
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _ticket_to_json(t: SessionTicket) -> dict[str, Any]:
    return {
        "age_add": t.age_add,
        "cipher_suite": int(t.cipher_suite),
        "not_valid_after": t.not_valid_after.isoformat(),
        "not_valid_before": t.not_valid_before.isoformat(),
        "resumption_secret": _b64(t.resumption_secret),
        "server_name": t.server_name,
        "ticket": _b64(t.ticket),
        "max_early_data_size": t.max_early_data_size,
        "other_extensions": [[int(k), _b64(v)] for k, v in t.other_extensions],
    }


def _ticket_from_json(d: dict[str, Any]) -> SessionTicket:
    return SessionTicket(
        age_add=int(d["age_add"]),
        cipher_suite=CipherSuite(int(d["cipher_suite"])),
        not_valid_after=datetime.datetime.fromisoformat(d["not_valid_after"]),
        not_valid_before=datetime.datetime.fromisoformat(d["not_valid_before"]),
        resumption_secret=base64.b64decode(d["resumption_secret"]),
        server_name=str(d["server_name"]),
        ticket=base64.b64decode(d["ticket"]),
        max_early_data_size=d["max_early_data_size"],
        other_extensions=[(int(k), base64.b64decode(v)) for k, v in d["other_extensions"]],
    )
