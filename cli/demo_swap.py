"""Watch a center replica swap live: `bash scripts/demo-swap` (`python -m isthmus.cli.demo_swap`).

On the embedded default models, in one process on 127.0.0.1: two center replicas A and B (real
gRPC) and an edge (real QUIC) whose pool holds only A. A few answers stream through the edge, first
without a swap (the reference), then again while `isthmus center swap`'s own code
(`cli/swap.run_swap`, over the edge's admin HTTP API) adds B, shifts the weights and drains A with
migrate halfway through the answers: every answer moves to B mid-stream. A ticker shows each
answer's progress and where the requests are; the end prints what happened: requests moved, the
longest stall, whether every answer completed and matches the reference.

A's steps are slowed (``--slow-ms``, default 50 ms) so the answers last long enough to watch and
the swap lands mid-answer on any machine. Every answer runs to ``--max-tokens`` (past the model's
end of turn) so each one is mid-stream at the swap. The tiny default center model writes
documentation-style English that is often wrong; what the demo shows is the swap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .demo import FREQUENCY_PENALTY, PRESENCE_PENALTY
from .swap import CenterAccess, EdgeAdmin, SwapPlan, SwapReport, drain_center, run_swap, summarize

PROMPTS = (
    "What does the assert statement do?",
    "What is a lambda expression?",
    "What does the import statement do?",
    "What is a generator?",
    "What does the with statement do?",
    "What is a decorator?",
)
MAX_TOKENS = 48


@dataclass
class Stream:
    """One answer as the app saw it."""

    ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def longest_gap_s(self) -> float:
        return max((b - a for a, b in zip(self.times, self.times[1:], strict=False)), default=0.0)


@contextlib.asynccontextmanager
async def replica(
    model: Path, token: str, slow_s: float = 0.0, *, num_kv_blocks: int = 256, max_num_seqs: int = 16,
    name: str | None = None,
) -> AsyncIterator[Any]:
    """A TP=1 center (CPU, fp32) on an ephemeral loopback port; ``slow_s`` sleeps before each step
    (on the engine's step thread), so answers on it take at least max_tokens x that long."""
    from isthmus.center.auth import AdminPolicy
    from isthmus.center.server import CenterServer
    from isthmus.center.service import CenterService
    from isthmus.engine.core.async_engine import AsyncEngine
    from isthmus.engine.core.options import EngineOptions

    engine = AsyncEngine(EngineOptions(
        model=str(model), dtype="float32", num_kv_blocks=num_kv_blocks, max_num_seqs=max_num_seqs
    ))
    await engine.start()
    if slow_s > 0:
        core, step = engine.core, engine.core.step

        def slow_step(*args: Any, **kwargs: Any) -> Any:
            time.sleep(slow_s)  # on the engine's step thread
            return step(*args, **kwargs)

        core.step = slow_step  # type: ignore[method-assign]
    service = CenterService(engine, engine.tokenizer, name or model.name, max_model_len=engine.max_model_len)
    server = CenterServer(service, host="127.0.0.1", port=0, admin=AdminPolicy(token=token))
    await server.start()
    await server.set_ready()
    try:
        yield server
    finally:
        await server.stop(grace_s=0.0)
        service.close()
        await engine.stop()


def edge_toml(model: Path, cert: Path, key: Path, center: str, admin_token: str) -> str:
    """The edge: fp32 model, anonymous loopback clients, the admin API on, fast health checks."""
    digest = hashlib.sha256(admin_token.encode()).hexdigest()
    return f"""[model]
path = {json.dumps(str(model))}
name = "{model.name}"

[engine]
num_kv_blocks = 128
max_num_seqs = 16

[listen]
host = "127.0.0.1"
port = 0
cert = {json.dumps(str(cert))}
key = {json.dumps(str(key))}

[http]
host = "127.0.0.1"
port = 0

[center]
endpoints = ["{center}"]
health_interval_s = 0.1

[confidence]
enabled = false

[admin]
token_sha256 = "{digest}"
"""


@contextlib.asynccontextmanager
async def edge(model: Path, work: Path, center: str, admin_token: str) -> AsyncIterator[Any]:
    from isthmus.edge.config import EdgeConfig
    from isthmus.edge.node import EdgeNode
    from isthmus.edge.tls import ensure_self_signed

    cert, key = work / "edge.crt", work / "edge.key"
    ensure_self_signed(cert, key)
    (work / "edge.toml").write_text(edge_toml(model, cert, key, center, admin_token))
    node = EdgeNode(EdgeConfig.load(work / "edge.toml"))
    await node.start()
    try:
        yield node
    finally:
        await node.stop(grace_s=0.0)


async def stream_all(address: str, ca: str, prompts: Sequence[str], max_tokens: int,
                     streams: list[Stream]) -> list[Stream]:
    """Every prompt at once, greedy, to the center; ``streams`` fills as tokens arrive."""
    from isthmus.client import connect
    from isthmus.client.errors import IsthmusError

    streams[:] = [Stream() for _ in prompts]
    # ignore_eos: every answer runs to max_tokens, so each one is mid-answer at the swap; the
    # demo's penalties keep the small greedy model off loops
    opts = {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True, "tier": "center",
            "presence_penalty": PRESENCE_PENALTY, "frequency_penalty": FREQUENCY_PENALTY}
    async with connect(address, ca=str(ca)) as client:
        async def one(i: int) -> None:
            out = streams[i]
            try:
                messages = [{"role": "user", "content": prompts[i]}]
                async for chunk in client.generate(messages, **opts):
                    out.ids.extend(chunk.token_ids)
                    out.text.append(chunk.text)
                    out.times.append(time.monotonic())
            except IsthmusError as exc:
                out.error = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return streams


async def ticker(streams: list[Stream], a: Any, b: Any, max_tokens: int, out: TextIO) -> None:
    """Every 0.25 s: each answer's tokens so far and how many requests each replica serves."""
    start = time.monotonic()
    while True:
        await asyncio.sleep(0.25)
        tokens = " ".join(f"{len(s.ids):2d}" for s in streams)
        out.write(f"  {time.monotonic() - start:4.1f} s  tokens [{tokens}] of {max_tokens}   "
                  f"in flight: A {len(a.service.in_flight)}, B {len(b.service.in_flight)}\n")
        out.flush()


def _median_tokens(streams: list[Stream]) -> int:
    return sorted(len(s.ids) for s in streams)[len(streams) // 2] if streams else 0


async def swap_live(node: Any, a: Any, b: Any, token: str, prompts: Sequence[str], max_tokens: int,
                    out: TextIO) -> tuple[list[Stream], SwapReport]:
    """Stream ``prompts`` and swap A -> B once the median answer is half done."""
    src, dst = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    streams: list[Stream] = []

    def drain(address: str, access: CenterAccess, grace_s: float) -> int:
        deadline = time.monotonic() + 60.0
        while _median_tokens(streams) < max_tokens // 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        out.write(f"isthmus demo-swap: answers half done: Drain(migrate=true) on A ({src})\n")
        return drain_center(address, access, grace_s)

    def say(line: str) -> None:
        out.write(f"isthmus demo-swap: {line}\n")
        out.flush()

    task = asyncio.create_task(stream_all(node.quic_address, node.config.listen.cert, prompts, max_tokens,
                                          streams))
    tick = asyncio.create_task(ticker(streams, a, b, max_tokens, out))
    try:
        while not (streams and all(s.ids or s.error for s in streams)) and not task.done():
            await asyncio.sleep(0.01)
        plan = SwapPlan(src, dst, ramp_s=0.2, steps=2, ready_timeout_s=60.0, settle_timeout_s=60.0)
        admin = EdgeAdmin(f"http://127.0.0.1:{node.http_port}", token)
        report = await asyncio.to_thread(run_swap, [admin], plan, CenterAccess(token), drain=drain, say=say)
        results = await task
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
    return results, report


def verdict(
    streams: list[Stream], reference: list[Stream], report: SwapReport, max_tokens: int
) -> tuple[str, bool]:
    """The closing lines and whether the swap went as it should."""
    complete = sum(1 for s in streams if not s.error and len(s.ids) == max_tokens)
    same = sum(1 for s, r in zip(streams, reference, strict=True) if s.ids == r.ids)
    gap = max((s.longest_gap_s for s in streams), default=0.0)
    ref_gap = max((r.longest_gap_s for r in reference), default=0.0)
    moved = report.migrations.finished
    ok = complete == len(streams) == same and moved == report.drained and not report.migrations.failed
    lines = [
        f"requests moved A -> B mid-answer: {moved} of {report.drained} in flight on A at the drain",
        f"longest stall between two tokens on any answer: {gap * 1000:.0f} ms "
        f"(without a swap: {ref_gap * 1000:.0f} ms)",
        f"answers complete: {complete}/{len(streams)}; identical to the run without a swap: "
        f"{same}/{len(streams)}",
        "the swap went through: no answer broke" if ok else "the swap did NOT go as it should",
    ]
    return "\n".join(lines), ok


async def run_demo_swap(out: TextIO = sys.stdout, num_streams: int = 4, max_tokens: int = MAX_TOKENS,
                        slow_s: float = 0.05, work: Path | None = None) -> int:
    """The whole demo; 0 when every answer moved, completed and matched the unswapped run."""
    from .defaults import ensure_default_model

    def say(line: str) -> None:
        out.write(f"isthmus demo-swap: {line}\n")
        out.flush()

    work = work or Path(tempfile.mkdtemp(prefix="isthmus-demo-swap-"))
    edge_model, center_model = (ensure_default_model(work, w, say) for w in ("edge", "center"))
    token = secrets.token_urlsafe(24)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(num_streams)]
    async with replica(center_model, token, slow_s) as a, replica(center_model, token) as b:
        say(f"replica A on 127.0.0.1:{a.port} (steps slowed {slow_s * 1000:.0f} ms), B on 127.0.0.1:{b.port}")
        async with edge(edge_model, work, f"127.0.0.1:{a.port}", token) as node:
            say(f"edge on {node.quic_address} (QUIC), pool: A only; {num_streams} answers of {max_tokens} "
                "tokens, first without a swap ...")
            reference = await stream_all(node.quic_address, node.config.listen.cert, prompts, max_tokens, [])
            say("again, swapping A -> B (`isthmus center swap`) while they stream:")
            streams, report = await swap_live(node, a, b, token, prompts, max_tokens, out)
    out.write("\n" + summarize(report) + "\n\n")
    for prompt, s in zip(prompts, streams, strict=True):
        out.write(f"> {prompt}\n {''.join(s.text).strip()}{'  [' + s.error + ']' if s.error else ''}\n")
    text, ok = verdict(streams, reference, report, max_tokens)
    out.write("\n" + text + "\n")
    out.flush()
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="isthmus demo-swap", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=4, help="answers streaming during the swap (1..16)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="tokens per answer (8..256)")
    p.add_argument("--slow-ms", type=float, default=50.0, help="sleep before each of A's steps (0..500)")
    a = p.parse_args(argv)
    if not 1 <= a.streams <= 16:
        p.error(f"--streams must be 1..16, got {a.streams}")
    if not 8 <= a.max_tokens <= 256:
        p.error(f"--max-tokens must be 8..256, got {a.max_tokens}")
    if not 0 <= a.slow_ms <= 500:
        p.error(f"--slow-ms must be 0..500, got {a.slow_ms}")
    try:
        demo = run_demo_swap(num_streams=a.streams, max_tokens=a.max_tokens, slow_s=a.slow_ms / 1000)
        return asyncio.run(demo)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
