"""Config hot reload, the shell: read and check the new config whole, then swap it in at once.

`reload_node(node, new_config=None, actor=..., source=...)` (what SIGHUP and ``POST /admin/reload``
call) re-reads the node's config file (or takes `new_config`), validates it with
`EdgeConfig.load`, asks `plan_reload` what changes, builds every new part (router with its model
file, key store, allowlists) before touching the node, and then swaps them in without an `await`
in between, so no request sees half a reload. Requests in flight keep the router and key store
they started with (their leases release on the old store); new requests use the new ones.

Anything invalid (an unreadable file, a bad field, a field that cannot change live) raises
`ReloadRefused` naming the fields; the running config stays. Each attempt writes one ``reload``
audit record when the node has an audit log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .reload import Change, ReloadRefused, plan_reload

if TYPE_CHECKING:  # the node imports this module; the parts are built on demand below
    from .allowlist import Allowlist
    from .auth import ApiKeyStore
    from .config import CenterConfig, EdgeConfig
    from .node import EdgeNode
    from .pool import CenterPool
    from .router import Router

log = logging.getLogger(__name__)


def pool_weights(endpoints: list[str], weights: list[float]) -> dict[str, float]:
    """endpoint -> weight ([] weights: all 1.0)."""
    return dict(zip(endpoints, weights or [1.0] * len(endpoints), strict=True))


def apply_weights(pool: CenterPool, endpoints: list[str], weights: list[float]) -> None:
    """Set configured per-replica weights on a `CenterPool`."""
    for endpoint, weight in pool_weights(endpoints, weights).items():
        pool.set_weight(endpoint, weight)


def apply_pool_weights(pool: CenterPool, center: CenterConfig) -> None:
    """Set a `CenterConfig`'s per-replica weights on its `CenterPool`."""
    apply_weights(pool, center.endpoints, center.weights)


def make_pool(node: EdgeNode, endpoints: list[str]) -> CenterPool:
    """An unstarted `CenterPool` with the node's `[center]` TLS and options."""
    from .pool import CenterPool

    kwargs = node.config.center.pool_kwargs()
    on_health = node.metrics.set_replica_health if node.metrics is not None else None
    return CenterPool(endpoints, on_health=on_health, **kwargs)


def new_pool(node: EdgeNode, endpoints: list[str]) -> CenterPool:
    """`make_pool`, started in the background (it takes requests once its first health round
    passes)."""
    pool = make_pool(node, endpoints)
    task = asyncio.get_running_loop().create_task(pool.start())
    _starting.add(task)
    task.add_done_callback(_starting.discard)
    return pool


_starting: set[asyncio.Task[None]] = set()  # pool start tasks, referenced until done


def _load(node: EdgeNode, new_config: EdgeConfig | None) -> EdgeConfig:
    from .config import ConfigError, EdgeConfig

    if new_config is not None:
        return new_config
    path = getattr(node.config, "source", None)
    if not path:
        raise ReloadRefused(["source: the running config was not read from a file; nothing to reload"])
    try:
        return EdgeConfig.load(path)
    except (ConfigError, ValueError) as exc:
        raise ReloadRefused([str(exc)]) from None


@dataclass(frozen=True, slots=True)
class NewParts:
    """The parts a reload rebuilds from the new config, before any is swapped in."""

    router: Router
    auth: ApiKeyStore
    http_allowlist: Allowlist
    quic_allowlist: Allowlist


def _build(node: EdgeNode, new: EdgeConfig) -> NewParts:
    """Every new part, built before any is swapped in (a bad router file refuses here)."""
    from .allowlist import Allowlist
    from .router import Router

    if old_ab_enabled(node) != new.ab.enabled:
        raise ReloadRefused(["ab.candidate_endpoints: the A/B split cannot be turned on or off live"])
    try:
        return NewParts(
            router=Router(new.router),
            auth=new.auth.store(audit=node.audit),
            http_allowlist=Allowlist(new.http.allow),
            quic_allowlist=Allowlist(new.listen.allow),
        )
    except ValueError as exc:
        raise ReloadRefused([str(exc)]) from None


