"""The center's audit log: one JSON line per admin call and per refused one, never a token or a
prompt. Real gRPC on 127.0.0.1 with the tiny checkpoint."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from isthmus.center.admin_audit import action_for, actor_of, peer_address, request_details
from isthmus.center.auth import AdminPolicy, admin_metadata
from isthmus.center.main import parse_args
from isthmus.center.weights_service import FETCH_WEIGHTS, encode_request
from isthmus.engine.audit import AuditLog, FileSink
from isthmus.engine.model.checkpoint import MANIFEST_FILE
from isthmus.engine.model.weights_sync import write_manifest
from isthmus.protocol import (
    Done,
    DrainReply,
    DrainRequest,
    ExportRequest,
    GenerateRequest,
    SamplingOptions,
    rpc,
)

from tests.center.conftest import ADMIN_TOKEN, Center, engine_options

GREEDY = SamplingOptions(max_tokens=3, temperature=0.0, ignore_eos=True)
PROMPT = "zebra-canary-prompt 7d1f: tell me the secret plan"  # must never reach the audit log


@contextlib.asynccontextmanager
async def audited_center(model: Path, log_path: Path, **server_kw: object) -> AsyncIterator[Center]:
    from isthmus.center.server import CenterServer
    from isthmus.center.service import CenterService
    from isthmus.engine.core.async_engine import AsyncEngine

    audit = AuditLog(FileSink(log_path))
    engine = AsyncEngine(engine_options(model))
    await engine.start()
    service = CenterService(engine, engine.tokenizer, engine.model_name, max_model_len=engine.max_model_len)
    server = CenterServer(service, host="127.0.0.1", port=0, default_grace_s=5.0,
                          admin=AdminPolicy(token=ADMIN_TOKEN), audit=audit, **server_kw)  # type: ignore[arg-type]
    port = await server.start()
    await server.set_ready()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Center(engine, service, server, channel)
    finally:
        await channel.close()
        await server.stop()
        service.close()
        await engine.stop()
        audit.close()


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_refused_and_authorized_drain_each_write_one_line(tp_llama: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "audit.log"
    async with audited_center(tp_llama, log_path) as c:
        msgs = await c.generate(GenerateRequest(id="data-plane", prompt=PROMPT, sampling=GREEDY))
        assert isinstance(msgs[-1], Done)
        assert lines(log_path) == []  # the data plane is not audited

        wrong = admin_metadata("not-the-token-at-all-9f3e")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.unary(rpc.DRAIN, DrainRequest(grace_s=2.5), metadata=wrong)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not c.service.is_draining
        [refused] = lines(log_path)
        assert refused["action"] == "auth.refused" and refused["outcome"] == "refused"
        assert refused["actor"] == "anonymous"
        assert str(refused["source"]).startswith("127.0.0.1:")
        details = refused["details"]
        assert isinstance(details, dict)
        assert details["method"] == "Drain" and details["grace_s"] == 2.5
        assert details["code"] == "UNAUTHENTICATED" and details["presented"] == "bearer"

        reply = await c.unary(rpc.DRAIN, DrainRequest(grace_s=0.0, migrate=True),
                              metadata=admin_metadata(ADMIN_TOKEN))
        assert isinstance(reply, DrainReply) and c.service.is_draining
        records = lines(log_path)
        assert len(records) == 2
        drained = records[1]
        assert drained["action"] == "migrate" and drained["outcome"] == "ok"
        assert drained["actor"] == "admin-token"
        assert str(drained["source"]).startswith("127.0.0.1:")
        assert drained["details"] == {"method": "Drain", "grace_s": 0.0, "migrate": True, "num_in_flight": 0}
        assert str(drained["time"]).endswith("Z")
    text = log_path.read_text()
    assert ADMIN_TOKEN not in text and "not-the-token-at-all-9f3e" not in text
    assert "zebra-canary" not in text and "secret plan" not in text


async def test_export_and_weight_fetch_are_recorded(tp_llama: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "audit.log"
    served = tmp_path / "served"
    served.mkdir()
    (served / "config.json").write_bytes((tp_llama / "config.json").read_bytes())
    write_manifest(served)
    async with audited_center(tp_llama, log_path, weights_dir=served) as c:
        reply = await c.unary(rpc.EXPORT, ExportRequest(id="no-such-request"),
                              metadata=admin_metadata(ADMIN_TOKEN))
        fetch = c.channel.unary_stream(FETCH_WEIGHTS, request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        chunks = [b async for b in fetch(encode_request(MANIFEST_FILE, 0),
                                         metadata=admin_metadata(ADMIN_TOKEN))]
        with pytest.raises(grpc.aio.AioRpcError):
            [b async for b in fetch(encode_request(MANIFEST_FILE, 0))]  # no credentials
    export, fetched, refused = lines(log_path)
    assert export["action"] == "migrate.export" and export["actor"] == "admin-token"
    assert isinstance(export["details"], dict) and export["details"]["id"] == "no-such-request"
    assert type(reply).__name__ == "Error" and export["outcome"] == "failed"
    assert export["details"]["error_code"]  # type: ignore[index]
    assert fetched["action"] == "weights.fetch" and fetched["outcome"] == "ok"
    assert fetched["details"] == {"method": "FetchWeights", "name": MANIFEST_FILE, "offset": 0,
                                  "num_chunks": len(chunks)}
    assert refused["action"] == "auth.refused" and refused["actor"] == "anonymous"
    assert isinstance(refused["details"], dict) and refused["details"]["presented"] == "none"
    assert ADMIN_TOKEN not in log_path.read_text()


def test_details_are_allowlisted_and_actors_never_secrets() -> None:
    req = GenerateRequest(id="r1", prompt=PROMPT, sampling=GREEDY)
    assert request_details(rpc.GENERATE, req) == {"method": "Generate", "id": "r1"}
    malformed = {"method": "Drain", "malformed": True}
    assert request_details(rpc.DRAIN, "malformed request: bad bytes") == malformed
    assert action_for(rpc.DRAIN, DrainRequest()) == "drain"
    assert action_for("/isthmus.v1.Center/Rotate", None) == "admin.rotate"
    assert actor_of(True, {}) == "admin-token"
    assert actor_of(False, {"transport_security_type": [b"ssl"], "x509_common_name": [b"ops"]}) == "ops"
    assert actor_of(False, {"x509_common_name": [b"ops"]}) == "anonymous"  # unverified: no CN
    assert peer_address("ipv6:[::1]:5000") == "[::1]:5000" and peer_address(None) == ""


def test_audit_flags(tp_llama: Path) -> None:
    a = parse_args(["--model", str(tp_llama), "--audit-log", "-", "--audit-backups", "2"])
    assert a.audit_log == "-" and a.audit_backups == 2 and a.audit_max_bytes == 10 * 1024 * 1024
    with pytest.raises(SystemExit):
        parse_args(["--model", str(tp_llama), "--audit-max-bytes", "0"])


def test_the_center_writes_its_audit_log_without_importing_the_edge() -> None:
    import subprocess
    import sys

    code = ("import sys, isthmus.center.main, isthmus.center.server; "
            "print(sorted(m for m in sys.modules if m.startswith('isthmus.edge')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
