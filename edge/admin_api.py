"""The admin API on the edge's HTTP port: config reload and center pool changes, token-protected.

Off unless ``[admin] token_sha256`` is set (the sha256 hex of the admin token, separate from every
API key). Each call needs ``Authorization: Bearer <admin token>``; the presented token is hashed
and compared in constant time. Missing token: 401; wrong token: 403 (and one ``auth.refused`` audit
record); both as JSON and before anything is read or changed.

- ``POST /admin/reload``: re-read the config file and apply it (`reload_apply.reload_node`);
  200 ``{"changes": [...]}`` or 400 ``{"error": ..., "errors": [field-named, ...]}``.
- ``GET /admin/pool``: the replicas with weight, health and requests in flight.
- ``POST /admin/pool`` with ``{"action": "add" | "remove" | "weight", "endpoint": "host:port",
  "weight": 1.0}``: change the pool at runtime (removal: no new requests, in-flight ones finish).
  A bad argument gets 400 naming the field. ``"pool": "candidate"`` changes the A/B candidate pool.
  An add of a replica whose ``Status.weights_digest`` differs from the pool's gets 409
  ``weights_mismatch`` naming both digests (pool_digest.py; off with ``[center] allow_mixed_weights``).
- ``GET /admin/migrations``: live migrations seen by this edge process (counts, longest stall).
- ``GET /admin/rollout``: the canary rollout's state; ``POST /admin/rollout`` with ``{"action":
  "start", "steps": [5, 25, 50, 100], "interval_s": 60, "max_error_rate": 0.01, "max_ttft_p95_s":
  2.0}`` or ``{"action": "pause" | "resume" | "abort"}`` (rollout_driver.py; needs ``[ab]``).

The mount is looked up per request (`node.config.admin`), so a reload that sets, changes or clears
the token takes effect on the next call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .migration import STALL_BUCKETS, STATS
from .pool_digest import WeightsMismatch
from .reload import ReloadRefused
from .reload_apply import make_pool, reload_node
from .rollout import RolloutError, RolloutPlan

if TYPE_CHECKING:  # the node imports this module
    from .node import EdgeNode
    from .pool import CenterPool

_ENDPOINT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def _error(status: int, message: str, code: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"message": message, "code": code, **extra}}, status=status)


def _bad_field(field: str, message: str) -> web.Response:
    return _error(400, f"{field}: {message}", "invalid_argument", field=field)


def check_admin_token(expected_sha256: str, presented: str | None) -> bool:
    """True when sha256(`presented`) equals `expected_sha256`, compared in constant time."""
    if not expected_sha256 or not presented:
        return False
    digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(digest.encode(), expected_sha256.encode())


class AdminApi:
    """The handlers, bound to an `EdgeNode` (read per request: a reload may replace its parts)."""

    def __init__(self, node: EdgeNode) -> None:
        self.node = node

    def _authorize(self, request: web.Request) -> web.Response | None:
        """None when the request carries the admin token, else the refusal to send."""
        expected = getattr(getattr(self.node.config, "admin", None), "token_sha256", "")
        if not expected:
            return _error(404, "the admin API is off ([admin] token_sha256 not set)", "not_found")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if check_admin_token(expected, token):
            return None
        reason = "admin token missing" if not token else "admin token not recognised"
        audit = getattr(self.node, "audit", None)
        if audit is not None:
            audit.record(
                "auth.refused",
                actor="-",
                source=request.remote or "",
                outcome="refused",
                details={"reason": reason, "path": request.path},
            )
        if not token:
            return _error(401, reason, "unauthenticated")
        return _error(403, reason, "forbidden")

    async def reload(self, request: web.Request) -> web.Response:
        if (refusal := self._authorize(request)) is not None:
            return refusal
        try:
            changes = reload_node(self.node, actor="admin", source=request.remote or "")
        except ReloadRefused as exc:
            return web.json_response(
                {
                    "error": {
                        "message": "reload refused; the running config stays",
                        "code": "invalid_config",
                        "errors": exc.errors,
                    }
                },
                status=400,
            )
        return web.json_response({"changes": [c.as_dict() for c in changes]})

    async def get_pool(self, request: web.Request) -> web.Response:
        if (refusal := self._authorize(request)) is not None:
            return refusal
        ab = getattr(self.node, "ab", None)
        view: dict[str, Any] = {"replicas": pool_view(self.node.pool)}
        if ab is not None:
            view["candidate"] = pool_view(ab.candidate)
            view["ab"] = {"percent": ab.split.percent, "sticky": ab.split.sticky}
        return web.json_response(view)

    async def get_migrations(self, request: web.Request) -> web.Response:
        """This process's live-migration counts and stalls (`edge/migration.STATS`), for `center swap`."""
        if (refusal := self._authorize(request)) is not None:
            return refusal
        return web.json_response({
            "started": STATS.started, "finished": STATS.finished, "failed": STATS.failed,
            "stall_s_max": STATS.stall_s_max, "stall_s_sum": STATS.stall_s_sum,
            "stall_buckets": list(STALL_BUCKETS), "stall_counts": list(STATS.stall_counts),
        })

    async def post_pool(self, request: web.Request) -> web.Response:
        if (refusal := self._authorize(request)) is not None:
            return refusal
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad_field("body", "expected a JSON object")
        if not isinstance(body, dict):
            return _bad_field("body", "expected a JSON object")
        action, endpoint, weight = body.get("action"), body.get("endpoint"), body.get("weight", 1.0)
        if action not in ("add", "remove", "weight"):
            return _bad_field("action", f'expected "add", "remove" or "weight", got {action!r}')
        if (
            not isinstance(endpoint, str)
            or not (m := _ENDPOINT.match(endpoint))
            or not 1 <= int(m.group(1)) <= 65535
        ):
            return _bad_field("endpoint", f'expected "host:port", got {endpoint!r}')
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1000:
            return _bad_field("weight", f"expected a number in [0, 1000], got {weight!r}")
        which = body.get("pool", "stable")
        ab = getattr(self.node, "ab", None)
        if which not in ("stable", "candidate") or (which == "candidate" and ab is None):
            return _bad_field("pool", f'expected "stable" or (with [ab] on) "candidate", got {which!r}')
        pool = ab.candidate if which == "candidate" and ab is not None else self.node.pool
        if pool is None and action != "add":
            return _bad_field("endpoint", f"{endpoint} is not in the pool (there is no center pool)")
        if pool is None:
            pool = await self._new_pool(endpoint, float(weight))
        else:
            try:
                if action == "add":
                    await pool.check_joining(endpoint)
                _change(pool, action, endpoint, float(weight))
            except WeightsMismatch as exc:
                return _error(
                    409, str(exc), "weights_mismatch", field="endpoint",
                    digest=exc.digest, pool_digest=exc.pool_digest,
                )
            except ValueError as exc:
                field, _, message = str(exc).partition(": ")
                return _bad_field(field if field in ("endpoint", "weight") else "endpoint", message)
        details = {
            "action": action,
            "pool": which,
            "endpoint": endpoint,
            "weight": weight if action != "remove" else None,
        }
        if self.node.audit is not None:
            self.node.audit.record("pool.change", actor="admin", source=request.remote or "", details=details)
        return web.json_response({"replicas": pool_view(pool)})

    async def get_rollout(self, request: web.Request) -> web.Response:
        if (refusal := self._authorize(request)) is not None:
            return refusal
        driver = getattr(self.node, "rollout", None)
        if driver is None:
            return _bad_field("ab", "the A/B split is off ([ab] candidate_endpoints not set): no rollout")
        return web.json_response(driver.status())

    async def post_rollout(self, request: web.Request) -> web.Response:
        """``{"action": "start", "steps": [5, 25, 50, 100], "interval_s": 60, "max_error_rate": 0.01,
        "max_ttft_p95_s": 2.0, "min_requests": 20}``, or ``{"action": "pause" | "resume" | "abort"}``."""
        if (refusal := self._authorize(request)) is not None:
            return refusal
        driver = getattr(self.node, "rollout", None)
        if driver is None:
            return _bad_field("ab", "the A/B split is off ([ab] candidate_endpoints not set): no rollout")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad_field("body", "expected a JSON object")
        if not isinstance(body, dict):
            return _bad_field("body", "expected a JSON object")
        action, who = body.get("action"), {"actor": "admin", "source": request.remote or ""}
        try:
            if action == "start":
                return web.json_response(driver.start(_plan(body), **who))
            if action in ("pause", "resume", "abort"):
                return web.json_response(getattr(driver, action)(**who))
        except (RolloutError, TypeError) as exc:
            field, _, message = str(exc).partition(": ")
            status = 409 if field == "status" else 400
            return _error(status, str(exc), "invalid_argument", field=field if message else "body")
        return _bad_field("action", f'expected "start", "pause", "resume" or "abort", got {action!r}')

    async def _new_pool(self, endpoint: str, weight: float) -> CenterPool:
        """The node had no center pool: one with `endpoint`, started (one health round)."""
        node = self.node
        pool = make_pool(node, [endpoint])
        pool.set_weight(endpoint, weight)
        await pool.start()
        node.pool = pool
        if node.orchestrator is not None:
            node.orchestrator.pool = node.pool
        return node.pool


