"""Choosing between token and KV-block migration, and the KV between wire and engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from isthmus.center.kv_migration import (
    DEFAULT_KV_MIN_TOKENS,
    KVPolicy,
    choose_mode,
    from_wire,
    to_wire,
    with_kv,
)
from isthmus.engine.core.kv_blocks import KVPayload, KVSpec
from isthmus.protocol import Continuation, Migrated, SamplingOptions, decode, encode, limits, pack_ids

SPEC = KVSpec(fingerprint="ab" * 32, dtype="bfloat16", num_layers=3, num_kv_heads=2, head_dim=8,
              block_size=16)
PER_TOKEN = SPEC.bytes_per_token  # 192 bytes


@pytest.mark.parametrize(
    ("num_tokens", "policy", "room", "expected"),
    [
        (DEFAULT_KV_MIN_TOKENS - 1, KVPolicy(), 10**9, "tokens"),  # short: recomputing is as cheap
        (DEFAULT_KV_MIN_TOKENS, KVPolicy(), 10**9, "kv"),
        (10, KVPolicy(mode="kv"), 10**9, "kv"),
        (10_000, KVPolicy(mode="tokens"), 10**9, "tokens"),
        (1000, KVPolicy(min_tokens=1000), 10**9, "kv"),
        (999, KVPolicy(min_tokens=1000), 10**9, "tokens"),
        (1000, KVPolicy(mode="kv", max_bytes=1000 * PER_TOKEN), 10**9, "kv"),
        (1001, KVPolicy(mode="kv", max_bytes=1000 * PER_TOKEN), 10**9, "tokens"),  # over the cap
        (1000, KVPolicy(mode="kv"), 1000 * PER_TOKEN - 1, "tokens"),  # does not fit the frame
        (0, KVPolicy(mode="kv"), 10**9, "tokens"),
    ],
)
def test_choose_mode(num_tokens: int, policy: KVPolicy, room: int, expected: str) -> None:
    assert choose_mode(num_tokens, PER_TOKEN, policy, room) == expected


def test_a_replica_that_cannot_export_kv_always_migrates_by_tokens() -> None:
    assert choose_mode(10_000, 0, KVPolicy(mode="kv")) == "tokens"


@pytest.mark.parametrize("bad", [{"mode": "blocks"}, {"min_tokens": 0}, {"max_bytes": -1}])
def test_bad_policies_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KVPolicy(**bad)


def test_wire_round_trip() -> None:
    payload = KVPayload(SPEC, 3, b"\7" * (3 * PER_TOKEN))
    cont = Continuation(token_ids=pack_ids([4, 5]), tokenizer_fingerprint="t", is_migration=True,
                        kv=to_wire(payload))
    msg = Migrated(id="m", prompt_ids=pack_ids([1, 2]), sampling=SamplingOptions(seed=1), continuation=cont)
    back = decode(encode(msg))
    assert isinstance(back, Migrated) and from_wire(back.continuation.kv) == payload
    assert from_wire(None) is None


def test_an_old_peer_without_the_field_still_decodes() -> None:
    import msgpack

    cont = Continuation(token_ids=pack_ids([4]), tokenizer_fingerprint="t", is_migration=True)
    raw = msgpack.unpackb(encode(Migrated(id="m", prompt_ids=pack_ids([1]), sampling=SamplingOptions(),
                                          continuation=cont)))
    raw["continuation"].pop("kv", None)
    back = decode(msgpack.packb(raw))
    assert isinstance(back, Migrated) and back.continuation.kv is None


class _Engine:
    def __init__(self, spec: KVSpec | None) -> None:
        self.kv_spec = spec
        self.asked: list[tuple[str, int]] = []

    def export_kv(self, engine_id: str, num_tokens: int) -> KVPayload | None:
        self.asked.append((engine_id, num_tokens))
        return KVPayload(SPEC, num_tokens, b"\0" * (num_tokens * PER_TOKEN))


def _migrated(num_prompt: int, num_out: int) -> Migrated:
    cont = Continuation(token_ids=pack_ids([3] * num_out), tokenizer_fingerprint="t", is_migration=True)
    return Migrated(id="m", prompt_ids=pack_ids([1] * num_prompt), sampling=SamplingOptions(seed=1),
                    continuation=cont)


def test_with_kv_attaches_all_positions_but_the_last() -> None:
    engine = _Engine(SPEC)
    out = with_kv(_migrated(300, 5), engine, "e#1", KVPolicy())
    assert engine.asked == [("e#1", 304)]
    assert out.continuation.kv is not None and out.continuation.kv.num_tokens == 304
    assert len(encode(out)) <= limits.MAX_FRAME_SIZE


def test_with_kv_leaves_tokens_alone() -> None:
    short = _migrated(10, 2)
    assert with_kv(short, _Engine(SPEC), "e", KVPolicy()) is short  # auto, below the break-even
    assert with_kv(short, _Engine(None), "e", KVPolicy(mode="kv")) is short  # TP: cannot export
    huge = _migrated(limits.MAX_FRAME_SIZE // PER_TOKEN + 10, 1)
    engine = _Engine(SPEC)
    assert with_kv(huge, engine, "e", KVPolicy(mode="kv")) is huge and not engine.asked  # over a frame


def test_a_failed_kv_export_migrates_by_tokens() -> None:
    class _Failing(_Engine):
        def export_kv(self, engine_id: str, num_tokens: int) -> KVPayload | None:
            raise MemoryError("no room for the copy")

    msg = _migrated(300, 5)
    assert with_kv(msg, _Failing(SPEC), "e", KVPolicy()) is msg


def test_center_flags(tp_llama: Path) -> None:
    from isthmus.center.main import parse_args

    a = parse_args(["--model", str(tp_llama)])
    assert (a.migrate_kv, a.migrate_kv_min_tokens) == ("auto", DEFAULT_KV_MIN_TOKENS)
    a = parse_args(["--model", str(tp_llama), "--migrate-kv", "kv", "--migrate-kv-min-tokens", "64"])
    assert (a.migrate_kv, a.migrate_kv_min_tokens) == ("kv", 64)
    for bad in (["--migrate-kv", "blocks"], ["--migrate-kv-min-tokens", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--model", str(tp_llama), *bad])
