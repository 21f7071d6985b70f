"""The edge's HTTP side: `/metrics`, `/healthz`, `/readyz`, and room for the OpenAI API.

`make_app(metrics, checks=..., setup=[...])` builds the aiohttp application; each `setup`
callable receives the app before it is frozen and may add routes (the OpenAI-compatible `/v1/...`
routes are mounted that way). `HttpServer` runs an app on a host and port.

- `/healthz`: the process is alive and its event loop answers (always 200).
- `/readyz`: 200 when every readiness check passes (e.g. "model": the engine is loaded, "center":
  a healthy center replica, when the config requires one), else 503; the body lists each check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

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
    if not isinstance(metrics, Metrics):
        node = metrics
        metrics = node.metrics
        if checks is None and callable(getattr(node, "ready_checks", None)):
            checks = node.ready_checks()
        if on_scrape is None and callable(getattr(node, "update_gauges", None)):
            on_scrape = node.update_gauges
    app = web.Application()
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
