"""`isthmus center swap`: move a center replica's traffic and in-flight requests to another one.

    isthmus center swap --edge http://10.0.0.5:9090 --from 10.0.1.1:50051 --to 10.0.1.2:50051 \\
        --ramp 30s --admin-token-file edge-admin.token --center-token-file center-admin.token

Steps, on every ``--edge`` (each edge's admin API, ``[admin] token_sha256``):

1. add B to the pool at weight 0 (no traffic yet) and wait until every edge sees it healthy;
2. shift new traffic from A to B in ``--steps`` weight steps spread over ``--ramp``;
3. call A's ``Drain(migrate=true)`` over gRPC (the center's admin token or client certificate):
   each request in flight on A ends with its state there and the edge resumes it on B;
4. wait until no edge has a request in flight on A, then remove A from every pool, and wait until
   every migration the edges started has finished or failed;
5. print what happened: requests moved, the longest stall the edges measured, failures.

A that cannot be reached (a failed GPU) is not an error: its drain is skipped (the edges'
failover already retried or failed its requests) and A is removed. The plan (`weight_steps`,
`summarize`) is pure; `EdgeAdmin` and `drain_center` are the thin I/O.

Exit status: 0 swapped, 1 refused or failed on the way (the message says at which step), 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rollout import parse_duration

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MIGRATION_FIELDS = ("started", "finished", "failed")


class SwapError(RuntimeError):
    """A step of the swap could not be done; the message names the step and the edge."""


# --- the plan (pure) ---------------------------------------------------------------------------


def weight_steps(base: float, steps: int) -> list[tuple[float, float]]:
    """(weight of A, weight of B) for each step: B takes ``base`` over from A in ``steps`` equal
    shares; the last step is (0, base). ``base``: A's weight before the swap."""
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    return [(round(base * (steps - i) / steps, 6), round(base * i / steps, 6)) for i in range(1, steps + 1)]


def find_replica(view: dict[str, Any], endpoint: str) -> dict[str, Any] | None:
    """The replica ``endpoint`` in a ``GET /admin/pool`` answer, or None."""
    return next((r for r in view.get("replicas", []) if r.get("endpoint") == endpoint), None)


@dataclass(slots=True)
class MigrationCounts:
    """An edge's ``GET /admin/migrations`` answer, or the difference of two of them."""

    started: int = 0
    finished: int = 0
    failed: int = 0
    stall_s_max: float = 0.0
    stall_counts: list[int] = field(default_factory=list)
    stall_buckets: list[float] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> MigrationCounts:
        return cls(
            **{k: int(body.get(k, 0)) for k in MIGRATION_FIELDS},
            stall_s_max=float(body.get("stall_s_max", 0.0)),
            stall_counts=[int(c) for c in body.get("stall_counts", [])],
            stall_buckets=[float(b) for b in body.get("stall_buckets", [])],
        )

    def since(self, before: MigrationCounts) -> MigrationCounts:
        """What happened between ``before`` and this reading (counters only grow)."""
        counts = [a - b for a, b in zip(self.stall_counts, before.stall_counts, strict=False)]
        return MigrationCounts(
            started=self.started - before.started,
            finished=self.finished - before.finished,
            failed=self.failed - before.failed,
            stall_s_max=self.stall_s_max if self.stall_s_max > before.stall_s_max else 0.0,
            stall_counts=counts,
            stall_buckets=list(self.stall_buckets),
        )

    def longest_stall(self) -> tuple[float, bool] | None:
        """(seconds, exact) for a difference: the edge's running maximum when the swap raised it
        (exact), else the smallest histogram bound holding every stall of the swap (an upper
        bound). None when no migration finished."""
        if self.finished <= 0:
            return None
        if self.stall_s_max > 0:
            return self.stall_s_max, True
        for bound, count in zip(self.stall_buckets, self.stall_counts, strict=False):
            if count >= self.finished:
                return bound, False
        return float("inf"), False


@dataclass(slots=True)
class SwapReport:
    """What one swap did, for printing."""

    source: str
    target: str
    edges: list[str]
    drained: int | None = None  # A's in-flight count when its drain began (None: A unreachable)
    drain_error: str = ""
    migrations: MigrationCounts = field(default_factory=MigrationCounts)
    still_in_flight: int = 0  # on A when it was removed (the wait ran out)
    steps: list[tuple[float, float]] = field(default_factory=list)


def summarize(report: SwapReport) -> str:
    """The lines `center swap` prints at the end."""
    m = report.migrations
    lines = [f"swapped {report.source} -> {report.target} on {len(report.edges)} edge(s)"]
    lines.append("  weights (A, B): " + " -> ".join(f"({a:g}, {b:g})" for a, b in report.steps))
    if report.drained is None:
        lines.append(f"  drain of {report.source} skipped: {report.drain_error} (edge failover handled it)")
    else:
        lines.append(f"  in flight on {report.source} at the drain: {report.drained}")
    lines.append(f"  requests moved: {m.finished} of {m.started} started; failed: {m.failed}")
    stall = m.longest_stall()
    if stall is None:
        lines.append("  longest stall: - (no migration finished)")
    else:
        seconds, exact = stall
        lines.append(f"  longest stall: {'' if exact else '<= '}{seconds * 1000:.1f} ms")
    if report.still_in_flight:
        lines.append(f"  still in flight on {report.source} when removed: {report.still_in_flight}")
    return "\n".join(lines)


