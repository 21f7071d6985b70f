"""The audit log: JSON lines, secrets and prompts dropped, size rotation, and every refused
authentication over QUIC and HTTP recorded exactly once by a real edge node on loopback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest
from isthmus.edge.audit import REDACTED, AuditError, AuditLog, FileSink, StreamSink, audit_line
from isthmus.edge.auth import ApiKey, ApiKeyStore, hash_key
from isthmus.edge.config import EdgeConfig
from isthmus.edge.node import EdgeNode
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import Done, Error, ErrorCode, GenerateRequest, ProtocolError, SamplingOptions

from .quic_helpers import final, raw_client, write_self_signed

pytestmark = pytest.mark.timeout(120)

GOOD_KEY = "good-key-7f3a9c"
SECRET_PROMPT = "the launch code is swordfish-42"


def test_a_line_has_every_field_and_no_secret_details() -> None:
    line = audit_line(
        "reload",
        actor="ops",
        source="10.0.0.1",
        outcome="ok",
        details={"threshold": 0.4, "api_key": GOOD_KEY, "prompt": SECRET_PROMPT, "keys_added": ["a"]},
        now=0.5,
    )
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["time"] == "1970-01-01T00:00:00.500Z"
    assert (record["action"], record["actor"], record["source"], record["outcome"]) == (
        "reload", "ops", "10.0.0.1", "ok",
    )
    assert record["details"] == {
        "threshold": 0.4, "api_key": REDACTED, "prompt": REDACTED, "keys_added": ["a"],
    }
    assert GOOD_KEY not in line and "swordfish" not in line


def test_strings_are_capped_and_bad_calls_are_typed_errors() -> None:
    record = json.loads(audit_line("x", actor="a" * 5000, source="", outcome="failed", now=0.0))
    assert len(record["actor"]) < 300
    with pytest.raises(AuditError, match="outcome"):
        audit_line("x", actor="a", source="", outcome="maybe", now=0.0)
    with pytest.raises(AuditError, match="action"):
        audit_line("", actor="a", source="", outcome="ok", now=0.0)


def test_file_sink_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    log = AuditLog(FileSink(path, max_bytes=400, backups=2), clock=lambda: 0.0)
    for i in range(30):
        log.record("drain", actor="ops", source="::1", details={"step": i})
    log.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 400
        for line in p.read_text().splitlines():
            json.loads(line)
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["details"] == {"step": 29}  # the newest record is in the live file
    assert log.num_records == 30


def test_stream_sink_writes_lines() -> None:
    out = io.StringIO()
    AuditLog(StreamSink(out)).record("weights.sync", actor="cli", outcome="refused", details={"file": "a"})
    assert json.loads(out.getvalue())["outcome"] == "refused"


def test_store_records_each_refusal_once_and_never_the_key() -> None:
    out = io.StringIO()
    store = ApiKeyStore([ApiKey(hash_key(GOOD_KEY), name="app")], audit=AuditLog(StreamSink(out)))
    store.identify_from("192.0.2.7", GOOD_KEY)
    for wrong in ("wrong-key-1", None):
        with pytest.raises(ProtocolError):
            store.identify_from("192.0.2.7", wrong)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["action"], r["source"], r["outcome"]) for r in records] == [
        ("auth.refused", "192.0.2.7", "refused")
    ] * 2
    assert "wrong-key-1" not in out.getvalue() and GOOD_KEY not in out.getvalue()


# --- a real edge node on loopback ------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("audit_model"), "llama", seed=5)


def node_config(folder: Path, model: Path, audit: Path) -> EdgeConfig:
    cert, key = write_self_signed(folder)
    path = folder / "edge.toml"
    path.write_text(
        f"""
[model]
path = "{model}"
[engine]
num_kv_blocks = 32
max_num_seqs = 4
[listen]
host = "127.0.0.1"
port = 0
cert = "{cert}"
key = "{key}"
[http]
host = "127.0.0.1"
port = 0
[audit]
path = "{audit}"
[[auth.keys]]
sha256 = "{hash_key(GOOD_KEY)}"
name = "app"
"""
    )
    return EdgeConfig.load(path)


def quic_request(id: str, key: str | None) -> GenerateRequest:
    sampling = SamplingOptions(max_tokens=2, temperature=0.0, ignore_eos=True)
    return GenerateRequest(id=id, prompt=SECRET_PROMPT, sampling=sampling, tier="edge", api_key=key)


async def test_every_refused_authentication_appears_once(tmp_path: Path, model: Path) -> None:
    audit = tmp_path / "audit.log"
    node = EdgeNode(node_config(tmp_path, model, audit))
    await node.start()
    wrong_quic = ["quic-wrong-1", "quic-wrong-2", None]
    wrong_http = ["http-wrong-1", None]
    try:
        async with raw_client(node.quic_port) as client:
            ok = final(await client.request(quic_request("ok", GOOD_KEY)))
            assert isinstance(ok, Done)
            for i, key in enumerate(wrong_quic):
                last = final(await client.request(quic_request(f"bad{i}", key)))
                assert isinstance(last, Error) and last.code == ErrorCode.UNAUTHENTICATED
        url = f"http://127.0.0.1:{node.http_port}/v1/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 2}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body, headers={"Authorization": f"Bearer {GOOD_KEY}"}) as r:
                assert r.status == 200
            for key in wrong_http:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with http.post(url, json=body, headers=headers) as r:
                    assert r.status == 401
            async with http.get(f"http://127.0.0.1:{node.http_port}/metrics") as r:
                assert r.status == 401
    finally:
        await node.stop(grace_s=0.0)
    text = audit.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    refused = [r for r in records if r["action"] == "auth.refused"]
    assert len(refused) == len(wrong_quic) + len(wrong_http) + 1  # +1: the /metrics scrape
    assert all(r["source"] == "127.0.0.1" and r["outcome"] == "refused" for r in refused)
    reasons = [r["details"]["reason"] for r in refused]
    assert reasons.count("api_key: not recognised") == 3 and reasons.count("api_key: missing") == 3
    # the grep test: no key (right or wrong) and no prompt text ever reaches the log
    for secret in [GOOD_KEY, "quic-wrong", "http-wrong", "swordfish", "launch code"]:
        assert secret not in text
