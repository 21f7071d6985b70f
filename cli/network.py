"""A whole isthmus network on this machine: a TP=2 center subprocess and an in-process edge node.

`LocalNetwork` is what `isthmus up` and `isthmus demo` share. The center runs under
`deploy/launch-center.sh` (torchrun, gloo, two ranks) in its own session so a terminal's Ctrl-C
reaches only us; we drain it with SIGTERM and kill its process group if it does not leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .defaults import (
    CONFIDENCE,
    PERPLEXITY_HIGH_NATS,
    PERPLEXITY_LOW_NATS,
    STATE_FILE,
    DefaultModelError,
    ensure_default_model,
    is_checkpoint,
)

REPO_DIR = Path(__file__).resolve().parent.parent
LAUNCH_SCRIPT = REPO_DIR / "deploy" / "launch-center.sh"
CENTER_READY_TIMEOUT_S = 300.0  # seconds: torch import + load + warm-up on two slow cores
CENTER_STOP_TIMEOUT_S = 20.0  # seconds before the center's process group is killed


class NetworkError(RuntimeError):
    """A step of bringing the network up failed; the message says what to do."""


@dataclass
class NetworkSettings:
    cache_dir: Path
    edge_model: Path | None = None
    center_model: Path | None = None
    port: int = 4433  # QUIC (0: any free port)
    http_port: int = 9090  # metrics / OpenAI API (0: any free port)
    center_port: int = 50051  # gRPC (0: any free port)
    tp: int = 2
    edge_quantization: str = "nf4"
    # prompt score at or above which the edge escalates: any code, math or multi-step signal
    router_threshold: float = 0.1
    # (window tokens, mean-entropy threshold nats, max checked tokens): measured on the trained
    # default edge model, see `defaults.CONFIDENCE`
    confidence: tuple[int, float, int] = CONFIDENCE
    grace_s: float = 2.0  # seconds in-flight answers get when stopping


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing holds right now (bound and released).

    Picked at random below the ephemeral range: a port the kernel handed out and took back could
    be handed out again (to gloo's pair sockets, a TCPStore, any outgoing connection) before the
    process we pass it to binds it.
    """
    high = _ephemeral_low()
    low = max(1024, high - 16384)
    for _ in range(64):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalNetwork:
    settings: NetworkSettings
    progress: Callable[[str], None] = field(default=lambda msg: print(f"isthmus: {msg}", flush=True))
    center: subprocess.Popen[bytes] | None = None
    node: Any = None
    center_address: str = ""
    ca_path: Path | None = None
    log_path: Path | None = None

    # --- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        s.cache_dir.mkdir(parents=True, exist_ok=True)
        edge_model = self._model(s.edge_model, "edge", "--edge-model")
        center_model = self._model(s.center_model, "center", "--center-model")
        await self._start_center(center_model)
        await self._start_edge(edge_model)

    def _model(self, given: Path | None, which: str, flag: str) -> Path:
        if given is None:
            try:
                return ensure_default_model(self.settings.cache_dir, which, self.progress)
            except DefaultModelError as exc:
                raise NetworkError(str(exc)) from exc
        path = given.expanduser().resolve()
        if not is_checkpoint(path):
            raise NetworkError(
                f"{flag}: {path} is not a checkpoint folder (needs config.json, *.safetensors and "
                f"tokenizer.json); give a Hugging Face model folder or leave {flag} out for the default"
            )
        return path

    async def _start_center(self, model: Path) -> None:
        s = self.settings
        port = s.center_port or free_port()
        self.center_address = f"127.0.0.1:{port}"
        self.log_path = s.cache_dir / "center.log"
        cmd = [
            "bash",
            str(LAUNCH_SCRIPT),
            "--model",
            str(model),
            "--device",
            "cpu",
            "--tp-size",
            str(s.tp),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--rdzv",
            f"127.0.0.1:{free_port()}",
            "--num-kv-blocks",
            "128",
            "--max-num-seqs",
            "16",
            "--grace-s",
            str(s.grace_s),
            "--python",
            sys.executable,
        ]
        self.progress(
            f"starting the center (TP={s.tp} over gloo, {model.name}) on {self.center_address}; "
            f"log: {self.log_path}"
        )
        env = dict(os.environ, OMP_NUM_THREADS="1")
        # appended, not truncated: the traceback of the run before (a crash) survives a restart
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"\n=== isthmus up: starting the center {stamp} ===\n".encode())
            log.flush()
            self.center = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        await self._wait_center_serving()

    async def _wait_center_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert self.center is not None
        started = time.monotonic()
        last_note = started
        async with grpc.aio.insecure_channel(self.center_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.center.poll() is not None:
                    raise NetworkError(
                        f"the center exited with status {self.center.returncode} before it was ready; "
                        f"see {self.log_path} (is --center-port {self.center_address} free?)"
                    )
                with contextlib.suppress(grpc.RpcError, asyncio.TimeoutError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                now = time.monotonic()
                if now - started > CENTER_READY_TIMEOUT_S:
                    raise NetworkError(
                        f"the center was not ready after {CENTER_READY_TIMEOUT_S:.0f} s; see {self.log_path}"
                    )
                if now - last_note >= 5.0:
                    self.progress(f"waiting for the center to load and warm up ... {now - started:.0f} s")
                    last_note = now
                await asyncio.sleep(0.25)
        self.progress(f"center SERVING on {self.center_address} after {time.monotonic() - started:.1f} s")

    async def _start_edge(self, model: Path) -> None:
        from isthmus.edge.config import EdgeConfig
        from isthmus.edge.node import EdgeNode
        from isthmus.edge.tls import ensure_self_signed

        s = self.settings
        cert, key = s.cache_dir / "edge.crt", s.cache_dir / "edge.key"
        if ensure_self_signed(cert, key):
            self.progress(f"wrote a self-signed certificate {cert}")
        self.ca_path = cert
        config_path = s.cache_dir / "edge.toml"
        config_path.write_text(self.edge_toml(model, cert, key))
        config = EdgeConfig.load(config_path)
        self.progress(f"starting the edge ({model.name}, {s.edge_quantization}) from {config_path} ...")
        self.node = EdgeNode(config)
        try:
            await self.node.start()
        except OSError as exc:  # a port in use, most likely
            raise NetworkError(
                f"the edge could not start: {exc}; is --port {s.port} (QUIC/UDP) or --http-port "
                f"{s.http_port} (TCP) in use? Pick others, or 0 for any free one"
            ) from exc
        self.progress(f"edge ready: QUIC {self.node.quic_address}, HTTP {self.node.http_address}")

    def edge_toml(self, model: Path, cert: Path, key: Path) -> str:
        s = self.settings
        window, conf_threshold, max_checked = s.confidence
        # prompt perplexity bounds measured on the trained default edge model (`defaults`)
        return f"""# written by `isthmus up`; rewritten on every start
[model]
path = {json.dumps(str(model))}
name = "{model.name}"
quantization = "{s.edge_quantization}"

[engine]
num_kv_blocks = 128
max_num_seqs = 16

[listen]
host = "127.0.0.1"
port = {s.port}
cert = {json.dumps(str(cert))}
key = {json.dumps(str(key))}

[http]
host = "127.0.0.1"
port = {s.http_port}

[center]
endpoints = ["{self.center_address}"]
health_interval_s = 0.5

[router]
threshold = {s.router_threshold}
perplexity_low_nats = {PERPLEXITY_LOW_NATS}
perplexity_high_nats = {PERPLEXITY_HIGH_NATS}

[confidence]
window = {window}
threshold = {conf_threshold}
max_checked_tokens = {max_checked}
"""

    # --- state file ------------------------------------------------------------------------------
    def write_state(self) -> Path:
        assert self.node is not None
        path = self.settings.cache_dir / STATE_FILE
        state = {
            "pid": os.getpid(),
            "edge": self.node.quic_address,
            "http": self.node.http_address,
            "ca": str(self.ca_path),
            "center": self.center_address,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)
        return path

    def remove_state(self) -> None:
        with contextlib.suppress(OSError):
            path = self.settings.cache_dir / STATE_FILE
            data = json.loads(path.read_text())
            if data.get("pid") == os.getpid():
                path.unlink()

    # --- stop ------------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Drain the edge, then the center; kill the center's process group if it lingers."""
        self.remove_state()
        if self.node is not None:
            self.progress("stopping the edge (draining) ...")
            with contextlib.suppress(Exception):
                await self.node.stop(grace_s=self.settings.grace_s)
            self.node = None
        proc, self.center = self.center, None
        if proc is None:
            return
        if proc.poll() is None:
            self.progress("stopping the center (draining) ...")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # the launch script forwards it to the ranks
            deadline = time.monotonic() + CENTER_STOP_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        # whatever is left of its session (ranks, torchrun agent) goes too: no orphans
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.progress("stopped")
