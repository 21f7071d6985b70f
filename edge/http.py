"""The edge's HTTP side: `/metrics`, `/healthz`, `/readyz`, and room for the OpenAI API.

`make_app(metrics, checks=..., setup=[...])` builds the aiohttp application; each `setup`
callable receives the app before it is frozen and may add routes (the OpenAI-compatible `/v1/...`
routes are mounted that way). `HttpServer` runs an app on a host and port.

- `/healthz`: the process is alive and its event loop answers (always 200).
- `/readyz`: 200 when every readiness check passes (e.g. "model": the engine is loaded, "center":
  a healthy center replica, when the config requires one), else 503; the body lists each check.
- `/metrics`: Prometheus text. When API keys are configured (the node's `auth` is not open) it
  needs one of them as `Authorization: Bearer <key>`, like the API (in Prometheus:
  `authorization: {credentials_file: ...}`); wrong keys count toward the same per-address
  throttle. `/healthz` and `/readyz` stay open for probes: they say nothing but up/ready.

Request bodies are capped at `MAX_BODY_SIZE` (the QUIC frame limit): a larger one gets 413.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from isthmus.protocol import ErrorCode, ProtocolError
from isthmus.protocol.limits import MAX_FRAME_SIZE

from .metrics import CONTENT_TYPE, Metrics
from .openai_schema import error_from_protocol

if TYPE_CHECKING:  # the node imports this module
    from .node import EdgeNode

log = logging.getLogger(__name__)

MAX_BODY_SIZE = MAX_FRAME_SIZE  # bytes: one request body, as one QUIC request frame

def bearer_key(request: web.Request) -> str | None:
    """The key in `Authorization: Bearer <key>`, or None."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def check_key(auth: Any, request: web.Request) -> None:
    """Check the request's key against `auth` (an `ApiKeyStore` or None: open), throttled per
    source address where the store supports it. Raises `ProtocolError` (UNAUTHENTICATED or,
    for an address that sent too many wrong keys, RATE_LIMITED)."""
    if auth is None:
        return
    key = bearer_key(request)
    if callable(getattr(auth, "identify_from", None)):
        auth.identify_from(request.remote or "", key)
    else:
        auth.identify(key)


def retry_after(auth: Any, request: web.Request) -> dict[str, str]:
    """A `Retry-After` header for a throttled source address (empty when unknown)."""
    wait = getattr(auth, "throttle_retry_after", None)
    seconds = wait(request.remote or "") if callable(wait) else 0.0
    return {"Retry-After": str(max(1, math.ceil(seconds)))} if seconds > 0 else {}


def allowlist_middleware(node: EdgeNode) -> Any:
    """Refuse (403) a request whose source address is outside `node.http_allowlist` (looked up per
    request, so a reload may swap it), before any handler runs: nothing is read or computed."""

    @web.middleware
    async def allowlist(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        allow = getattr(node, "http_allowlist", None)
        if allow is not None and not allow.allows(request.remote or ""):
            body = {"error": {"message": "address not allowed", "type": "forbidden", "code": "forbidden"}}
            return web.json_response(body, status=403)
        return await handler(request)

    return allowlist


ReadyCheck = Callable[[], bool]
Setup = Callable[[web.Application], None]

METRICS_KEY = web.AppKey("isthmus_metrics", Metrics)


def make_app(
    metrics: Metrics | Any,
    *,
    checks: Mapping[str, ReadyCheck] | None = None,
    setup: Iterable[Setup] = (),
    on_scrape: Callable[[], None] | None = None,
) -> web.Application:
    """The aiohttp application; `checks` name -> callable returning True when ready.

    `on_scrape` runs before each `/metrics` render (to sample gauges such as queue depth). Given a
    node instead of a `Metrics` (anything with a `.metrics`), its `ready_checks()` and
    `update_gauges()` are used when it has them and the arguments leave them unset.
    """
    node: Any = None
    if not isinstance(metrics, Metrics):
        node = metrics
        metrics = node.metrics
        if checks is None and callable(getattr(node, "ready_checks", None)):
            checks = node.ready_checks()
        if on_scrape is None and callable(getattr(node, "update_gauges", None)):
            on_scrape = node.update_gauges
    app = web.Application(client_max_size=MAX_BODY_SIZE, middlewares=[allowlist_middleware(node)])
    app[METRICS_KEY] = metrics
    ready_checks = dict(checks or {})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(request: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in ready_checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a failing check means "not ready", never a 500
                log.exception("readiness check %s failed", name)
                results[name] = False
        ready = all(results.values())
        return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)

    async def metrics_handler(request: web.Request) -> web.Response:
        try:
            check_key(getattr(node, "auth", None), request)  # looked up now: the node sets it at start
        except ProtocolError as exc:
            err = error_from_protocol(exc.code, exc.message)
            headers = retry_after(node.auth, request) if exc.code == ErrorCode.RATE_LIMITED else {}
            return web.json_response(err.body(), status=err.status, headers=headers)
        if on_scrape is not None:
            try:
                on_scrape()
            except Exception:  # stale gauges beat a failed scrape
                log.exception("metrics scrape hook failed")
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    for hook in setup:
        hook(app)
    return app


class HttpServer:
    """Serves an aiohttp app on `host:port` (port 0: an ephemeral one, see `.port`)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self._requested_port)
        await self._site.start()

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("http server not started")
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
