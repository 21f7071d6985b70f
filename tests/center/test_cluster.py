"""The center as operators run it: `python -m isthmus.center.main` and a two-node TP=2 replica
started by two `deploy/launch-center.sh` invocations on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from isthmus.center.auth import admin_metadata
from isthmus.engine.core.async_engine import AsyncEngine, EngineRequest
from isthmus.engine.core.params import SamplingParams
from isthmus.protocol import (
    Done,
    DrainReply,
    DrainRequest,
    GenerateRequest,
    SamplingOptions,
    Status,
    StatusRequest,
    TokenChunk,
    decode,
    encode,
    rpc,
    unpack_ids,
)

from tests.center.conftest import engine_options, free_port

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"isthmus-center: ready on ([\d.]+):(\d+)")
REQUESTS = [
    ("greedy", "The quick brown fox", SamplingOptions(max_tokens=10, temperature=0.0, ignore_eos=True)),
    ("seeded", "Once upon a time", SamplingOptions(max_tokens=10, temperature=0.8, seed=99, ignore_eos=True)),
]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _wait_ready(log: Path, procs: list[subprocess.Popen[bytes]], timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = READY.search(log.read_text(errors="replace"))
        if m:
            return int(m.group(2))
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"exited early with {p.returncode}: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"not ready in time: {log.read_text()[-3000:]}")


async def _reference(model: Path) -> list[list[int]]:
    engine = AsyncEngine(engine_options(model))
    await engine.start()
    try:
        out = []
        for _, prompt, opts in REQUESTS:
            params = SamplingParams(max_tokens=opts.max_tokens, temperature=opts.temperature, seed=opts.seed,
                                    ignore_eos=True)
            ids: list[int] = []
            async for o in engine.generate(EngineRequest("ref", engine.tokenizer.encode(prompt), params)):
                ids.extend(o.new_token_ids)
            out.append(ids)
        return out
    finally:
        await engine.stop()


async def _generate_all(port: int) -> tuple[list[list[int]], Status]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_stream(rpc.GENERATE, request_serializer=encode, response_deserializer=decode)
        results = []
        for rid, prompt, opts in REQUESTS:
            msgs = [m async for m in stub(GenerateRequest(id=rid, prompt=prompt, sampling=opts), timeout=60)]
            assert isinstance(msgs[-1], Done), msgs[-1]
            results.append([t for m in msgs if isinstance(m, TokenChunk) for t in unpack_ids(m.token_ids)])
        status_stub = channel.unary_unary(rpc.STATUS, request_serializer=encode, response_deserializer=decode)
        status = await status_stub(StatusRequest(), timeout=10)
        return results, status


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the launch script started its own session: torchrun too
            except (ProcessLookupError, PermissionError):
                p.kill()
            p.wait(timeout=10)


async def test_main_single_process_serves_and_exits_0_on_sigterm(tp_llama: Path, tmp_path: Path) -> None:
    log = tmp_path / "center.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "isthmus.center.main", "--model", str(tp_llama), "--host", "127.0.0.1",
             "--port", "0", "--num-kv-blocks", "48", "--grace-s", "5"],
            stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
        )
    try:
        port = _wait_ready(log, [proc])
        ids, status = await _generate_all(port)
        assert ids == await _reference(tp_llama)
        assert status.is_ready and status.num_total_kv_blocks == 48
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        _stop([proc])


def test_main_rejects_bad_arguments_naming_the_flag(tp_llama: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "isthmus.center.main", "--model", str(tp_llama), "--port",
                          "70000"], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 2 and "--port must be in 0..65535" in out.stderr
    out = subprocess.run([sys.executable, "-m", "isthmus.center.main", "--model", "/nonexistent"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 2 and "--model" in out.stderr


@pytest.mark.slow
async def test_two_node_tp2_center_from_the_launch_script(tp_llama: Path, tmp_path: Path) -> None:
    rdzv, port = free_port(), free_port()
    token = tmp_path / "admin.token"
    common = ["--model", str(tp_llama), "--device", "cpu", "--nnodes", "2", "--nproc-per-node", "1",
              "--rdzv", f"127.0.0.1:{rdzv}", "--host", "127.0.0.1", "--port", str(port),
              "--num-kv-blocks", "48", "--grace-s", "10", "--collective-timeout-s", "30",
              "--admin-token-file", str(token)]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank, log in enumerate(logs):
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    ["bash", str(REPO / "deploy" / "launch-center.sh"), *common, "--node-rank", str(rank)],
                    stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True,
                ))
        assert _wait_ready(logs[0], procs) == port
        ids, status = await _generate_all(port)
        assert ids == await _reference(tp_llama)
        assert status.is_ready and status.num_total_kv_blocks == 48 and status.num_free_kv_blocks == 48
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            drain = channel.unary_unary(rpc.DRAIN, request_serializer=encode, response_deserializer=decode)
            reply = await drain(DrainRequest(grace_s=5.0), timeout=10,
                                metadata=admin_metadata(token.read_text().strip()))
        assert isinstance(reply, DrainReply) and reply.num_in_flight == 0
        for p, log in zip(procs, logs, strict=True):
            assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert "stopping after" in logs[1].read_text()  # the follower left on rank 0's stop message
    finally:
        _stop(procs)
