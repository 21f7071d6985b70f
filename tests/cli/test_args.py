"""`isthmus` argument errors: refused before anything starts, exit status 2, naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from isthmus.cli.main import main


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["chat", "hi", "--max-tokens", "0"], "--max-tokens"),
        (["chat", "hi", "--temperature", "-1"], "--temperature"),
        (["chat", "hi", "--ca", "/nonexistent/ca.pem"], "--ca"),
        (["chat", "   "], "PROMPT"),
        (["chat", "hi", "--tier", "moon"], "--tier"),
        (["up", "--port", "70000"], "--port"),
        (["up", "--http-port", "-1"], "--http-port"),
        (["up", "--tp", "0"], "--tp"),
        (["up", "--edge-model", "/nonexistent/model"], "--edge-model"),
        (["demo", "--center-model", "/nonexistent/model"], "--center-model"),
        (["model", "make-tiny", "/tmp/x", "--hidden-size", "0"], "--hidden-size"),
        (["model", "make-tiny", "/tmp/x", "--num-kv-heads", "3"], "--num-kv-heads"),
        (["model", "make-tiny", "/tmp/x", "--arch", "gpt2"], "--arch"),
        (["model", "make-tiny", "/tmp/x", "--vocab-size", "10"], "--vocab-size"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_name_the_flag(argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert named in _refused(argv, capsys)


def test_chat_without_a_running_network_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(["chat", "hi", "--cache-dir", str(tmp_path)], capsys)
    assert "--edge" in err and "isthmus up" in err


def test_chat_with_a_dead_edge_fails_with_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from isthmus.cli.network import free_port

    port = free_port(socket.SOCK_DGRAM)
    state = {"edge": f"127.0.0.1:{port}", "ca": None}
    (tmp_path / "up.json").write_text(json.dumps(state))
    assert main(["chat", "hi", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "isthmus up" in err


def test_center_and_edge_delegate_their_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the tiers' own parsers run (and refuse a bad model / config with their own messages)
    with pytest.raises(SystemExit) as exc:
        main(["center", "--model", str(tmp_path / "none")])
    assert exc.value.code == 2 and "--model" in capsys.readouterr().err
    assert main(["edge", "--config", str(tmp_path / "missing.toml"), "--check-config"]) == 2
    assert "missing.toml" in capsys.readouterr().err
