"""Real edge and center processes on loopback for the reliability suite.

Each tier runs as its own OS process, as operators run it (`python -m isthmus.center.main`,
`deploy/launch-center.sh` for tensor parallelism, `python -m isthmus.edge.main`), so a drill can
SIGKILL it and the load generator in the test process does not share a GIL with the servers.
Every process gets its own session, so killing its group takes its children (torchrun's ranks).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from isthmus.cli.network import free_port

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0  # seconds: torch import + load + warm-up on two shared cores
CENTER_READY = re.compile(r"isthmus-center: ready on ([\d.]+):(\d+)")
EDGE_READY = re.compile(r"edge ready: QUIC on ([\d.]+):(\d+)")


@dataclass
class Proc:
    """One started server process (a session leader) and where it listens."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    host: str = ""
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def rss(self) -> int:
        """Resident memory (bytes) of the process and its children."""
        try:
            root = psutil.Process(self.popen.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the process and its children so far."""
        try:
            root = psutil.Process(self.popen.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def child_pids(self) -> list[int]:
        """The pids of the process's children (recursively)."""
        try:
            return [c.pid for c in psutil.Process(self.popen.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rank_pid(self, rank: int) -> int:
        """The pid of tensor-parallel rank `rank` under torchrun (read from its RANK variable)."""
        for child in psutil.Process(self.popen.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "isthmus.center.main" in " ".join(child.cmdline()):
                    if child.environ().get("RANK") == str(rank):
                        return int(child.pid)
        raise LookupError(f"{self.name}: no rank {rank} process")

    def kill(self) -> None:
        """SIGKILL the whole process group: no drain, no goodbye."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def tail(self, num_chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-num_chars:]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _spawn(name: str, cmd: list[str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    with open(log, "ab") as out:  # append: a restarted process keeps the earlier log
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=workdir, start_new_session=True
        )
    return Proc(name, popen, log)


def wait_ready(procs: list[Proc], pattern: dict[str, re.Pattern[str]]) -> None:
    """Wait (bounded) until every process logged its ready line; sets host and port."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(procs)
    while pending:
        for proc in list(pending):
            m = pattern[proc.name].search(proc.log.read_text(errors="replace"))
            if m:
                proc.host, proc.port = m.group(1), int(m.group(2))
                pending.remove(proc)
            elif not proc.is_alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f} s: {[p.name for p in pending]}")
        time.sleep(0.1)


def spawn_center(workdir: Path, model: Path, name: str, *, tp: int = 1) -> Proc:
    """A center replica on 127.0.0.1 (gRPC port picked by the center): TP=1 directly, TP>1 under
    torchrun via the launch script (gloo, one rank per process)."""
    # the launch script wants a real port; a TP=1 center picks its own (reported when ready)
    port = "0" if tp == 1 else str(free_port())
    common = ["--host", "127.0.0.1", "--port", port, "--num-kv-blocks", "256", "--max-num-seqs", "32"]
    if tp == 1:
        cmd = [sys.executable, "-m", "isthmus.center.main", "--model", str(model), *common]
        cmd += ["--dtype", "float32", "--grace-s", "1"]
    else:
        script = os.environ.get("ISTHMUS_SOAK_LAUNCH_SCRIPT", str(REPO / "deploy" / "launch-center.sh"))
        cmd = ["bash", script, "--model", str(model), "--device", "cpu"]
        cmd += ["--tp-size", str(tp), "--rdzv", f"127.0.0.1:{free_port()}", "--dtype", "float32"]
        cmd += ["--collective-timeout-s", "10", "--grace-s", "1", "--python", sys.executable, *common]
    return _spawn(name, cmd, workdir)


def edge_toml(
    model: Path,
    certs: tuple[str, str],
    api_key: str,
    centers: list[str],
    *,
    extra: str = "",
) -> str:
    """An edge configuration for the suite: fp32 tiny model, one API key, no mid-answer hand-over
    (answers must be comparable with one engine's greedy run)."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    endpoints = ", ".join(f'"{c}"' for c in centers)
    return f"""
[model]
path = "{model}"
name = "soak-edge"

[engine]
num_kv_blocks = 512
max_num_seqs = 64
max_num_batched_tokens = 1024

[listen]
host = "127.0.0.1"
port = 0
cert = "{certs[0]}"
key = "{certs[1]}"

[http]
host = "127.0.0.1"
port = 0

[auth]
allow_anonymous = false

[[auth.keys]]
name = "soak"
sha256 = "{digest}"
max_concurrent = 0

[center]
endpoints = [{endpoints}]
health_interval_s = 0.5
health_timeout_s = 1.0
breaker_cooldown_s = 2.0

[confidence]
enabled = false

{extra}
"""


def spawn_edge(workdir: Path, name: str, toml: str) -> Proc:
    path = workdir / f"{name}.toml"
    path.write_text(toml)
    return _spawn(name, [sys.executable, "-m", "isthmus.edge.main", "--config", str(path)], workdir)


def ready_patterns(procs: list[Proc]) -> dict[str, re.Pattern[str]]:
    return {p.name: (EDGE_READY if p.name.startswith("edge") else CENTER_READY) for p in procs}


def start_all(procs: list[Proc]) -> list[Proc]:
    """Wait until all of `procs` are ready; kill them all if one is not."""
    try:
        wait_ready(procs, ready_patterns(procs))
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return procs
