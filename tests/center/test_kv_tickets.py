"""The KV ticket store (sans-IO: an injected clock), the desk's offers, and the fetch-side checks."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from isthmus.center.kv_fetch import KVTicketDesk, PeerAuth, decode_fetch_kv
from isthmus.center.kv_tickets import KVTicketStore, new_ticket
from isthmus.engine.core.kv_blocks import KVMismatch, KVSpec, check_spec
from isthmus.protocol import decode, encode
from isthmus.protocol.messages import Continuation, KVBlocks, KVRemote, Migrated, SamplingOptions


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _store(budget: int = 1000, ttl: float = 30.0) -> tuple[KVTicketStore, Clock]:
    clock = Clock()
    return KVTicketStore(budget_bytes=budget, ttl_s=ttl, clock=clock), clock


def test_put_take_once_frees_the_bytes() -> None:
    store, _ = _store()
    ticket = store.put(b"x" * 300)
    assert ticket is not None and len(store) == 1 and store.num_bytes == 300 and store.room_bytes() == 700
    assert store.take(ticket) == b"x" * 300
    assert store.take(ticket) is None  # one fetch per ticket
    assert len(store) == 0 and store.num_bytes == 0 and store.num_taken == 1
    assert store.take("never-issued") is None


def test_budget_refuses_what_would_go_over_it() -> None:
    store, _ = _store(budget=1000)
    first = store.put(b"a" * 600)
    assert first is not None
    assert store.put(b"b" * 401) is None and store.num_refused == 1  # 1001 > 1000: nothing held
    assert store.num_bytes == 600 and len(store) == 1
    second = store.put(b"c" * 400)  # exactly the budget
    assert second is not None and store.room_bytes() == 0
    store.take(first)
    assert store.put(b"d" * 600) is not None  # taking frees room


def test_ttl_drops_unfetched_entries() -> None:
    store, clock = _store(ttl=30.0)
    old = store.put(b"o" * 100)
    clock.now += 20.0
    young = store.put(b"y" * 100)
    assert old is not None and young is not None and store.next_expiry() == 130.0
    clock.now += 10.0  # old's 30 s are up
    assert store.take(old) is None and store.num_expired == 1 and store.num_bytes == 100
    clock.now += 19.9
    assert store.take(young) == b"y" * 100
    store.put(b"z" * 10)
    clock.now += 31.0
    assert store.expire() == 1 and len(store) == 0 and store.num_bytes == 0 and store.next_expiry() is None


def test_expired_entries_make_room_for_a_put() -> None:
    store, clock = _store(budget=100)
    assert store.put(b"a" * 100) is not None
    assert store.put(b"b") is None
    clock.now += 31.0
    assert store.put(b"b") is not None and store.num_expired == 1


def test_clear_drops_everything() -> None:
    store, _ = _store()
    for _ in range(3):
        store.put(b"k" * 10)
    assert store.clear() == 3 and len(store) == 0 and store.num_bytes == 0


def test_tickets_are_random_and_a_repeat_is_redrawn() -> None:
    assert len({new_ticket() for _ in range(100)}) == 100 and len(new_ticket()) >= 32
    names = itertools.chain(["same", "same"], (f"t{i}" for i in itertools.count()))
    store = KVTicketStore(clock=Clock(), make_ticket=lambda: next(names))
    assert store.put(b"1") == "same" and store.put(b"2") == "t0"


@pytest.mark.parametrize("bad", [{"budget_bytes": -1}, {"ttl_s": 0.0}])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        KVTicketStore(**bad)  # type: ignore[arg-type]


def test_desk_offers_a_reference_within_its_budget() -> None:
    store, _ = _store(budget=100)
    assert KVTicketDesk(store, address="").offer(b"x") is None  # no address: no tickets
    desk = KVTicketDesk(store, address="10.0.0.1:50051")
    remote = desk.offer(b"x" * 60)
    assert remote is not None and remote.address == "10.0.0.1:50051" and remote.num_bytes == 60
    assert desk.offer(b"y" * 60) is None  # over the budget: the request migrates by tokens
    assert not desk.is_idle()
    desk.close()
    assert desk.is_idle() and len(store) == 0


def test_fetch_request_decoding_never_raises() -> None:
    assert decode_fetch_kv(msgspec.msgpack.encode({"ticket": "abc"})).ticket == "abc"  # type: ignore[union-attr]
    assert isinstance(decode_fetch_kv(b"\xc1"), str)
    assert isinstance(decode_fetch_kv(msgspec.msgpack.encode({"ticket": ""})), str)
    assert isinstance(decode_fetch_kv(msgspec.msgpack.encode({"ticket": "t", "more": 1})), str)


def test_token_goes_only_over_tls_or_to_loopback() -> None:
    plain = PeerAuth(token="t" * 20)
    assert plain.metadata("127.0.0.1:5000") and plain.metadata("localhost:5000")
    assert plain.metadata("10.0.0.2:5000") == ()  # plaintext beyond loopback: no token on the wire
    assert PeerAuth(tls=True, token="t" * 20).metadata("10.0.0.2:5000")
    assert PeerAuth().metadata("127.0.0.1:5000") == ()


SPEC = KVSpec(fingerprint="f", dtype="float32", num_layers=2, num_kv_heads=2, head_dim=4, block_size=16)


def test_check_spec_is_the_payload_check_without_the_bytes() -> None:
    check_spec(SPEC, SPEC, 10, 10, 10 * SPEC.bytes_per_token)
    with pytest.raises(KVMismatch, match="num_tokens"):
        check_spec(SPEC, SPEC, 9, 10, 9 * SPEC.bytes_per_token)
    with pytest.raises(KVMismatch, match="data"):
        check_spec(SPEC, SPEC, 10, 10, 10 * SPEC.bytes_per_token + 1)
    other = KVSpec(fingerprint="g", dtype="float32", num_layers=2, num_kv_heads=2, head_dim=4, block_size=8)
    with pytest.raises(KVMismatch, match="fingerprint"):
        check_spec(SPEC, other, 10, 10, 10 * SPEC.bytes_per_token)


class OldKVBlocks(msgspec.Struct, kw_only=True):
    """`KVBlocks` as a peer from before `remote` declares it."""

    model_fingerprint: str
    dtype: str
    layout: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    tp_size: int = 1
    block_size: int
    num_tokens: int
    data: bytes


def test_reference_round_trips_and_an_old_peer_ignores_it() -> None:
    remote = KVRemote(address="a:1", ticket="t" * 32, num_bytes=4096)
    kv = KVBlocks(model_fingerprint="f", dtype="float32", layout="layer,kv,token,head,dim", num_layers=2,
                  num_kv_heads=2, head_dim=4, block_size=16, num_tokens=32, data=b"", remote=remote)
    msg = Migrated(id="r", prompt_ids=b"\x01\x00\x00\x00", sampling=SamplingOptions(),
                   continuation=Continuation(is_migration=True, kv=kv))
    back = decode(encode(msg))
    assert isinstance(back, Migrated) and back.continuation.kv is not None
    assert back.continuation.kv.remote == remote
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(kv), type=OldKVBlocks)
    assert old.data == b"" and old.num_tokens == 32  # no `remote` there: data too short, it recomputes


def test_fetch_kv_is_an_admin_call() -> None:
    from isthmus.center.auth import is_admin_method
    from isthmus.protocol import rpc

    assert rpc.FETCH_KV == "/isthmus.v1.Center/FetchKV" and is_admin_method(rpc.FETCH_KV)
