"""Self-signed certificates for an edge node (the installer, tests, and the QUIC server's default).

`python -m isthmus.edge.tls --cert edge.crt --key edge.key [--host NAME]... [--force]` writes a
P-256 key and a certificate whose subject alternative names cover the given host names and IP
addresses (default: localhost, 127.0.0.1, ::1). Existing files are kept unless `--force`.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 825  # days: the longest validity common clients accept for a leaf certificate


def make_self_signed(
    hosts: Sequence[str] = DEFAULT_HOSTS, days: int = DEFAULT_DAYS, common_name: str = "isthmus-edge"
) -> tuple[bytes, bytes]:
    """A new (certificate PEM, private key PEM) pair, valid for `hosts` (names or IP addresses)."""
    if not hosts:
        raise ValueError("hosts: at least one host name or address is needed")
    if days < 1:
        raise ValueError("days: must be >= 1")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # self-signed: the certificate is its own CA, so clients can pin it as `ca`
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_self_signed(
    cert_path: str | Path,
    key_path: str | Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> bool:
    """Write a self-signed pair unless both files exist (or `force`); True if it wrote one."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    if not force and cert_path.exists() and key_path.exists():
        return False
    cert_pem, key_pem = make_self_signed(hosts, days)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    # the key is created 0600 from the start: never readable by others, not even for a moment
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert_pem)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isthmus.edge.tls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", required=True, help="certificate file to write (PEM)")
    parser.add_argument("--key", required=True, help="private key file to write (PEM, mode 0600)")
    parser.add_argument("--host", action="append", help="host name or IP for the certificate (repeatable)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity in days")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        wrote = ensure_self_signed(args.cert, args.key, args.host or DEFAULT_HOSTS, args.days, args.force)
    except (OSError, ValueError) as exc:
        print(f"isthmus.edge.tls: {exc}", file=sys.stderr)
        return 1
    print(f"{'wrote' if wrote else 'kept existing'} {args.cert} and {args.key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
