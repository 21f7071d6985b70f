"""One center replica as the edge sees it: a grpc.aio channel, its health, its load, its breaker.

Calls go through generic gRPC multicallables with our msgpack codec (no protobuf); only the
standard health service uses its protobuf stubs. Responses are decoded by `safe_decode`, which
returns a `ProtocolError` instead of raising, so a replica that sends garbage is handled like one
that fails rather than surfacing as an opaque gRPC INTERNAL error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from isthmus.protocol import (
    GenerateRequest,
    Message,
    ProtocolError,
    Status,
    StatusRequest,
    decode,
    encode,
    rpc,
)

from .breaker import CircuitBreaker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CenterTls:
    """TLS towards the center: a CA bundle, and a client certificate for mutual TLS if required."""

    ca_file: str | None = None  # PEM; None: the system roots
    cert_file: str | None = None  # PEM client certificate (mutual TLS)
    key_file: str | None = None  # PEM client key
    server_name: str | None = None  # override the name checked against the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("center tls: cert and key must be given together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """Timing and retry settings of the center pool."""

    health_interval_s: float = 2.0  # seconds between health + Status polls
    health_timeout_s: float = 1.0  # seconds per health or Status call
    max_attempts: int = 3  # replicas tried before the first token
    breaker_failures: int = 3  # consecutive failures that open a replica's breaker
    breaker_cooldown_s: float = 5.0  # seconds before an open breaker lets a probe through
    breaker_max_cooldown_s: float = 60.0  # seconds: cap of the doubling cool-down
    keepalive_time_ms: int = 20_000  # ms between pings (the center accepts >= 10 s)
    keepalive_timeout_ms: int = 10_000  # ms to wait for a ping ack
    max_message_bytes: int = rpc.MAX_MESSAGE_BYTES  # bytes
    health_service: str = ""  # "" = the whole server
    allow_mixed_weights: bool = False  # False: replicas with another weights digest are kept out

    def channel_options(self, tls: CenterTls | None) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),  # the pool retries itself, on another replica
        ]
        if tls is not None and tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        return opts


def safe_decode(data: bytes) -> Message | ProtocolError:
    """Decode a response body; a malformed one comes back as the `ProtocolError`, not raised."""
    try:
        return decode(data)
    except ProtocolError as exc:
        return exc


class Replica:
    """A center endpoint: channel, health, last `Status`, outstanding requests and breaker."""

    def __init__(self, endpoint: str, options: PoolOptions, tls: CenterTls | None = None) -> None:
        self.endpoint = endpoint
        self.options = options
        channel_options = options.channel_options(tls)
        if tls is None:
            self.channel = grpc.aio.insecure_channel(endpoint, options=channel_options)
        else:
            self.channel = grpc.aio.secure_channel(endpoint, tls.credentials(), options=channel_options)
        self._generate = self.channel.unary_stream(
            rpc.GENERATE, request_serializer=encode, response_deserializer=safe_decode
        )
        self._status = self.channel.unary_unary(
            rpc.STATUS, request_serializer=encode, response_deserializer=safe_decode
        )
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.breaker = CircuitBreaker(
            failure_threshold=options.breaker_failures,
            cooldown_s=options.breaker_cooldown_s,
            max_cooldown_s=options.breaker_max_cooldown_s,
        )
        self.is_healthy = False  # unknown until the first check
        self.status: Status | None = None
        self.num_outstanding = 0  # requests this edge has open on it
        self.last_error = ""

    def generate(self, req: GenerateRequest, timeout_s: float | None) -> Any:
        """Start a Generate call (a `grpc.aio.UnaryStreamCall`); iterate it, `cancel()` it."""
        return self._generate(req, timeout=timeout_s)

    async def check(self) -> bool:
        """Poll health and Status once; updates and returns `is_healthy`."""
        timeout = self.options.health_timeout_s
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=self.options.health_service), timeout=timeout
            )
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError as exc:
            self.last_error = f"health: {exc.code().name}"
            serving = False
        if not serving:
            self.is_healthy = False
            return False
        try:
            status = await self._status(StatusRequest(), timeout=timeout)
            self.status = status if isinstance(status, Status) else None
            if isinstance(status, ProtocolError):
                self.last_error = f"status: {status}"
        except grpc.aio.AioRpcError as exc:
            # a center without Status still serves; it just cannot be balanced by its load
            self.status = None
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                self.last_error = f"status: {exc.code().name}"
                self.is_healthy = False
                return False
        st = self.status
        self.is_healthy = st is None or (st.is_ready and not st.is_draining)
        return self.is_healthy

    def load_score(self) -> float:
        """Lower is better: requests this edge has open plus what the replica reports running/queued."""
        st = self.status
        reported = (st.num_running + st.num_waiting) if st is not None else 0
        return float(self.num_outstanding + reported)

    def load_fraction(self) -> float:
        """Load in [0, 1]: KV cache in use, or the queued share of its requests if that is higher."""
        st = self.status
        if st is None:
            return 0.0
        kv = 0.0
        if st.num_total_kv_blocks > 0:
            kv = 1.0 - min(st.num_free_kv_blocks, st.num_total_kv_blocks) / st.num_total_kv_blocks
        queued = st.num_waiting / (st.num_running + st.num_waiting) if st.num_waiting else 0.0
        return min(1.0, max(kv, queued))

    async def close(self) -> None:
        await self.channel.close()


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
