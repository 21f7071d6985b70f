"""The gRPC shell around `CenterService`: generic handlers with msgpack bodies, health, TLS, drain.

No protobuf for our methods: request/response bodies are the protocol's msgpack messages, plugged
in as the (de)serializers of generic method handlers at the paths of `isthmus.protocol.rpc`. The
standard `grpc.health.v1.Health` service runs beside them and says SERVING only after the model
is loaded and a warm-up request went through; NOT_SERVING from the moment a drain begins.

Secure by default (`center/auth.py`): binding beyond loopback without mutual TLS is refused unless
``allow_insecure``; admin calls (`Drain`, and any method not on the data plane) pass `AdminGuard`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from isthmus.center.auth import AdminGuard, AdminPolicy, check_exposure
from isthmus.center.kv_fetch import decode_fetch_kv
from isthmus.center.service import CenterService
from isthmus.center.weights_service import WeightsServer
from isthmus.engine.audit import AuditLog
from isthmus.protocol import (
    DrainReply,
    DrainRequest,
    ExportRequest,
    GenerateRequest,
    ProtocolError,
    StatusRequest,
    decode,
    encode,
    error_message,
    rpc,
)

log = logging.getLogger(__name__)

KEEPALIVE_TIME_MS = 20_000  # ms between server pings on an idle connection
KEEPALIVE_TIMEOUT_MS = 10_000  # ms to wait for the ping ack before closing the connection
MIN_CLIENT_PING_INTERVAL_MS = 10_000  # ms: clients pinging faster than this are told off
DEFAULT_GRACE_S = 30.0  # seconds in-flight requests get to finish on drain

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", rpc.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", rpc.MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]


@dataclass(slots=True, frozen=True)
class TLSFiles:
    """PEM files for the server side; ``client_ca`` turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


