"""Self-signed certificate helper: SANs, key permissions, keep-unless-force, CLI."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from isthmus.edge.tls import ensure_self_signed, main, make_self_signed


def test_certificate_covers_hosts() -> None:
    cert_pem, key_pem = make_self_signed(["edge.example", "10.1.2.3"], days=10)
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert b"PRIVATE KEY" in key_pem


def test_ensure_keeps_existing_unless_forced(tmp_path: Path) -> None:
    cert, key = tmp_path / "etc" / "edge.crt", tmp_path / "etc" / "edge.key"
    assert ensure_self_signed(cert, key) is True
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    assert ensure_self_signed(cert, key) is False
    assert cert.read_bytes() == first
    assert ensure_self_signed(cert, key, force=True) is True
    assert cert.read_bytes() != first


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_self_signed([])
    with pytest.raises(ValueError):
        make_self_signed(["localhost"], days=0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    assert main(["--cert", str(cert), "--key", str(key), "--host", "localhost"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["--cert", str(cert), "--key", str(key)]) == 0
    assert "kept existing" in capsys.readouterr().out