def old_ab_enabled(node: EdgeNode) -> bool:
    return getattr(node, "ab", None) is not None


def _swap_auth(
    node: EdgeNode, old_store: ApiKeyStore | None, store: ApiKeyStore, old: EdgeConfig, new: EdgeConfig
) -> None:
    if old_store is not None and old.auth.throttle_limits() == new.auth.throttle_limits():
        store.throttle = old_store.throttle  # an address throttled for wrong keys stays throttled
    if old_store is not None and hasattr(old_store, "_in_use"):
        # one count of requests in flight per key across the swap: leases taken before it release
        # on the old store into the same dict, so a reload never lets a key exceed its limit
        store._in_use = old_store._in_use
    node.auth = store
    if node.orchestrator is not None:
        node.orchestrator.auth = store
    if node.quic is not None:
        node.quic.auth = store


def _swap_pool(node: EdgeNode, new: EdgeConfig) -> None:
    """Add and remove replicas and set weights; create the pool if the node had none."""
    if node.pool is None:
        if new.center.endpoints:
            node.pool = new_pool(node, list(new.center.endpoints))
            apply_pool_weights(node.pool, new.center)
            if node.orchestrator is not None:
                node.orchestrator.pool = node.pool
        return
    _resize(node.pool, pool_weights(new.center.endpoints, new.center.weights))


def _resize(pool: CenterPool, wanted: dict[str, float]) -> None:
    """Make `pool` hold exactly the endpoints of `wanted`, with its weights."""
    for endpoint in [e for e in pool.endpoints if e not in wanted]:
        pool.remove_replica(endpoint)  # in-flight calls on it finish first
    for endpoint, weight in wanted.items():
        if endpoint in pool.endpoints:
            pool.set_weight(endpoint, weight)
        else:
            pool.add_replica(endpoint, weight)


def _swap(node: EdgeNode, old: EdgeConfig, new: EdgeConfig, parts: NewParts) -> None:
    """All swaps, synchronously: the event loop runs no request in between."""
    node.router = parts.router
    if node.orchestrator is not None:
        node.orchestrator.router = parts.router
    _swap_auth(node, node.auth, parts.auth, old, new)
    node.http_allowlist = parts.http_allowlist
    if node.quic is not None:
        node.quic.allowlist = parts.quic_allowlist
    if old.center.endpoints != new.center.endpoints or old.center.weights != new.center.weights:
        _swap_pool(node, new)
    ab = getattr(node, "ab", None)
    if ab is not None and old.ab != new.ab:
        split = new.ab.split()  # open answers keep their variant; new ones use the new split
        driver = getattr(node, "rollout", None)
        if driver is not None and driver.rollout.state.status != "idle":  # the rollout owns the share
            split = dataclasses.replace(split, percent=ab.split.percent)
        ab.split = split
        _resize(ab.candidate, pool_weights(new.ab.candidate_endpoints, new.ab.candidate_weights))
    if new.log.level and new.log.level != old.log.level:
        logging.getLogger().setLevel(new.log.level)
    node.config = new


def reload_node(
    node: EdgeNode, new_config: EdgeConfig | None = None, *, actor: str = "sighup", source: str = ""
) -> list[Change]:
    """Validate and apply a new config to a started `EdgeNode`; the list of what changed.

    Raises `ReloadRefused` (field-named errors) and leaves the node as it was when the new config
    is invalid or changes something that needs a restart.
    """
    old = node.config
    try:
        new = _load(node, new_config)
        changes = plan_reload(old, new)
        if changes:
            _swap(node, old, new, _build(node, new))
    except ReloadRefused as exc:
        _audit(node, actor, source, "refused", {"errors": exc.errors})
        log.warning("config reload refused: %s", exc)
        raise
    _audit(node, actor, source, "ok", {"changes": [c.as_dict() for c in changes]})
    log.info("config reloaded: %s", ", ".join(c.field for c in changes) or "no changes")
    return changes


def _audit(node: EdgeNode, actor: str, source: str, outcome: str, details: dict[str, Any]) -> None:
    if node.audit is not None:
        node.audit.record("config.reload", actor=actor, source=source, outcome=outcome, details=details)
