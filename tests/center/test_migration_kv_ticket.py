"""KV too large for the `Migrated` message goes by ticket: B fetches it from A over ``FetchKV``.

Real gRPC on loopback, two in-process centers. A's inline limit is lowered (``KVPolicy.max_bytes``)
so the tiny model's KV takes the ticket path; A holds it (`KVTicketDesk`, an injected clock), the
message carries `KVBlocks.remote`, and B fetches it with the admin token before resuming. When
the fetch fails (ticket expired, A gone, refused), B recomputes from the ids: the answer is still
token-identical, and neither side keeps a block or a ticket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from isthmus.center.auth import AdminPolicy, admin_metadata
from isthmus.center.kv_fetch import KVFetcher, KVTicketDesk, PeerAuth
from isthmus.center.kv_migration import KVPolicy
from isthmus.center.kv_tickets import KVTicketStore
from isthmus.edge.migration import resume_request
from isthmus.protocol import (
    Done,
    DrainRequest,
    ExportRequest,
    GenerateRequest,
    Migrated,
    SamplingOptions,
    TokenChunk,
    pack_ids,
    rpc,
    unpack_ids,
)

from tests.center.conftest import ADMIN_TOKEN, Center, running_center

PROMPT = pack_ids([(13 * k) % 900 + 3 for k in range(40)])
ADMIN = admin_metadata(ADMIN_TOKEN)
POLICY = AdminPolicy(token=ADMIN_TOKEN)
TTL_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ids(msgs: list[Any]) -> list[int]:
    return [t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)]


def _imports(c: Center) -> int:
    return int(c.engine.core.scheduler.num_kv_imports)


def _all_free(c: Center) -> bool:
    load = c.engine.load()
    return bool(load.num_free_kv_blocks == load.num_total_kv_blocks) and not c.service.in_flight


def _give_channel(a: Center, b: Center, clock: Clock, token: str = ADMIN_TOKEN) -> None:
    """A ships KV by ticket past 1 KiB (a few tokens of the tiny model); B fetches with ``token``."""
    a.service.kv_policy = KVPolicy(mode="kv", max_bytes=1024)
    a.service.kv_desk = KVTicketDesk(KVTicketStore(budget_bytes=1 << 24, ttl_s=TTL_S, clock=clock),
                                     address=f"127.0.0.1:{a.server.port}")
    b.service.kv_fetcher = KVFetcher(PeerAuth(token=token), timeout_s=10.0)


@pytest.fixture
async def pair(tp_llama: Path) -> AsyncIterator[tuple[Center, Center, Clock]]:
    async with running_center(tp_llama, admin=POLICY) as a, running_center(tp_llama, admin=POLICY) as b:
        clock = Clock()
        _give_channel(a, b, clock)
        yield a, b, clock


async def _run_on_a(a: Center, req: GenerateRequest, after: int) -> list[Any]:
    """A's messages, ending in the `Migrated` its Export made once it had sent ``after`` ids."""
    first: list[Any] = []
    async for msg in a.generate_call(req):
        first.append(msg)
        if len(_ids(first)) == after and not isinstance(msg, Migrated):
            reply = await a.unary(rpc.EXPORT, ExportRequest(id=req.id), metadata=ADMIN)
            assert isinstance(reply, Migrated), reply
    assert isinstance(first[-1], Migrated)
    return first


async def _reference(b: Center, migrated: Migrated, n: int) -> list[int]:
    """The unmigrated answer (A's sampling, its drawn seed included), computed on B."""
    req = GenerateRequest(id="ref", prompt_ids=PROMPT, sampling=migrated.sampling)
    whole = await b.generate(req)
    assert len(_ids(whole)) == n
    return _ids(whole)


@pytest.mark.parametrize(
    "sampling",
    [SamplingOptions(max_tokens=30, temperature=0.0, ignore_eos=True),
     SamplingOptions(max_tokens=30, temperature=0.9, top_p=0.95, seed=77, ignore_eos=True)],
    ids=["greedy", "seeded"],
)
async def test_kv_by_ticket_gives_the_unmigrated_answer(
    pair: tuple[Center, Center, Clock], sampling: SamplingOptions
) -> None:
    a, b, _ = pair
    req = GenerateRequest(id="big", prompt_ids=PROMPT, sampling=sampling)
    first = await _run_on_a(a, req, after=6)
    kv = first[-1].continuation.kv
    assert kv is not None and kv.remote is not None and kv.data == b""  # by reference, not inline
    assert kv.remote.num_bytes == kv.num_tokens * 2 * kv.num_layers * kv.num_kv_heads * kv.head_dim * 4 > 1024
    assert len(a.service.kv_desk.store) == 1
    second = await b.generate(resume_request(req, first[-1]))
    assert isinstance(second[-1], Done)
    assert _imports(b) == 1 and b.service.kv_fetcher.num_fetched == 1  # B wrote the fetched KV
    assert _ids(first) + _ids(second) == await _reference(b, first[-1], 30)
    desk = a.service.kv_desk
    assert len(desk.store) == 0 and desk.store.num_taken == 1 and desk.store.num_bytes == 0
    assert _all_free(a) and _all_free(b)


async def _exported(a: Center, req_id: str) -> tuple[GenerateRequest, list[Any]]:
    """A request A exported with its KV by ticket, and A's messages."""
    sampling = SamplingOptions(max_tokens=24, temperature=0.8, seed=3, ignore_eos=True)
    req = GenerateRequest(id=req_id, prompt_ids=PROMPT, sampling=sampling)
    first = await _run_on_a(a, req, after=5)
    kv = first[-1].continuation.kv
    assert kv is not None and kv.remote is not None
    return req, first


