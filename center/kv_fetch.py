"""The replica-to-replica KV channel of a live migration: ``FetchKV`` served by A, fetched by B.

A migration's KV that does not fit the `Migrated` message waits on the exporting replica A under
a ticket (`KVTicketDesk`, over the sans-IO `KVTicketStore`); the message carries `KVRemote` (A's
advertised address, the ticket, the byte count) instead of the bytes. Replica B, resuming such a
request, calls ``/isthmus.v1.Center/FetchKV`` on A (`KVFetcher`): a unary request ``{"ticket":
...}`` answered by a stream of raw byte chunks of at most `CHUNK_BYTES`. Being a method of the
center's service other than the data plane, the call passes `AdminGuard` (center/auth.py): B
authenticates like any admin caller, with a client certificate (mutual TLS) and/or the admin
token. `resolve_kv` turns the reference back into inline KV, or drops it on any failure (A gone,
ticket expired or taken, refused, wrong size, too slow, a cache of another kind): the request then
recomputes its cache from its ids, as a token migration does, so the answer always goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import msgspec
from isthmus.center.auth import admin_metadata, is_loopback
from isthmus.center.kv_tickets import KVTicketStore
from isthmus.engine.core.kv_blocks import KVMismatch, KVSpec, check_spec
from isthmus.protocol import GenerateRequest, num_ids, rpc
from isthmus.protocol.messages import KVBlocks, KVRemote

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024  # bytes per streamed message (well under the gRPC message limit)
DEFAULT_FETCH_TIMEOUT_S = 5.0  # seconds for the call to start and move a small payload
MIN_FETCH_RATE = 128 * 1024 * 1024  # bytes/s: a larger payload gets num_bytes / this on top
MAX_PEER_CHANNELS = 16  # channels to other replicas kept open (least recently used closed first)
IDLE_POLL_S = 0.05  # seconds between checks while a drain waits for outstanding tickets


class FetchKVRequest(msgspec.Struct, forbid_unknown_fields=True):
    ticket: str


def decode_fetch_kv(data: bytes) -> FetchKVRequest | str:
    """The request, or why it is malformed (never raises: the handler answers INVALID_ARGUMENT)."""
    try:
        req = msgspec.msgpack.decode(data, type=FetchKVRequest)
    except msgspec.DecodeError as exc:
        return f"malformed request: {exc}"
    return req if 0 < len(req.ticket) <= 128 else "ticket empty or too long"


def _identity(data: bytes) -> bytes:
    return data


class KVFetchError(RuntimeError):
    """The KV behind a reference could not be fetched (the request then recomputes its cache)."""


class KVTicketDesk:
    """Replica A's side: holds exported KV under tickets and serves ``FetchKV``.

    ``address`` is what B dials (``--advertise``, else the bound address); empty: no tickets.
    """

    def __init__(self, store: KVTicketStore, address: str = "") -> None:
        self.store = store
        self.address = address
        self.num_streaming = 0
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, data: bytes) -> KVRemote | None:
        """Hold ``data`` and return its reference, or None (no address, over the budget)."""
        if not self.address:
            return None
        ticket = self.store.put(data)
        if ticket is None:
            log.warning("KV of %d bytes over the ticket budget (%d held of %d): migrating by tokens",
                        len(data), self.store.num_bytes, self.store.budget_bytes)
            return None
        self._arm()
        return KVRemote(address=self.address, ticket=ticket, num_bytes=len(data))

    def _arm(self) -> None:
        """Expire tickets when their time comes (also done lazily on every put and take)."""
        due = self.store.next_expiry()
        if due is None or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(due - self.store.clock(), 0.0) + 0.01, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.store.expire():
            log.info("KV tickets expired unfetched; %d left", len(self.store))
        self._arm()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of ``FetchKV``, to add beside the center's own methods."""
        return grpc.method_handlers_generic_handler(rpc.SERVICE_NAME, {
            rpc.FETCH_KV_METHOD: grpc.unary_stream_rpc_method_handler(
                self.fetch, request_deserializer=decode_fetch_kv, response_serializer=_identity)})

    async def fetch(self, req: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        if isinstance(req, str):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, req)
        data = self.store.take(req.ticket)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such KV ticket (fetched or expired)")
            return
        self.num_streaming += 1
        try:
            view = memoryview(data)
            for start in range(0, len(data), CHUNK_BYTES):
                yield bytes(view[start:start + CHUNK_BYTES])
        finally:
            self.num_streaming -= 1

    def is_idle(self) -> bool:
        self.store.expire()
        return len(self.store) == 0 and self.num_streaming == 0

    async def wait_idle(self) -> None:
        """Return once no ticket waits and no fetch streams (a drain keeps serving until then;
        tickets expire after their time to live, so this ends)."""
        while not self.is_idle():
            await asyncio.sleep(IDLE_POLL_S)

    def close(self) -> None:
        """Drop every ticket (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.store.clear()


@dataclass(frozen=True, slots=True)
class PeerAuth:
    """How this replica calls another one: TLS roots and client certificate, and the admin token.

    ``tls``: dial with TLS (``ca``: PEM roots, None: the system's; ``cert``/``key``: the client
    certificate for mutual TLS). The token goes only over TLS or to a loopback address.
    """

    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str | None = None

    def channel(self, address: str) -> grpc.aio.Channel:
        options = [("grpc.max_receive_message_length", CHUNK_BYTES + 64 * 1024), ("grpc.enable_retries", 0)]
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                             certificate_chain=self.cert)
        return grpc.aio.secure_channel(address, creds, options=options)

    def metadata(self, address: str) -> tuple[tuple[str, str], ...]:
        host = address.rsplit(":", 1)[0]
        if self.token is None or not (self.tls or is_loopback(host)):
            return ()
        return admin_metadata(self.token)


class KVFetcher:
    """Replica B's side: fetches the KV behind a `KVRemote`, bounded in bytes and in time."""

    def __init__(self, auth: PeerAuth, timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
                 max_bytes: int = 4 * 1024**3) -> None:
        self.auth = auth
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes  # bytes being fetched at once, all requests together
        self.num_bytes = 0
        self.num_fetched = 0
        self.num_failed = 0
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.pop(address, None)
        if channel is None:
            channel = self.auth.channel(address)
            while len(self._channels) >= MAX_PEER_CHANNELS:
                _, old = self._channels.popitem(last=False)
                asyncio.get_running_loop().create_task(old.close())
        self._channels[address] = channel
        return channel

    def deadline_s(self, num_bytes: int) -> float:
        """Seconds the whole fetch may take: the base timeout plus the bytes at `MIN_FETCH_RATE`."""
        return self.timeout_s + num_bytes / MIN_FETCH_RATE

    async def fetch(self, remote: KVRemote) -> bytes:
        """The ``remote.num_bytes`` bytes held under its ticket; `KVFetchError` on any failure."""
        if self.num_bytes + remote.num_bytes > self.max_bytes:
            raise KVFetchError(f"{remote.num_bytes} bytes would go over the fetch budget ({self.max_bytes})")
        self.num_bytes += remote.num_bytes
        try:
            data = await asyncio.wait_for(self._read(remote), self.deadline_s(remote.num_bytes))
        except TimeoutError:
            self.num_failed += 1
            limit = self.deadline_s(remote.num_bytes)
            raise KVFetchError(f"fetch from {remote.address} took over {limit:.1f}s") from None
        except KVFetchError:
            self.num_failed += 1
            raise
        finally:
            self.num_bytes -= remote.num_bytes
        self.num_fetched += 1
        return data

    async def _read(self, remote: KVRemote) -> bytes:
        stub = self._channel(remote.address).unary_stream(
            rpc.FETCH_KV, request_serializer=_identity, response_deserializer=_identity)
        request = msgspec.msgpack.encode(FetchKVRequest(ticket=remote.ticket))
        call = stub(request, metadata=self.auth.metadata(remote.address))
        out = bytearray()
        try:
            async for chunk in call:
                if len(out) + len(chunk) > remote.num_bytes:
                    call.cancel()
                    raise KVFetchError(f"{remote.address} sent over the {remote.num_bytes} bytes announced")
                out += chunk
        except grpc.aio.AioRpcError as exc:
            raise KVFetchError(f"{remote.address}: {exc.code().name}: {exc.details()}") from None
        if len(out) != remote.num_bytes:
            raise KVFetchError(f"{remote.address} sent {len(out)} bytes, {remote.num_bytes} announced")
        return bytes(out)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            await channel.close()


