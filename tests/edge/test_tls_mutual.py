"""The small CA for mutual TLS between tiers: what it writes, what it keeps, the CLI."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from isthmus.edge.tls import ensure_mutual_tls, main


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_writes_a_ca_a_server_and_client_certificates(tmp_path: Path) -> None:
    wrote = ensure_mutual_tls(tmp_path, hosts=["center.example", "10.0.0.1"], clients=["edge-a", "ops"])
    assert sorted(p.name for p in wrote) == ["ca.crt", "center.crt", "edge-a.crt", "ops.crt"]
    ca, server, client = (_load(tmp_path / f"{name}.crt") for name in ("ca", "center", "ops"))
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["center.example"]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ops"
    for key in tmp_path.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_keeps_existing_and_reissues_leaves_under_a_new_ca(tmp_path: Path) -> None:
    ensure_mutual_tls(tmp_path)
    assert ensure_mutual_tls(tmp_path) == []
    (tmp_path / "ca.key").unlink()
    assert len(ensure_mutual_tls(tmp_path)) == 3  # ca, center, edge
    _load(tmp_path / "edge.crt").verify_directly_issued_by(_load(tmp_path / "ca.crt"))
    with pytest.raises(ValueError, match="bad client name"):
        ensure_mutual_tls(tmp_path, clients=["ca"])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mutual-tls-dir", str(tmp_path), "--host", "localhost", "--client", "edge-1"]) == 0
    assert "wrote ca.crt, center.crt, edge-1.crt" in capsys.readouterr().out
    assert main(["--mutual-tls-dir", str(tmp_path), "--client", "edge-1"]) == 0
    assert "kept existing" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--cert", str(tmp_path / "x.crt")])  # --cert without --key
