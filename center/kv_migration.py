"""KV-block transfer for live migration: which mode to use, and the KV between wire and engine.

A migrating request normally carries its ids only and the target recomputes its KV cache in one
prefill (tokens). With KV-block transfer the exporting replica also ships the cache itself
(`Continuation.kv`, token-major bytes of every layer's K and V for every position but the last);
the target writes it into fresh blocks and computes one token. Which one, decided on the
exporting replica by `choose_mode`, a pure function of the context length and the KV bytes per
token under a `KVPolicy` (the center's ``--migrate-kv`` and ``--migrate-kv-min-tokens``):

- tokens when the policy says so, or when this replica cannot export KV (tensor parallelism: each
  rank holds a head shard; those requests always migrate by tokens);
- inside the message when ``context * bytes_per_token`` is within ``policy.max_bytes`` and the
  room left in one frame (the edge relays the message over gRPC and every decoder caps a body at
  `limits.MAX_FRAME_SIZE`); else by ticket when the replica has a `KVTicketDesk` whose budget
  can hold it (the message carries a reference, the target fetches the bytes directly from this
  replica: center/kv_fetch.py); else tokens;
- otherwise KV when the policy says ``kv``, and with ``auto`` when the context has at least
  ``policy.min_tokens`` tokens (the measured break-even, docs/migration.md).

The target uses the KV only when it matches its own cache (`engine.core.kv_blocks`); a payload
from another model, dtype, shape or tensor-parallel layout is dropped there and the request
recomputes its cache from the ids, so a mismatch costs time, never the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from isthmus.center.kv_fetch import KVTicketDesk
from isthmus.engine.core.kv_blocks import KVPayload, KVSpec
from isthmus.protocol import GenerateRequest, Migrated, encode, limits, num_ids
from isthmus.protocol.messages import KVBlocks

log = logging.getLogger(__name__)

KVMode = Literal["auto", "tokens", "kv"]
KV_MODES: tuple[KVMode, ...] = ("auto", "tokens", "kv")
# Context tokens from which shipping the KV beats recomputing it (auto mode). Measured on the tiny
# CPU model (docs/migration.md): at 32-256 tokens the two modes were within run-to-run noise, from
# 512 on KV was clearly shorter (4-17x); 256 is where it stopped losing.
DEFAULT_KV_MIN_TOKENS = 256
FRAME_SLACK = 16 * 1024  # bytes kept free in the frame: the edge's resumed request adds a few fields


@dataclass(frozen=True, slots=True)
class KVPolicy:
    """How an exporting replica picks the migration mode (see the module docstring)."""

    mode: KVMode = "auto"
    min_tokens: int = DEFAULT_KV_MIN_TOKENS  # auto: ship the KV from this many context tokens on
    max_bytes: int = limits.MAX_KV_PAYLOAD_BYTES  # never ship more KV than this inside the message

    def __post_init__(self) -> None:
        if self.mode not in KV_MODES:
            raise ValueError(f"mode must be one of {KV_MODES}, got {self.mode!r}")
        if self.min_tokens < 1 or self.max_bytes < 0:
            raise ValueError("min_tokens must be >= 1 and max_bytes >= 0")


def choose_mode(num_tokens: int, bytes_per_token: int, policy: KVPolicy,
                room_bytes: int = limits.MAX_KV_PAYLOAD_BYTES,
                inline: bool = True) -> Literal["tokens", "kv"]:
    """"kv" or "tokens" for a request whose KV covers ``num_tokens`` positions.

    ``bytes_per_token``: the cache's bytes per position (0: this replica cannot export KV);
    ``room_bytes``: what the message has room for besides its other fields (``inline``, capped
    by ``policy.max_bytes`` too), or what the ticket store can still hold (``inline=False``).
    """
    if policy.mode == "tokens" or bytes_per_token <= 0 or num_tokens < 1:
        return "tokens"
    cap = min(policy.max_bytes, room_bytes) if inline else room_bytes
    if num_tokens * bytes_per_token > cap:
        return "tokens"
    if policy.mode == "kv" or num_tokens >= policy.min_tokens:
        return "kv"
    return "tokens"


def with_kv(migrated: Migrated, engine: Any, engine_id: str, policy: KVPolicy,
            desk: KVTicketDesk | None = None) -> Migrated:
    """``migrated`` with its KV attached when `choose_mode` picks KV and the engine has it.

    ``engine`` is the `AsyncEngine` (its ``kv_spec`` / ``export_kv``; an engine without them, or
    whose request no longer holds the positions, leaves the message as it is: tokens). KV that
    does not fit the message goes by ticket when ``desk`` can hold it (center/kv_fetch.py): the
    message then carries `KVBlocks.remote`, and the target fetches the bytes from this replica.
    """
    spec: KVSpec | None = getattr(engine, "kv_spec", None)
    export = getattr(engine, "export_kv", None)
    if spec is None or export is None or policy.mode == "tokens":
        return migrated
    cont = migrated.continuation
    num_tokens = num_ids(migrated.prompt_ids) + num_ids(cont.token_ids) - 1  # the last one is computed
    ticket_room = desk.store.room_bytes() if desk is not None and desk.address else 0
    by_ticket = choose_mode(num_tokens, spec.bytes_per_token, policy, ticket_room, inline=False) == "kv"
    if not by_ticket and choose_mode(num_tokens, spec.bytes_per_token, policy) != "kv":
        return migrated
    room = limits.MAX_FRAME_SIZE - FRAME_SLACK - len(encode(migrated))  # encoded only when KV may go
    inline = choose_mode(num_tokens, spec.bytes_per_token, policy, room) == "kv"
    if not inline and not by_ticket:
        return migrated
    try:
        payload: KVPayload | None = export(engine_id, num_tokens)
    except Exception:  # e.g. out of host memory for the copy: the ids alone still migrate it
        log.exception("exporting the KV of %s failed; it migrates by tokens", migrated.id)
        return migrated
    if payload is None:
        return migrated
    kv = to_wire(payload)
    if not inline:
        remote = desk.offer(payload.data) if desk is not None else None
        if remote is None:
            return migrated
        kv = msgspec.structs.replace(kv, data=b"", remote=remote)
    return msgspec.structs.replace(migrated, continuation=msgspec.structs.replace(cont, kv=kv))


def to_wire(payload: KVPayload) -> KVBlocks:
    """The wire form of an engine's KV payload."""
    s = payload.spec
    return KVBlocks(model_fingerprint=s.fingerprint, dtype=s.dtype, layout=s.layout, num_layers=s.num_layers,
                    num_kv_heads=s.num_kv_heads, head_dim=s.head_dim, tp_size=s.tp_size,
                    block_size=s.block_size, num_tokens=payload.num_tokens, data=payload.data)


def from_wire(kv: KVBlocks | None) -> KVPayload | None:
    """The engine's form of a received ``Continuation.kv`` (checked against its cache on admission)."""
    if kv is None:
        return None
    spec = KVSpec(fingerprint=kv.model_fingerprint, dtype=kv.dtype, num_layers=kv.num_layers,
                  num_kv_heads=kv.num_kv_heads, head_dim=kv.head_dim, block_size=kv.block_size,
                  tp_size=kv.tp_size, layout=kv.layout)
    return KVPayload(spec=spec, num_tokens=kv.num_tokens, data=kv.data)


def kv_of(req: GenerateRequest) -> KVPayload | None:
    """The KV a migrated ``req`` brought (None for any other request, or a migration without)."""
    cont = req.continuation
    return from_wire(cont.kv) if cont is not None and cont.is_migration else None