def _decoder(expected: type) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: a bad body becomes the ProtocolError itself."""

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data, expected=expected)
        except ProtocolError as exc:
            return exc

    return deserialize


class CenterServer:
    """grpc.aio server for one `CenterService` on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        service: CenterService,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TLSFiles | None = None,
        default_grace_s: float = DEFAULT_GRACE_S,
        on_drained: Callable[[], Any] | None = None,
        admin: AdminPolicy | None = None,
        allow_insecure: bool = False,
        weights_dir: str | Path | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        """``admin``: who may make admin calls (default: verified client certificates when ``tls``
        has a client CA, else nobody). ``allow_insecure``: serve beyond loopback without mutual TLS.
        ``weights_dir``: the checkpoint folder `FetchWeights` serves (weights_service.py; default:
        the engine's model folder). ``audit``: where `AdminGuard` records admin calls and refusals."""
        self.service = service
        self.host = host
        self.port = port
        self.tls = tls
        self.default_grace_s = default_grace_s
        self.on_drained = on_drained
        self.is_mutual_tls = tls is not None and tls.client_ca is not None
        self.admin = admin if admin is not None else AdminPolicy(mutual_tls=self.is_mutual_tls)
        self.allow_insecure = allow_insecure
        self.audit = audit
        if weights_dir is None:
            model = getattr(getattr(getattr(service, "engine", None), "options", None), "model", None)
            weights_dir = model if isinstance(model, str | Path) else None
        self.weights = WeightsServer(weights_dir)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Bind and start serving (health NOT_SERVING until `set_ready`); returns the bound port.

        Raises `InsecureBind` (before binding) for a non-loopback host without mutual TLS.
        """
        check_exposure(self.host, mutual_tls=self.is_mutual_tls, insecure=self.allow_insecure)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[AdminGuard(self.admin, self.audit)])
        server.add_generic_rpc_handlers((self._handlers(), self.weights.handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"{self.host}:{self.port}"
        if self.tls is not None:
            bound = server.add_secure_port(address, self.tls.credentials())
        else:
            bound = server.add_insecure_port(address)
        if not bound:
            raise OSError(f"could not bind gRPC port {address}")
        self.port = bound
        await server.start()
        self._server = server
        security = "mutual TLS" if self.is_mutual_tls else "TLS" if self.tls else "plaintext"
        log.info("center gRPC listening on %s:%d (%s)", self.host, bound, security)
        return bound

    async def set_ready(self) -> None:
        """The model is loaded and warmed: admit requests and report SERVING."""
        self.service.is_ready = True
        if not self.service.is_draining:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def _set_health(self, status: Any) -> None:
        for name in ("", rpc.SERVICE_NAME):
            await self.health.set(name, status)

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            rpc.SERVICE_NAME,
            {
                rpc.GENERATE_METHOD: grpc.unary_stream_rpc_method_handler(
                    self._generate, request_deserializer=_decoder(GenerateRequest), response_serializer=encode
                ),
                rpc.STATUS_METHOD: grpc.unary_unary_rpc_method_handler(
                    self._status, request_deserializer=_decoder(StatusRequest), response_serializer=encode
                ),
                rpc.DRAIN_METHOD: grpc.unary_unary_rpc_method_handler(
                    self._drain, request_deserializer=_decoder(DrainRequest), response_serializer=encode
                ),
                rpc.EXPORT_METHOD: grpc.unary_unary_rpc_method_handler(
                    self._export, request_deserializer=_decoder(ExportRequest), response_serializer=encode
                ),
                rpc.FETCH_KV_METHOD: grpc.unary_stream_rpc_method_handler(
                    self._fetch_kv, request_deserializer=decode_fetch_kv, response_serializer=bytes
                ),
            },
        )

    async def _generate(self, req: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        stream = self.service.generate(req, time_remaining=context.time_remaining())
        try:
            async for msg in stream:
                yield msg
        finally:
            await stream.aclose()  # on cancel: runs the service's finally (engine abort) now

    async def _status(self, req: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(req, ProtocolError):
            return error_message("", req)
        try:
            return self.service.status()
        except Exception as exc:
            log.exception("status failed")
            return error_message("", exc)

    async def _drain(self, req: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(req, ProtocolError):
            return error_message("", req)
        return DrainReply(num_in_flight=await self.drain(req.grace_s, migrate=req.migrate))

    async def _export(self, req: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(req, ProtocolError):
            return error_message("", req)
        return self.service.export(req.id)

    async def _fetch_kv(self, req: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        desk = getattr(self.service, "kv_desk", None)  # KV held for other replicas (center/kv_fetch.py)
        if desk is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "this replica holds no KV tickets")
            return
        async for chunk in desk.fetch(req, context):
            yield chunk

    async def drain(self, grace_s: float | None = None, migrate: bool = False) -> int:
        """Begin a graceful drain (idempotent): NOT_SERVING now, stop once in-flight work is done.

        ``migrate``: end every in-flight request now with `Migrated` (its state, for the edge to
        continue it on another replica) instead of letting it run. Returns the number of requests
        in flight when it was called.
        """
        num = self.service.begin_drain()
        if migrate:
            self.service.export_all()
        if self._drain_task is None:
            await self.health.enter_graceful_shutdown()
            grace = self.default_grace_s if grace_s is None else grace_s
            self._drain_task = asyncio.get_running_loop().create_task(self._finish_drain(grace))
        return num

    async def _finish_drain(self, grace_s: float) -> None:
        try:
            num_aborted = await self.service.finish_in_flight(grace_s)
            if num_aborted:
                log.warning("drain: %d request(s) did not finish within %.1fs", num_aborted, grace_s)
            desk = getattr(self.service, "kv_desk", None)
            if desk is not None:  # migrated KV not fetched yet: keep serving it (at most its TTL)
                await desk.wait_idle()
        finally:
            await self.stop(grace_s=1.0)
            if self.on_drained is not None:
                self.on_drained()

    async def stop(self, grace_s: float | None = 0.0) -> None:
        """Stop the gRPC server now (ongoing RPCs get ``grace_s`` seconds)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace_s)
        desk, fetcher = getattr(self.service, "kv_desk", None), getattr(self.service, "kv_fetcher", None)
        if desk is not None:
            desk.close()
        if fetcher is not None:
            await fetcher.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once the server stopped (after a drain or `stop`)."""
        await self._stopped.wait()