_PLAN_FIELDS = ("steps", "interval_s", "max_error_rate", "max_ttft_p95_s", "min_requests")


def _plan(body: dict[str, Any]) -> RolloutPlan:
    """A `RolloutPlan` from a request body; RolloutError naming the field when one is bad."""
    kwargs: dict[str, Any] = {}
    for name in _PLAN_FIELDS:
        if name not in body:
            continue
        value = body[name]
        if name == "steps":
            if not isinstance(value, list) or not all(_is_number(v) for v in value):
                raise RolloutError("steps: expected a list of percentages")
            value = tuple(value)
        elif name == "min_requests":
            if isinstance(value, bool) or not isinstance(value, int):
                raise RolloutError(f"min_requests: expected an integer, got {value!r}")
        elif not (_is_number(value) or (name == "max_ttft_p95_s" and value is None)):
            raise RolloutError(f"{name}: expected a number, got {value!r}")
        kwargs[name] = value
    return RolloutPlan(**kwargs)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _change(pool: CenterPool, action: str, endpoint: str, weight: float) -> None:
    """Apply one pool change; ValueError ("endpoint: ..." / "weight: ...") when it cannot."""
    if action == "add":
        pool.add_replica(endpoint, weight)
    elif action == "remove":
        pool.remove_replica(endpoint)
    else:
        pool.set_weight(endpoint, weight)


def pool_view(pool: Any) -> list[dict[str, Any]]:
    """The replicas as JSON-ready dicts."""
    if pool is None:
        return []
    guard = getattr(pool, "digests", None)
    return [
        {
            "endpoint": r.endpoint,
            "weight": pool.weight(r.endpoint),
            "healthy": bool(r.is_healthy),
            "in_flight": r.num_outstanding,
            "weights_digest": r.status.weights_digest if r.status is not None else "",
            "weights_mismatch": guard.is_mismatched(r.endpoint) if guard is not None else False,
        }
        for r in pool.replicas
    ]


def admin_setup(node: EdgeNode) -> Callable[[web.Application], None]:
    """An `http_setup` hook mounting the admin routes (they answer 404 while no token is set)."""

    def setup(app: web.Application) -> None:
        api = AdminApi(node)
        app.router.add_post("/admin/reload", api.reload)
        app.router.add_get("/admin/pool", api.get_pool)
        app.router.add_post("/admin/pool", api.post_pool)
        app.router.add_get("/admin/migrations", api.get_migrations)
        app.router.add_get("/admin/rollout", api.get_rollout)
        app.router.add_post("/admin/rollout", api.post_rollout)

    return setup
