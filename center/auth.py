"""Who may reach the center and who may control it: the bind check and the admin-call guard.

Two rules, both secure by default:

- **Exposure** (`check_exposure`): a center listens on loopback unless told otherwise; beyond
  loopback it needs mutual TLS, or an explicit ``insecure`` that the operator typed.
- **Admin calls** (`AdminPolicy`, `AdminGuard`): every method of the center's service other than the
  data plane (`Generate`, `Status`) is an admin call: `Drain`, `Export`, `FetchWeights`, and
  `FetchKV` (another replica fetching a migration's KV, center/kv_fetch.py), and any added later.
  An admin call needs an authenticated peer: a verified client certificate (mutual TLS;
  optionally only some common names), or the admin token sent as gRPC metadata
  ``authorization: Bearer <token>``. A method added to the service later is guarded without being
  listed anywhere, because only the data plane is listed (fail closed).

`AdminPolicy.check` is sans-IO (metadata and auth context in, a refusal or None out); `AdminGuard`
is the one grpc.aio interceptor that applies it. Given an `AuditLog`, it also writes one line per
admin call when the call ends (outcome ``ok`` or ``failed``) and one ``auth.refused`` line per
refused call (what goes in a line: admin_audit.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from isthmus.center.admin_audit import (
    REFUSED_ACTION,
    action_for,
    actor_of,
    peer_address,
    reply_outcome,
    request_details,
)
from isthmus.engine.audit import AuditLog
from isthmus.protocol import rpc

DATA_PLANE_METHODS = frozenset({rpc.GENERATE, rpc.STATUS})  # open to any peer that reached the port
ADMIN_METADATA_KEY = "authorization"  # value: "Bearer <token>"
MIN_ADMIN_TOKEN_LEN = 16  # chars: shorter tokens are refused as guessable
TOKEN_MODE_MASK = stat.S_IRWXG | stat.S_IRWXO  # a token file readable by others is refused


class InsecureBind(ValueError):
    """The center was asked to listen beyond loopback without mutual TLS and without --insecure."""


class AdminTokenError(ValueError):
    """The admin token file is missing, empty, too short or readable by others."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything, so not loopback


def check_exposure(host: str, *, mutual_tls: bool, insecure: bool) -> None:
    """Refuse (`InsecureBind`) a bind beyond loopback without mutual TLS, unless ``insecure``."""
    if is_loopback(host) or mutual_tls or insecure:
        return
    raise InsecureBind(
        f"--host {host} listens beyond loopback, so the center needs mutual TLS there: give "
        "--tls-cert, --tls-key and --tls-client-ca (deploy/launch-center.sh --tls-dir DIR makes them), "
        "or --insecure to serve anyway without it (anyone who reaches the port can use the data plane)"
    )


def read_admin_token(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); `AdminTokenError` says what is wrong."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminTokenError(f"--admin-token-file: cannot read {path}: {exc}") from None
    if mode & TOKEN_MODE_MASK:
        raise AdminTokenError(
            f"--admin-token-file: {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"chmod 600 it"
        )
    if len(token) < MIN_ADMIN_TOKEN_LEN:
        raise AdminTokenError(
            f"--admin-token-file: the token must be at least {MIN_ADMIN_TOKEN_LEN} characters"
        )
    return token


def write_admin_token(path: str | Path) -> str:
    """Create ``path`` (mode 0600) holding a new random token unless it exists; returns the token."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(os.urandom(24).hex() + "\n")
    return read_admin_token(path)


def admin_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that authenticates an admin call with ``token``."""
    return ((ADMIN_METADATA_KEY, f"Bearer {token}"),)


def is_admin_method(method: str) -> bool:
    """Every method of the center's service except the data plane (health is another service)."""
    return method.startswith(f"/{rpc.SERVICE_NAME}/") and method not in DATA_PLANE_METHODS


@dataclass(frozen=True, slots=True)
class Refusal:
    code: grpc.StatusCode
    message: str


@dataclass(frozen=True, slots=True)
class AdminPolicy:
    """Who may make admin calls. ``mutual_tls``: the server verifies client certificates."""

    token: str | None = None
    mutual_tls: bool = False
    allowed_cns: frozenset[str] | None = None  # None: any verified client certificate

    def check(
        self, metadata: Sequence[tuple[str, Any]], auth_context: Mapping[str, Sequence[bytes]]
    ) -> Refusal | None:
        """None if the caller may make admin calls, else why not (UNAUTHENTICATED or PERMISSION_DENIED)."""
        presented = _bearer(metadata)
        if presented is not None:
            if self.token is not None and _same(presented, self.token):
                return None
            return Refusal(grpc.StatusCode.UNAUTHENTICATED, "admin token does not match")
        cn = _verified_cn(auth_context) if self.mutual_tls else None
        if cn is not None:
            if self.allowed_cns is None or cn in self.allowed_cns:
                return None
            return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                           f"client certificate CN {cn!r} may not make admin calls (see --admin-cn)")
        if self.token is None and not self.mutual_tls:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, "this center accepts no admin calls: "
                           "start it with --admin-token-file or mutual TLS")
        return Refusal(grpc.StatusCode.UNAUTHENTICATED,
                       "admin call needs an authenticated peer: a client certificate (mutual TLS) or the "
                       f"admin token as metadata '{ADMIN_METADATA_KEY}: Bearer <token>'")


