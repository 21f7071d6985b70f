"""`EdgeNode`: one edge process's parts, wired and started in order, stopped by draining.

Start: engine (loads the quantized model), center pool, router, API keys, metrics, then the
orchestrator, the QUIC listener and the HTTP app (`/metrics`, `/healthz`, `/readyz`, and whatever
routes `edge/http.py` mounts on `node.orchestrator`). Stop: QUIC drains (stop admitting, let
in-flight answers finish within the grace period, cancel the rest), then HTTP, pool and engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from isthmus.protocol import ErrorCode

from .buffers import BufferLimits
from .orchestrator import Orchestrator
from .quic_server import EdgeQuicServer, QuicLimits
from .seams import ManagedEngine

if TYPE_CHECKING:  # the parts are imported where they are built: a node without them loads less
    from aiohttp import web

    from .ab_pools import AbPools
    from .allowlist import Allowlist
    from .audit import AuditLog
    from .auth import ApiKeyStore
    from .config import EdgeConfig
    from .http import HttpServer
    from .metrics import Metrics
    from .pool import CenterPool
    from .reload import Change
    from .rollout_driver import RolloutDriver
    from .router import Router

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0  # seconds between queue-depth / KV-usage gauge updates
DRAIN_GRACE_S = 30.0  # seconds in-flight answers get to finish on SIGTERM


class EdgeNode:
    """An edge node built from an `EdgeConfig`. Tests may pass `engine` (an unstarted or started
    `AsyncEngine`) and `buffer_limits` to override the configured watermarks."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        engine: ManagedEngine | None = None,
        buffer_limits: BufferLimits | None = None,
        http_setup: Iterable[Callable[[web.Application], None]] = (),
    ) -> None:
        self.config = config
        self.engine = engine
        self.buffer_limits = buffer_limits
        self.metrics: Metrics | None = None
        self.pool: CenterPool | None = None
        self.router: Router | None = None
        self.auth: ApiKeyStore | None = None
        self.http_allowlist: Allowlist | None = None  # what the HTTP middleware checks (http.py)
        self.audit: AuditLog | None = None
        self.ab: AbPools | None = None  # when [ab] splits center traffic (ab_pools.py)
        self.rollout: RolloutDriver | None = None  # its canary driver (rollout_driver.py)
        self.orchestrator: Orchestrator | None = None
        self.quic: EdgeQuicServer | None = None
        self.http_server: HttpServer | None = None
        self.http_port: int | None = None
        # hooks given the aiohttp app before it starts (the OpenAI `/v1` routes mount here; they
        # reach the request path through `node.orchestrator`)
        self.http_setup: list[Callable[[web.Application], None]] = list(http_setup)
        self.is_ready = False
        self.is_draining = False
        self._gauge_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        from .metrics import Metrics
        from .router import Router

        self.metrics = Metrics()
        self.router = Router(cfg.router)
        self.audit = cfg.audit.open()  # admin actions and refused authentications (None: off)
        self.auth = cfg.auth.store(audit=self.audit)
        from .allowlist import Allowlist

        self.http_allowlist = Allowlist(cfg.http.allow)
        engine = await self._start_engine()
        self.pool = self._make_pool()
        if self.pool is not None:
            await self.pool.start()
        from .ab_pools import start_ab_pools

        self.ab = await start_ab_pools(self)
        if self.ab is not None:
            from .rollout_driver import RolloutDriver

            self.rollout = RolloutDriver(self.ab, cfg.ab.rollout_state, audit=self.audit)
            self.rollout.start_loop()
        self.orchestrator = Orchestrator(
            engine,
            self.ab if self.ab is not None else self.pool,
            self.router,
            self.metrics,
            self.auth,
            monitor_factory=cfg.confidence.monitor if cfg.confidence.enabled else None,
            model_name=cfg.model_name,
            max_prompt_tokens=cfg.limits.max_prompt_tokens,
        )
        await self._start_http()
        self.quic = EdgeQuicServer(
            self.orchestrator.handle,
            certfile=cfg.listen.cert,
            keyfile=cfg.listen.key,
            host=cfg.listen.host,
            port=cfg.listen.port,
            limits=self._quic_limits(),
            on_error=self._record_stream_error,
            auth=self.auth,
            allowlist=Allowlist(cfg.listen.allow),
            prompt_check=self.orchestrator.refuse_prompt_bytes,
        )
        await self.quic.start()
        self._gauge_task = asyncio.get_running_loop().create_task(self._update_gauges())
        self.is_ready = True
        log.info("edge node started: QUIC %s, HTTP %s", self.quic_address, self.http_address)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop every part (idempotent)."""
        if grace_s is None:
            grace_s = DRAIN_GRACE_S
        self.is_ready = False
        self.is_draining = True
        if self.quic is not None:
            num = await self.quic.drain(grace_s)
            log.info("drained %d in-flight request(s)", num)
            await self.quic.close()
            self.quic = None
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauge_task
            self._gauge_task = None
        if self.http_server is not None:
            await self.http_server.stop()
            self.http_server = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.rollout is not None:
            await self.rollout.close()
            self.rollout = None
        if self.ab is not None:
            await self.ab.candidate.close()
            self.ab = None
        if self.engine is not None:
            await self.engine.stop()

    # --- addresses -------------------------------------------------------------------------------
    @property
    def quic_port(self) -> int:
        if self.quic is None:
            raise RuntimeError("edge node not started")
        return self.quic.port

    @property
    def quic_address(self) -> str:
        return f"{self.config.listen.host}:{self.quic_port}"

    @property
    def http_address(self) -> str:
        return f"{self.config.http.host}:{self.http_port}"

    # --- parts -----------------------------------------------------------------------------------
    async def _start_engine(self) -> ManagedEngine:
        if self.engine is None:
            from isthmus.engine.core.async_engine import AsyncEngine

            self.engine = AsyncEngine(self.config.engine_options())
        if not getattr(self.engine, "is_running", False):
            await self.engine.start()
        return self.engine

    def _started(self) -> tuple[ManagedEngine, Metrics]:
        """The engine and metrics of a started node (RuntimeError before `start`)."""
        if self.engine is None or self.metrics is None:
            raise RuntimeError("edge node not started")
        return self.engine, self.metrics

    def _make_pool(self) -> CenterPool | None:
        center = self.config.center
        if not center.endpoints:
            return None
        from .pool import CenterPool
        from .reload_apply import apply_pool_weights

        _, metrics = self._started()
        pool = CenterPool(center.endpoints, on_health=metrics.set_replica_health, **center.pool_kwargs())
        apply_pool_weights(pool, center)  # per-replica [center] weights
        return pool

    def _quic_limits(self) -> QuicLimits:
        limits = self.config.limits.quic_limits()
        if self.buffer_limits is not None:
            limits = dataclasses.replace(limits, buffers=self.buffer_limits)
        return limits

    async def _start_http(self) -> None:
        if not self.config.http.enabled:
            return
        from .admin_api import admin_setup
        from .http import HttpServer, make_app
        from .openai_api import openai_setup

        app = make_app(self, setup=[openai_setup(self), admin_setup(self), *self.http_setup])
        server = HttpServer(app, self.config.http.host, self.config.http.port)
        await server.start()
        self.http_server = server
        self.http_port = server.port

    def reload(
        self, new_config: EdgeConfig | None = None, *, actor: str = "sighup", source: str = ""
    ) -> list[Change]:
        """Validate and apply a new config (default: re-read the file) atomically; the changes.
        Raises `ReloadRefused` naming the fields and keeps the running config (reload_apply.py)."""
        from .reload_apply import reload_node

        return reload_node(self, new_config, actor=actor, source=source)

    def ready_checks(self) -> dict[str, Callable[[], bool]]:
        """What `/readyz` reports: the model is loaded and the node not draining (and a healthy
        center replica, when the config asks for one)."""
        checks: dict[str, Callable[[], bool]] = {
            "model": lambda: self.is_ready and bool(getattr(self.engine, "is_running", False)),
            "not_draining": lambda: not self.is_draining,
        }
        if self.config.http.ready_requires_center:
            checks["center"] = lambda: self.pool is not None and self.pool.has_healthy()
        return checks

    def _record_stream_error(self, code: ErrorCode) -> None:
        """Errors the QUIC layer writes itself (bad frames, cancels, slow readers, draining)."""
        _, metrics = self._started()
        metrics.record_error(code.name)
        if code == ErrorCode.SLOW_READER:
            metrics.record_slow_reader()

    def update_gauges(self) -> None:
        """Queue depth, running requests, KV usage and connections, sampled now."""
        engine, metrics = self._started()
        load = engine.load()
        metrics.set_load(
            load.num_waiting, load.num_running, load.num_free_kv_blocks, load.num_total_kv_blocks
        )
        metrics.set_prefix_cache(
            load.prefix_cache_hit_rate, load.num_cached_kv_blocks, load.num_prefix_evictions
        )
        if self.quic is not None:
            metrics.set_connections(self.quic.num_connections)

    async def _update_gauges(self) -> None:
        while True:
            try:
                self.update_gauges()
            except Exception:  # a gauge must never take the node down
                log.debug("gauge update failed", exc_info=True)
            await asyncio.sleep(GAUGE_INTERVAL_S)