async def _fallback(a: Center, b: Center, req: GenerateRequest, first: list[Any]) -> None:
    """B resumes after the fetch can no longer succeed: recompute, same answer, nothing leaked."""
    second = await b.generate(resume_request(req, first[-1]))
    assert isinstance(second[-1], Done) and _imports(b) == 0
    assert _ids(first) + _ids(second) == await _reference(b, first[-1], 24)
    assert _all_free(a) and _all_free(b)
    fetcher = b.service.kv_fetcher
    assert fetcher is None or (fetcher.num_failed == 1 and fetcher.num_bytes == 0)


async def test_expired_ticket_falls_back_to_tokens(pair: tuple[Center, Center, Clock]) -> None:
    a, b, clock = pair
    req, first = await _exported(a, "exp")
    clock.now += TTL_S + 1  # nobody fetched it in time
    await _fallback(a, b, req, first)
    assert len(a.service.kv_desk.store) == 0 and a.service.kv_desk.store.num_expired == 1


async def test_source_gone_before_the_fetch_falls_back_to_tokens(pair: tuple[Center, Center, Clock]) -> None:
    a, b, _ = pair
    req, first = await _exported(a, "gone")
    desk = a.service.kv_desk
    await a.server.stop()  # A's gRPC is gone (its tickets dropped with it)
    assert len(desk.store) == 0
    await _fallback(a, b, req, first)


async def test_refused_credentials_fall_back_and_the_ticket_expires(
    pair: tuple[Center, Center, Clock]
) -> None:
    a, b, clock = pair
    b.service.kv_fetcher = KVFetcher(PeerAuth(token="not-the-admin-token-at-all"), timeout_s=10.0)
    req, first = await _exported(a, "auth")
    await _fallback(a, b, req, first)
    store = a.service.kv_desk.store
    assert len(store) == 1 and store.num_taken == 0  # UNAUTHENTICATED before the handler ran
    clock.now += TTL_S + 1
    assert store.expire() == 1 and len(store) == 0 and store.num_bytes == 0


async def test_a_replica_without_a_fetcher_recomputes(pair: tuple[Center, Center, Clock]) -> None:
    a, b, _ = pair
    b.service.kv_fetcher = None
    req, first = await _exported(a, "nofetch")
    await _fallback(a, b, req, first)


async def test_migrating_drain_serves_tickets_until_fetched(pair: tuple[Center, Center, Clock]) -> None:
    """A drained with migrate stops only once its KV was fetched (or its tickets expired)."""
    a, b, _ = pair
    req = GenerateRequest(id="dr", prompt_ids=PROMPT,
                          sampling=SamplingOptions(max_tokens=30, temperature=0.0, ignore_eos=True))
    first: list[Any] = []
    async for msg in a.generate_call(req):
        first.append(msg)
        if len(first) == 3:
            await a.unary(rpc.DRAIN, DrainRequest(grace_s=5.0, migrate=True), metadata=ADMIN)
    kv = first[-1].continuation.kv
    assert isinstance(first[-1], Migrated) and kv is not None and kv.remote is not None
    for _ in range(50):  # A's drain has seen its request end and waits on the ticket
        if not a.service.in_flight:
            break
        await asyncio.sleep(0.01)
    second = await b.generate(resume_request(req, first[-1]))
    assert _imports(b) == 1 and isinstance(second[-1], Done)
    assert _ids(first) + _ids(second) == await _reference(b, first[-1], 30)
    await asyncio.wait_for(a.server.wait_stopped(), timeout=30)


async def test_fetch_over_mutual_tls_with_the_peer_certificate(tp_llama: Path, tmp_path: Path) -> None:
    """What `launch-center.sh --tls-dir` sets up: B presents its `center-peer` client certificate;
    A lets only that CN make admin calls, so a certificate of another CN is refused (B recomputes)."""
    import grpc
    from isthmus.center.server import TLSFiles
    from isthmus.edge.tls import ensure_mutual_tls

    ensure_mutual_tls(tmp_path, hosts=["localhost"], clients=["edge", "center-peer"])
    tls = TLSFiles(tmp_path / "center.crt", tmp_path / "center.key", client_ca=tmp_path / "ca.crt")
    ca, key, crt = ((tmp_path / n).read_bytes() for n in ("ca.crt", "edge.key", "edge.crt"))
    policy = AdminPolicy(token=ADMIN_TOKEN, mutual_tls=True, allowed_cns=frozenset({"center-peer"}))
    creds = grpc.ssl_channel_credentials(ca, key, crt)
    async with (running_center(tp_llama, tls=tls, channel_credentials=creds, admin=policy) as a,
                running_center(tp_llama, tls=tls, channel_credentials=creds, admin=policy) as b):
        _give_channel(a, b, Clock())
        a.service.kv_desk.address = f"localhost:{a.server.port}"  # a name the certificate is valid for
        for client, fetched in (("edge", False), ("center-peer", True)):
            peer = PeerAuth(tls=True, ca=ca, cert=(tmp_path / f"{client}.crt").read_bytes(),
                            key=(tmp_path / f"{client}.key").read_bytes())
            b.service.kv_fetcher = KVFetcher(peer, timeout_s=10.0)
            req, first = await _exported(a, f"mtls-{client}")
            second = await b.generate(resume_request(req, first[-1]))
            assert isinstance(second[-1], Done) and b.service.kv_fetcher.num_fetched == int(fetched)
            assert _ids(first) + _ids(second) == await _reference(b, first[-1], 24)
            await b.service.kv_fetcher.close()
        assert _imports(b) == 1 and len(a.service.kv_desk.store) == 1  # the refused one waits for its TTL
