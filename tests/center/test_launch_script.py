"""deploy/launch-center.sh refuses bad inputs before starting anything, with a message naming why."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from isthmus.cli.network import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "launch-center.sh"


def _model(tmp_path: Path, heads: int = 4, kv_heads: int = 2, inter: int = 128) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    cfg = {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": inter}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_help_documents_every_option() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for flag in ("--model", "--tp-size", "--nproc-per-node", "--nnodes", "--node-rank", "--rdzv", "--port",
                 "--tls-cert", "--tls-key", "--tls-client-ca", "--device", "--grace-s", "--dry-run",
                 "--tls-dir", "--tls-host", "--insecure", "--admin-token-file", "--admin-cn", "--restart",
                 "--restart-delay", "--drain-migrate"):
        assert flag in out.stdout, flag


def test_dry_run_prints_the_torchrun_command(tmp_path: Path) -> None:
    model = _model(tmp_path)
    port, rdzv = free_port(), free_port()
    out = _run("--model", str(model), "--device", "cpu", "--tp-size", "2", "--port", str(port),
               "--rdzv", f"127.0.0.1:{rdzv}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "isthmus.center.rendezvous" in out.stdout  # torchrun with a store bound to --rdzv only
    assert f"--rdzv-backend isthmus-static --rdzv-endpoint 127.0.0.1:{rdzv}" in out.stdout
    assert "--nproc-per-node 2" in out.stdout and "isthmus.center.main" in out.stdout
    assert "--host 127.0.0.1" in out.stdout  # loopback unless told otherwise


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--model is required"),
        (["--model", "/nonexistent/model"], "is not a directory"),
        (["--tp-size", "3"], "does not divide the model's 4 attention heads"),
        (["--tp-size", "2", "--nproc-per-node", "1"], "--tp-size 2 != --nproc-per-node 1"),
        (["--nnodes", "2", "--node-rank", "2"], "--node-rank 2 must be below --nnodes 2"),
        (["--rdzv", "nohostport"], "--rdzv must be ADDR:PORT"),
        (["--device", "tpu"], "--device must be 'cpu' or 'cuda'"),
        (["--port", "99999"], "--port must be 1..65535"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "--tls-cert: cannot read"),
        (["--tls-cert", "/etc/hostname"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "/etc/hostname"], "needs --tls-cert"),
        (["--bogus"], "unknown option '--bogus'"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0 listens beyond loopback"),
        (["--host", "10.1.2.3", "--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"],
         "needs mutual TLS"),
        (["--admin-cn", "ops"], "--admin-cn needs mutual TLS"),
        (["--restart", "-1"], "--restart must be a non-negative integer"),
        (["--tls-dir", "/tmp/x", "--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"],
         "--tls-dir replaces"),
    ],
)
def test_bad_inputs_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    model = _model(tmp_path)
    full = args if (not args or "--model" in args) else ["--model", str(model), *args]
    if "--device" not in full:
        full = [*full, "--device", "cpu"]
    out = _run(*full, "--dry-run")
    assert out.returncode == 2
    assert message in out.stderr, out.stderr


def test_model_without_config_is_refused(tmp_path: Path) -> None:
    out = _run("--model", str(tmp_path), "--device", "cpu", "--dry-run")
    assert out.returncode == 2 and "has no config.json" in out.stderr


def test_kv_heads_must_split_or_replicate_evenly(tmp_path: Path) -> None:
    model = _model(tmp_path, heads=12, kv_heads=3)
    out = _run("--model", str(model), "--device", "cpu", "--tp-size", "4", "--dry-run")
    assert out.returncode == 2 and "3 key/value heads" in out.stderr


def test_busy_grpc_port_is_refused(tmp_path: Path) -> None:
    model = _model(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run("--model", str(model), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
                   "--rdzv", f"127.0.0.1:{free_port()}", "--dry-run")
    assert out.returncode == 2 and f"--port: port {port}" in out.stderr, out.stderr


def test_insecure_allows_a_plaintext_bind_beyond_loopback(tmp_path: Path) -> None:
    model = _model(tmp_path)
    out = _run("--model", str(model), "--device", "cpu", "--host", "0.0.0.0", "--insecure",
               "--port", str(free_port()), "--rdzv", f"127.0.0.1:{free_port()}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "--host 0.0.0.0" in out.stdout and "--insecure" in out.stdout


def test_tls_dir_makes_certificates_and_turns_on_mutual_tls(tmp_path: Path) -> None:
    model, tls, token = _model(tmp_path), tmp_path / "tls", tmp_path / "admin.token"
    args = ["--model", str(model), "--device", "cpu", "--port", str(free_port()), "--rdzv",
            f"127.0.0.1:{free_port()}", "--tls-dir", str(tls), "--tls-host", "center.example",
            "--admin-token-file", str(token), "--admin-cn", "ops", "--dry-run"]
    out = _run(*args)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in tls.iterdir()} == {"ca.crt", "ca.key", "center.crt", "center.key", "edge.crt",
                                               "edge.key", "center-peer.crt", "center-peer.key"}
    assert f"--tls-client-ca {tls}/ca.crt" in out.stdout and f"--tls-cert {tls}/center.crt" in out.stdout
    assert f"--admin-token-file {token}" in out.stdout and "--admin-cn ops" in out.stdout
    assert token.stat().st_mode & 0o077 == 0 and len(token.read_text().strip()) >= 16
    first = (tls / "ca.crt").read_bytes()
    assert _run(*args).returncode == 0 and (tls / "ca.crt").read_bytes() == first  # kept on the next start


def test_other_nodes_get_no_serving_options(tmp_path: Path) -> None:
    model = _model(tmp_path)
    out = _run("--model", str(model), "--device", "cpu", "--nnodes", "2", "--node-rank", "1", "--host",
               "0.0.0.0", "--rdzv", f"127.0.0.1:{free_port()}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "--host" not in out.stdout.split("isthmus.center.main", 1)[1]


def test_drain_migrate_reaches_the_serving_rank(tmp_path: Path) -> None:
    model = _model(tmp_path)
    out = _run("--model", str(model), "--device", "cpu", "--port", str(free_port()), "--rdzv",
               f"127.0.0.1:{free_port()}", "--drain-migrate", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "--drain-migrate" in out.stdout.split("isthmus.center.main", 1)[1]
    assert "--drain-migrate" not in _run("--model", str(model), "--device", "cpu", "--port", str(free_port()),
                                         "--rdzv", f"127.0.0.1:{free_port()}", "--dry-run").stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_with_drain_migrate_ends_streams_with_their_state(tmp_path: Path) -> None:
    """A real center (`isthmus.center.main --drain-migrate`): SIGTERM mid-answer ends the stream with
    `Migrated` (the answer so far), not with a grace period or DRAINING, and the center exits 0."""
    import signal
    import sys

    import grpc
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
    from isthmus.protocol import GenerateRequest, Migrated, SamplingOptions, TokenChunk, decode, encode, rpc
    from isthmus.protocol.limits import TOKEN_ID_SIZE

    from tests.soak.procs import CENTER_READY, _spawn, wait_ready

    model = make_tiny_checkpoint(tmp_path / "tiny", "llama", seed=3)
    proc = _spawn("center", [sys.executable, "-m", "isthmus.center.main", "--model", str(model), "--host",
                             "127.0.0.1", "--port", "0", "--dtype", "float32", "--num-kv-blocks", "64",
                             "--grace-s", "60", "--drain-migrate"], tmp_path)
    try:
        wait_ready([proc], {"center": CENTER_READY})
        req = GenerateRequest(id="sigterm", prompt="Count to one hundred.",
                              sampling=SamplingOptions(max_tokens=400, temperature=0.0, ignore_eos=True))
        with grpc.insecure_channel(proc.address) as channel:
            stub = channel.unary_stream(rpc.GENERATE, request_serializer=encode, response_deserializer=decode)
            messages = []
            for msg in stub(req, timeout=60):
                messages.append(msg)
                if len(messages) == 3:
                    proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=60) == 0, proc.tail()
    finally:
        proc.kill()
    assert isinstance(messages[-1], Migrated), messages[-1]
    assert all(isinstance(m, TokenChunk) for m in messages[:-1])
    num_ids = len(messages[-1].continuation.token_ids) // TOKEN_ID_SIZE
    assert 3 <= num_ids < 400  # cut short at once, not run out over --grace-s
