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
                 "--tls-cert", "--tls-key", "--tls-client-ca", "--device", "--grace-s", "--dry-run"):
        assert flag in out.stdout, flag


def test_dry_run_prints_the_torchrun_command(tmp_path: Path) -> None:
    model = _model(tmp_path)
    port, rdzv = free_port(), free_port()
    out = _run("--model", str(model), "--device", "cpu", "--tp-size", "2", "--port", str(port),
               "--rdzv", f"127.0.0.1:{rdzv}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "torch.distributed.run" in out.stdout
    assert "--nproc-per-node 2" in out.stdout and "isthmus.center.main" in out.stdout


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