async def resolve_kv(req: GenerateRequest, fetcher: KVFetcher | None, own: KVSpec | None) -> GenerateRequest:
    """``req`` with the KV behind its `KVRemote` fetched in, or without KV when that fails.

    Checked before fetching, as the engine checks inline KV (`check_spec`): a payload this
    replica could not import (``own`` None: tensor-parallel) is not fetched at all.
    """
    cont = req.continuation
    kv = cont.kv if cont is not None and cont.is_migration else None
    if cont is None or kv is None or kv.remote is None:
        return req
    resolved: KVBlocks | None = None
    try:
        if fetcher is None or own is None:
            raise KVFetchError("this replica fetches no KV (tensor-parallel, or no peer channel)")
        num_tokens = num_ids(req.prompt_ids or b"") + num_ids(cont.token_ids) - 1
        check_spec(own, _spec_of(kv), kv.num_tokens, num_tokens, kv.remote.num_bytes)
        data = await fetcher.fetch(kv.remote)
        resolved = msgspec.structs.replace(kv, data=data, remote=None)
    except (KVFetchError, KVMismatch) as exc:
        log.warning("request %s: KV not fetched, recomputing its cache instead: %s", req.id, exc)
    return msgspec.structs.replace(req, continuation=msgspec.structs.replace(cont, kv=resolved))


def _spec_of(kv: KVBlocks) -> KVSpec:
    return KVSpec(fingerprint=kv.model_fingerprint, dtype=kv.dtype, num_layers=kv.num_layers,
                  num_kv_heads=kv.num_kv_heads, head_dim=kv.head_dim, block_size=kv.block_size,
                  tp_size=kv.tp_size, layout=kv.layout)