def _bearer(metadata: Sequence[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key.lower() == ADMIN_METADATA_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            return text[len("Bearer "):] if text.startswith("Bearer ") else text
    return None


def _same(a: str, b: str) -> bool:
    # compare digests: constant time whatever the lengths
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest())


def _verified_cn(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The common name of a client certificate the TLS handshake verified, if any."""
    if b"ssl" not in auth_context.get("transport_security_type", ()):
        return None
    names = auth_context.get("x509_common_name") or ()
    return names[0].decode("utf-8", "replace") if names else None


Behavior = Callable[..., Any]


class AdminGuard(grpc.aio.ServerInterceptor):
    """Applies `AdminPolicy` to every admin method before its handler runs (one place for all), and
    writes each admin call and each refusal to ``audit`` when one is given."""

    def __init__(self, policy: AdminPolicy, audit: AuditLog | None = None) -> None:
        self.policy = policy
        self.audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not is_admin_method(handler_call_details.method):
            return handler
        return self._guarded(handler, handler_call_details.method)

    def _record(self, action: str, actor: str, context: grpc.aio.ServicerContext, outcome: str,
                details: dict[str, object]) -> None:
        if self.audit is not None:
            self.audit.record(action, actor=actor, source=peer_address(context.peer()), outcome=outcome,
                              details=details)

    async def _require(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> str:
        """The caller's actor name; a refused caller gets an ``auth.refused`` line and the abort."""
        metadata = context.invocation_metadata() or ()
        auth = context.auth_context()
        refusal = self.policy.check(metadata, auth)
        presented = _bearer(metadata) is not None
        if refusal is not None:
            details = request_details(method, request)
            details.update(code=refusal.code.name, reason=refusal.message,
                           presented="bearer" if presented else "none")
            self._record(REFUSED_ACTION, actor_of(False, auth), context, "refused", details)
            await context.abort(refusal.code, refusal.message)
        return actor_of(presented, auth)

    def _ended(self, method: str, request: Any, actor: str, context: grpc.aio.ServicerContext,
               outcome: str, extra: dict[str, object]) -> None:
        self._record(action_for(method, request), actor, context, outcome,
                     {**request_details(method, request), **extra})

    def _guarded(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            uu = self._guard_reply(handler.unary_unary, method, streams_in=False)
            return grpc.unary_unary_rpc_method_handler(uu, **kw)
        if handler.unary_stream is not None:
            us = self._guard_stream(handler.unary_stream, method, streams_in=False)
            return grpc.unary_stream_rpc_method_handler(us, **kw)
        if handler.stream_unary is not None:
            su = self._guard_reply(handler.stream_unary, method, streams_in=True)
            return grpc.stream_unary_rpc_method_handler(su, **kw)
        ss = self._guard_stream(handler.stream_stream, method, streams_in=True)
        return grpc.stream_stream_rpc_method_handler(ss, **kw)

    def _guard_reply(self, behavior: Behavior, method: str, streams_in: bool) -> Behavior:
        """``behavior`` (one reply) behind the admin check, its outcome audited."""
        require, ended = self._require, self._ended

        async def guarded(arg: Any, context: grpc.aio.ServicerContext) -> Any:
            request = None if streams_in else arg  # a request stream is not read here
            actor = await require(method, request, context)
            try:
                reply = await behavior(arg, context)
            except BaseException as exc:
                ended(method, request, actor, context, "failed", {"error": type(exc).__name__})
                raise
            ended(method, request, actor, context, *reply_outcome(reply))
            return reply

        return guarded

    def _guard_stream(self, behavior: Behavior, method: str, streams_in: bool) -> Behavior:
        """``behavior`` (a reply stream) behind the admin check; the audit counts its chunks
        (a unary request's) or says only how it ended (a request stream's)."""
        require, ended = self._require, self._ended

        async def guarded(arg: Any, context: grpc.aio.ServicerContext) -> Any:
            request = None if streams_in else arg
            actor = await require(method, request, context)
            num = 0
            try:
                async for msg in behavior(arg, context):
                    num += 1
                    yield msg
            except BaseException as exc:  # GeneratorExit: the caller went away mid-stream
                failed: dict[str, object] = {"error": type(exc).__name__}
                if not streams_in:
                    failed["num_chunks"] = num
                ended(method, request, actor, context, "failed", failed)
                raise
            ended(method, request, actor, context, "ok", {} if streams_in else {"num_chunks": num})

        return guarded
