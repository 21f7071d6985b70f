"""The rendezvous store listens only on the address it is given; a replica started by the launch
script on loopback has no socket beyond loopback, is restarted when it fails (not when it is
stopped), and refuses a Drain without the admin token."""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
import psutil
import pytest
import torch.distributed as dist
from isthmus.center.auth import admin_metadata
from isthmus.center.rendezvous import bound_tcp_store
from isthmus.protocol import DrainRequest, decode, encode, rpc

from tests.center.conftest import free_port
from tests.center.test_cluster import REPO, _env, _stop

READY = re.compile(r"isthmus-center: ready on ([\d.]+):(\d+)")
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")  # the last: loopback on a dual-stack socket


def _listening(procs: list[psutil.Process]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of these processes."""
    out = []
    for p in procs:
        try:
            conns = p.net_connections("inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [(p.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def test_store_listens_on_the_given_address_only() -> None:
    me = psutil.Process()
    port = free_port()
    store = bound_tcp_store("127.0.0.1", port, 1, datetime.timedelta(seconds=10))
    try:
        mine = [(ip, p) for _, ip, p in _listening([me]) if p == port]
        assert mine == [("127.0.0.1", port)]
        client = dist.TCPStore("127.0.0.1", port, 1, False, datetime.timedelta(seconds=10))
        store.set("k", b"v")
        assert client.get("k") == b"v"
    finally:
        del store
    # what torchrun's own static rendezvous does (the bug): the same call binds every interface
    plain = dist.TCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=10))
    try:
        wide = [ip for _, ip, p in _listening([me]) if p == plain.port]
        print(f"\nplain TCPStore('127.0.0.1') listens on {wide}; bound_tcp_store on ['127.0.0.1']")
    finally:
        del plain


def _wait_ready_count(log: Path, proc: subprocess.Popen[bytes], count: int, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(READY.findall(log.read_text(errors="replace"))) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}: {log.read_text()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"not ready ({count}) in time: {log.read_text()[-3000:]}")


async def _drain(port: int, metadata: object = None) -> object:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(rpc.DRAIN, request_serializer=encode, response_deserializer=decode)
        return await stub(DrainRequest(grace_s=2.0), timeout=10, metadata=metadata)


@pytest.mark.slow
async def test_launch_script_on_loopback_restarts_a_failed_replica(tp_llama: Path, tmp_path: Path) -> None:
    port, rdzv = free_port(), free_port()
    log, token = tmp_path / "center.log", tmp_path / "admin.token"
    cmd = ["bash", str(REPO / "deploy" / "launch-center.sh"), "--model", str(tp_llama), "--device", "cpu",
           "--tp-size", "2", "--rdzv", f"127.0.0.1:{rdzv}", "--port", str(port), "--num-kv-blocks", "48",
           "--grace-s", "2", "--collective-timeout-s", "30", "--admin-token-file", str(token),
           "--restart", "1", "--restart-delay", "0.5"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
                                start_new_session=True)
    try:
        _wait_ready_count(log, proc, 1)
        tree = psutil.Process(proc.pid).children(recursive=True)
        listening = _listening(tree)
        print(f"\nlistening sockets of the replica's {len(tree)} processes: {sorted(set(listening))}")
        assert any(p == rdzv for _, _, p in listening) and any(p == port for _, _, p in listening)
        assert all(ip in LOOPBACK for _, ip, _ in listening), listening
        # a rank dies: the replica fails, and the launch script starts it again
        ranks = [p for p in tree if p.cmdline()[1:4] == ["-u", "-m", "isthmus.center.main"]]
        assert len(ranks) == 2
        os.kill(ranks[-1].pid, signal.SIGKILL)
        _wait_ready_count(log, proc, 2)
        assert "restart 1 of 1" in log.read_text()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _drain(port)  # no token: refused, and the replica keeps serving
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _drain(port, admin_metadata("a-wrong-token-0123456789"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)  # the operator's stop: drained, exit 0, not restarted
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert log.read_text().count("starting the replica") == 2
    finally:
        _stop([proc])
