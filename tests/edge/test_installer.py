"""deploy/install-edge.sh into a temporary prefix: files, idempotence, --force, and the installed edge.

To stay fast and offline the test reuses this environment's packages (--site-packages + --no-deps)
and builds the package from the repository without build isolation.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from isthmus.cli.network import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install-edge.sh"
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def run(prefix: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [
        "bash", str(SCRIPT), "--prefix", str(prefix), "--python", sys.executable,
        "--venv-args", "--without-pip",  # pip (and a modern setuptools) come from --site-packages
        "--pip-args", "--no-deps --no-build-isolation",
        "--site-packages", sysconfig.get_paths()["purelib"],
        "--no-systemd", *args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"installer failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def installed_python(prefix: Path, code: str) -> str:
    proc = subprocess.run(
        [str(prefix / "venv" / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_install_twice_and_start(tmp_path: Path) -> None:
    prefix = tmp_path / "edge"
    out = run(prefix, "--model", "/models/tiny", "--center", "127.0.0.1:50051", "--port", "4500",
              "--api-key-hash", "a" * 64 + ":ops:3").stdout  # fmt: skip
    etc = prefix / "etc"
    for name in ("edge.toml", "edge.crt", "edge.key", "isthmus-edge.service"):
        assert (etc / name).is_file(), name
    assert stat.S_IMODE((etc / "edge.key").stat().st_mode) == 0o600
    start_cmd = f"{prefix}/venv/bin/isthmus edge --config {etc}/edge.toml"
    assert start_cmd in out
    unit = (etc / "isthmus-edge.service").read_text()
    assert f"ExecStart={start_cmd}" in unit and "@PREFIX@" not in unit

    # the installed package (not this checkout) loads the written config
    config = str(etc / "edge.toml")
    code = (
        f"import isthmus.edge.config as c; cfg = c.EdgeConfig.load({config!r}); print(c.__file__); "
        "print(cfg.listen.port, cfg.center.endpoints[0], cfg.auth.keys[0].name, cfg.listen.cert)"
    )
    module_file, summary = installed_python(prefix, code).splitlines()
    assert module_file.startswith(str(prefix / "venv"))
    assert summary == f"4500 127.0.0.1:50051 ops {etc / 'edge.crt'}"

    # second run: same prefix, different flags -> config and certificate are kept
    config_before, cert_before = (etc / "edge.toml").read_text(), (etc / "edge.crt").read_bytes()
    out = run(prefix, "--model", "/models/other", "--port", "4600").stdout
    assert "reusing" in out and "keeping existing" in out
    assert (etc / "edge.toml").read_text() == config_before
    assert (etc / "edge.crt").read_bytes() == cert_before

    # --force rewrites both
    run(prefix, "--model", "/models/other", "--port", "4600", "--force")
    assert "4600" in (etc / "edge.toml").read_text()
    assert (etc / "edge.crt").read_bytes() != cert_before

    # the serving half's entry point, when it is there, accepts the installed config
    has_main = installed_python(
        prefix, "import importlib.util as u; print(bool(u.find_spec('isthmus.edge.main')))"
    )
    if has_main == "True":
        proc = subprocess.run(
            [str(prefix / "venv" / "bin" / "python"), "-m", "isthmus.edge.main",
             "--config", str(etc / "edge.toml"), "--check-config"],
            capture_output=True, text=True, timeout=120, cwd="/",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr


def test_center_tls_dir_configures_mutual_tls_to_the_center(tmp_path: Path) -> None:
    from isthmus.edge.tls import ensure_mutual_tls

    tls = tmp_path / "from-center"
    ensure_mutual_tls(tls, clients=["edge-7"])
    prefix = tmp_path / "edge"
    proc = run(prefix, "--model", "/models/tiny", "--center", "10.0.0.1:50051", "--center-tls-dir", str(tls),
               "--center-client", "edge-7")
    assert "warning" not in proc.stderr
    ctls = prefix / "etc" / "center-tls"
    assert (ctls / "client.crt").read_bytes() == (tls / "edge-7.crt").read_bytes()
    assert stat.S_IMODE((ctls / "client.key").stat().st_mode) == 0o600
    code = (
        f"import isthmus.edge.config as c; cfg = c.EdgeConfig.load({str(prefix / 'etc' / 'edge.toml')!r}); "
        "print(cfg.center.tls, cfg.center.ca, cfg.center.cert, cfg.center.key)"
    )
    assert installed_python(prefix, code) == f"True {ctls}/ca.crt {ctls}/client.crt {ctls}/client.key"
    # a missing client pair is refused up front; a remote center without TLS gets a warning
    proc = run(tmp_path / "other", "--model", "/m", "--center-tls-dir", str(tls), check=False)
    assert proc.returncode != 0 and "edge.crt" in proc.stderr
    proc = run(tmp_path / "plain", "--model", "/m", "--center", "10.0.0.1:50051")
    assert "beyond loopback but no --center-tls-dir" in proc.stderr


def test_refuses_bad_input_before_installing(tmp_path: Path) -> None:
    prefix = tmp_path / "edge"
    proc = run(prefix, check=False)  # no --model on a first install
    assert proc.returncode != 0 and "--model is required" in proc.stderr
    assert not (prefix / "venv").exists()
    proc = run(prefix, "--model", "/m", "--port", "70000", check=False)
    assert proc.returncode != 0 and "--port" in proc.stderr
    proc = run(prefix, "--model", "/m", "--bogus", check=False)
    assert proc.returncode != 0 and "unknown option" in proc.stderr


def test_help_documents_every_option() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    body = SCRIPT.read_text()
    options = set(re.findall(r"^\s+(--[a-z-]+)\)", body, re.MULTILINE))
    assert len(options) > 15
    for option in options:
        assert option in proc.stdout, option


def test_installed_edge_serves_a_request_and_stops_on_sigterm(tmp_path: Path) -> None:
    from isthmus.client import sync
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "model", "llama", seed=3)
    prefix = tmp_path / "edge"
    quic_port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    dead_center = free_port(socket.SOCK_STREAM)  # nothing listens there: the edge degrades to local
    run(prefix, "--model", str(model), "--center", f"127.0.0.1:{dead_center}",
        "--port", str(quic_port), "--http-port", str(http_port))  # fmt: skip
    etc = prefix / "etc"
    assert 'quantization = "nf4"' in (etc / "edge.toml").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen(
        [str(prefix / "venv" / "bin" / "isthmus"), "edge", "--config", str(etc / "edge.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd="/",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the installed edge never became ready"
            time.sleep(0.5)
        with sync.connect(f"127.0.0.1:{quic_port}", ca=str(etc / "edge.crt"), timeout=60) as client:
            answer = client.complete("Hello", max_tokens=5, temperature=0.0)
        assert answer.usage.completion_tokens == 5 and answer.route.tier == "edge"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
