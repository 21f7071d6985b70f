"""deploy/launch-center.sh passes the migration's KV flags to the serving rank and checks them
first; isthmus.center.main refuses bad values of its KV channel flags (exit 2, naming the flag)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from isthmus.cli.network import free_port

from tests.center.test_launch_script import SCRIPT, _model

KV_FLAGS = ("--migrate-kv", "--migrate-kv-min-tokens", "--migrate-kv-ticket-mib", "--migrate-kv-ticket-ttl-s",
            "--migrate-kv-fetch-timeout-s", "--advertise", "--peer-tls-cert", "--peer-tls-key")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def _base(tmp_path: Path) -> list[str]:
    return ["--model", str(_model(tmp_path)), "--device", "cpu", "--port", str(free_port()),
            "--rdzv", f"127.0.0.1:{free_port()}", "--dry-run"]


def test_help_documents_the_kv_flags() -> None:
    out = _run("--help")
    assert out.returncode == 0 and all(flag in out.stdout for flag in KV_FLAGS)


def test_kv_flags_reach_the_serving_rank(tmp_path: Path) -> None:
    out = _run(*_base(tmp_path), "--migrate-kv", "kv", "--migrate-kv-min-tokens", "64",
               "--migrate-kv-ticket-mib", "2048", "--migrate-kv-ticket-ttl-s", "20",
               "--migrate-kv-fetch-timeout-s", "3", "--advertise", "10.0.0.5:50051")
    assert out.returncode == 0, out.stderr
    main = out.stdout.split("isthmus.center.main", 1)[1]
    for flag, value in (("--migrate-kv", "kv"), ("--migrate-kv-min-tokens", "64"),
                        ("--migrate-kv-ticket-mib", "2048"), ("--migrate-kv-ticket-ttl-s", "20"),
                        ("--migrate-kv-fetch-timeout-s", "3"), ("--advertise", "10.0.0.5:50051")):
        assert f"{flag} {value}" in main, flag
    assert "--migrate-kv" not in _run(*_base(tmp_path)).stdout  # unset: main's defaults


def test_tls_dir_makes_and_passes_the_peer_certificate(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    out = _run(*_base(tmp_path), "--tls-dir", str(tls))
    assert out.returncode == 0, out.stderr
    assert (tls / "center-peer.crt").is_file() and (tls / "edge.crt").is_file()
    assert f"--peer-tls-cert {tls}/center-peer.crt --peer-tls-key {tls}/center-peer.key" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--migrate-kv", "blocks"], "--migrate-kv must be"),
    (["--migrate-kv-ticket-mib", "-1"], "--migrate-kv-ticket-mib"),
    (["--migrate-kv-fetch-timeout-s", "soon"], "--migrate-kv-fetch-timeout-s"),
    (["--advertise", "10.0.0.5"], "--advertise must be HOST:PORT"),
    (["--peer-tls-cert", "/nonexistent.crt"], "go together"),
])
def test_bad_kv_flags_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    out = _run(*_base(tmp_path), *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.parametrize("args, message", [
    (["--migrate-kv-ticket-mib", "-1"], "--migrate-kv-ticket-mib"),
    (["--migrate-kv-ticket-ttl-s", "0"], "--migrate-kv-ticket-ttl-s"),
    (["--advertise", "nohost"], "--advertise must be HOST:PORT"),
    (["--peer-tls-cert", "x.crt"], "go together"),
])
def test_center_main_refuses_bad_kv_channel_flags(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from isthmus.center.main import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--model", str(_model(tmp_path)), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_center_main_advertises_its_bind_address(tmp_path: Path) -> None:
    from isthmus.center.main import advertised, kv_channel, parse_args

    a = parse_args(["--model", str(_model(tmp_path)), "--port", "0"])
    assert advertised(a, 50123) == "127.0.0.1:50123"
    desk, fetcher = kv_channel(a, 50123)
    assert desk is not None and desk.address == "127.0.0.1:50123" and desk.store.budget_bytes == 4096 << 20
    assert not fetcher.auth.tls and fetcher.auth.token is None
    b = parse_args(["--model", str(_model(tmp_path)), "--advertise", "a.example:7",
                    "--migrate-kv-ticket-mib", "0"])
    assert advertised(b, 1) == "a.example:7" and kv_channel(b, 1)[0] is None  # 0 MiB: no tickets