# --- I/O ---------------------------------------------------------------------------------------


class EdgeAdmin:
    """One edge's admin API (``/admin/pool``, ``/admin/migrations``) over HTTP."""

    def __init__(self, url: str, token: str, timeout_s: float = 10.0) -> None:
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET (``body`` None) or POST; SwapError on an HTTP error or an unreachable edge."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST" if data is not None else "GET",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                answer: dict[str, Any] = json.loads(resp.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            raw = exc.read() or b"{}"
            try:
                message = json.loads(raw).get("error", {}).get("message", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            raise SwapError(f"edge {self.url}: {path} answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SwapError(f"edge {self.url}: {path} failed: {exc}") from None

    def pool(self) -> dict[str, Any]:
        return self.call("/admin/pool")

    def change(self, action: str, endpoint: str, weight: float = 1.0) -> dict[str, Any]:
        return self.call("/admin/pool", {"action": action, "endpoint": endpoint, "weight": weight})

    def migrations(self) -> MigrationCounts:
        return MigrationCounts.from_json(self.call("/admin/migrations"))


@dataclass(slots=True)
class CenterAccess:
    """How to make an admin call on a center: its token and/or a client certificate (mutual TLS)."""

    token: str = ""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""


def drain_center(address: str, access: CenterAccess, grace_s: float, timeout_s: float = 30.0) -> int:
    """``Drain(migrate=true)`` on the center at ``address``: its in-flight count when it began.
    Raises SwapError (unreachable, refused)."""
    import grpc
    from isthmus.protocol import DrainReply, DrainRequest, decode, encode, rpc

    if access.ca is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=access.ca.read_bytes(),
            private_key=access.key.read_bytes() if access.key else None,
            certificate_chain=access.cert.read_bytes() if access.cert else None,
        )
        opts = [("grpc.ssl_target_name_override", access.server_name)] if access.server_name else []
        channel = grpc.secure_channel(address, creds, options=opts)
    else:
        channel = grpc.insecure_channel(address)
    metadata = [("authorization", f"Bearer {access.token}")] if access.token else None
    try:
        stub = channel.unary_unary(rpc.DRAIN, request_serializer=encode, response_deserializer=decode)
        reply = stub(DrainRequest(grace_s=grace_s, migrate=True), metadata=metadata, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise SwapError(f"Drain on {address}: {exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
    if not isinstance(reply, DrainReply):
        raise SwapError(f"Drain on {address}: unexpected answer {type(reply).__name__}")
    return int(reply.num_in_flight)


# --- the swap ----------------------------------------------------------------------------------


@dataclass(slots=True)
class SwapPlan:
    """What to swap and how fast."""

    source: str
    target: str
    ramp_s: float = 30.0
    steps: int = 5
    ready_timeout_s: float = 300.0
    drain_grace_s: float = 30.0
    settle_timeout_s: float = 60.0  # for A's migrated requests to leave every edge


def _wait(check: Callable[[], bool], timeout_s: float, sleep: Callable[[float], None],
          clock: Callable[[], float], what: str, poll_s: float = 0.2) -> None:
    deadline = clock() + timeout_s
    while not check():
        if clock() >= deadline:
            raise SwapError(f"gave up after {timeout_s:g} s waiting for {what}")
        sleep(poll_s)


def run_swap(edges: Sequence[EdgeAdmin], plan: SwapPlan, access: CenterAccess, *,
             drain: Callable[[str, CenterAccess, float], int] = drain_center,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
             say: Callable[[str], None] = lambda _s: None) -> SwapReport:
    """Do the swap on every edge (see the module docstring); SwapError names the failed step."""
    src, dst = plan.source, plan.target
    report = SwapReport(src, dst, [e.url for e in edges])
    before = [e.migrations() for e in edges]
    bases = []
    for edge in edges:
        view = edge.pool()
        a = find_replica(view, src)
        if a is None:
            raise SwapError(f"edge {edge.url}: {src} is not in its pool")
        bases.append(float(a.get("weight", 1.0)))
        if find_replica(view, dst) is None:
            say(f"adding {dst} to {edge.url} at weight 0")
            edge.change("add", dst, 0.0)
    say(f"waiting for {dst} to be healthy on every edge ...")
    _wait(lambda: all(bool((find_replica(e.pool(), dst) or {}).get("healthy")) for e in edges),
          plan.ready_timeout_s, sleep, clock, f"{dst} to be healthy on every edge")
    base = max(bases)
    report.steps = weight_steps(base, plan.steps)
    for i, (wa, wb) in enumerate(report.steps):
        for edge in edges:
            edge.change("weight", dst, wb)
            edge.change("weight", src, wa)
        say(f"step {i + 1}/{plan.steps}: weights {src}={wa:g} {dst}={wb:g}")
        if i + 1 < plan.steps:
            sleep(plan.ramp_s / plan.steps)
    try:
        report.drained = drain(src, access, plan.drain_grace_s)
        say(f"drained {src} with migrate: {report.drained} request(s) in flight")
    except SwapError as exc:
        report.drain_error = str(exc)
        say(f"could not drain {src} ({exc}); removing it anyway")
    else:
        def settled() -> bool:
            return all(int((find_replica(e.pool(), src) or {}).get("in_flight", 0)) == 0 for e in edges)

        try:
            _wait(settled, plan.settle_timeout_s, sleep, clock, f"no request in flight on {src}")
        except SwapError:
            report.still_in_flight = sum(
                int((find_replica(e.pool(), src) or {}).get("in_flight", 0)) for e in edges)
    for edge in edges:
        edge.change("remove", src)
    report.migrations = _settled_migrations(edges, before, plan, sleep, clock)
    return report


def _settled_migrations(edges: Sequence[EdgeAdmin], before: list[MigrationCounts], plan: SwapPlan,
                        sleep: Callable[[float], None], clock: Callable[[], float]) -> MigrationCounts:
    """The swap's migrations once each one started has finished or failed (a migration finishes
    at the next replica's first message), or what they are when the settle wait runs out."""
    deltas: list[MigrationCounts] = []

    def settled() -> bool:
        deltas[:] = [e.migrations().since(b) for e, b in zip(edges, before, strict=True)]
        return all(d.finished + d.failed >= d.started for d in deltas)

    try:
        _wait(settled, plan.settle_timeout_s, sleep, clock, "the migrations to finish")
    except SwapError:
        pass  # reported as started but not finished
    return _total(deltas)


def _total(parts: list[MigrationCounts]) -> MigrationCounts:
    """The swap's migrations over every edge (the longest stall of any)."""
    first = parts[0]
    total = MigrationCounts(stall_buckets=list(first.stall_buckets),
                            stall_counts=[0] * len(first.stall_counts))
    for p in parts:
        total.started += p.started
        total.finished += p.finished
        total.failed += p.failed
        total.stall_s_max = max(total.stall_s_max, p.stall_s_max)
        total.stall_counts = [a + b for a, b in zip(total.stall_counts, p.stall_counts, strict=False)]
    return total


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isthmus center swap",
        description="move a center replica's traffic and in-flight requests to another replica",
    )
    p.add_argument("--edge", action="append", required=True, metavar="ADMIN_URL",
                   help="an edge's HTTP address, e.g. http://127.0.0.1:9090 (repeat for several edges)")
    p.add_argument("--from", dest="source", required=True, metavar="HOST:PORT", help="the replica to retire")
    p.add_argument("--to", dest="target", required=True, metavar="HOST:PORT", help="the replica taking over")
    p.add_argument("--ramp", type=parse_duration, default=30.0, help="time to shift new traffic (30s, 2m)")
    p.add_argument("--steps", type=int, default=5, help="weight steps over the ramp (default 5)")
    p.add_argument("--admin-token-file", help="the edges' admin token (default: $ISTHMUS_ADMIN_TOKEN)")
    p.add_argument("--center-token-file", help="the centers' admin token (default: --admin-token-file's)")
    p.add_argument("--center-ca", type=Path, help="CA of the centers (mutual TLS)")
    p.add_argument("--center-cert", type=Path, help="client certificate for the centers' admin calls")
    p.add_argument("--center-key", type=Path, help="its private key")
    p.add_argument("--ready-timeout", type=parse_duration, default=300.0, help="wait for B (default 5m)")
    p.add_argument("--drain-grace", type=parse_duration, default=30.0, help="A's drain grace (default 30s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per admin call")
    return p


def _read(path: str | None, env: str = "") -> str:
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    return os.environ.get(env, "").strip() if env else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.steps < 1:
        parser.error(f"--steps must be >= 1, got {a.steps}")
    if a.source == a.target:
        parser.error("--from and --to name the same replica")
    try:
        token = _read(a.admin_token_file, "ISTHMUS_ADMIN_TOKEN")
        center_token = _read(a.center_token_file) if a.center_token_file else token
    except OSError as exc:
        print(f"isthmus center swap: cannot read a token file: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not token:
        parser.error("no edge admin token (--admin-token-file or $ISTHMUS_ADMIN_TOKEN)")
    plan = SwapPlan(a.source, a.target, a.ramp, a.steps, a.ready_timeout, a.drain_grace)
    access = CenterAccess(center_token, a.center_ca, a.center_cert, a.center_key)
    edges = [EdgeAdmin(url, token, a.timeout) for url in a.edge]
    try:
        report = run_swap(edges, plan, access, say=lambda s: print(f"isthmus center swap: {s}", flush=True))
    except SwapError as exc:
        print(f"isthmus center swap: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summarize(report), flush=True)
    return EXIT_FAILED if report.migrations.failed or report.still_in_flight else EXIT_OK
