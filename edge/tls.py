"""Certificates for isthmus: a self-signed edge certificate, and a small CA for mutual TLS between tiers.

`python -m isthmus.edge.tls --cert edge.crt --key edge.key [--host NAME]... [--force]` writes a
P-256 key and a certificate whose subject alternative names cover the given host names and IP
addresses (default: localhost, 127.0.0.1, ::1). Existing files are kept unless `--force`.

`python -m isthmus.edge.tls --mutual-tls-dir DIR [--host NAME]... [--client NAME]...` writes the set
the center and its edges use for mutual TLS (kept if present, unless `--force`): ``ca.crt``/``ca.key``
(the CA), ``center.crt``/``center.key`` (server certificate for the hosts) and ``NAME.crt``/``NAME.key``
for each client (default one client, ``edge``; its common name is NAME). Keys are mode 0600.
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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 825  # days: the longest validity common clients accept for a leaf certificate
CA_DAYS = 3650  # days: the private CA outlives the leaves it signs
DEFAULT_CLIENTS = ("edge",)  # client certificate names written by `ensure_mutual_tls`


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _builder(common_name: str, issuer: x509.Name | None, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    if days < 1:
        raise ValueError("days: must be >= 1")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def make_self_signed(
    hosts: Sequence[str] = DEFAULT_HOSTS, days: int = DEFAULT_DAYS, common_name: str = "isthmus-edge"
) -> tuple[bytes, bytes]:
    """A new (certificate PEM, private key PEM) pair, valid for `hosts` (names or IP addresses)."""
    if not hosts:
        raise ValueError("hosts: at least one host name or address is needed")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, None, key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        # self-signed: the certificate is its own CA, so clients can pin it as `ca`
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def make_ca(common_name: str = "isthmus-ca", days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A new private CA: (certificate PEM, private key PEM); it signs only leaf certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    cert = (
        _builder(common_name, None, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def issue_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, hosts: Sequence[str] = (),
    *, client: bool = False, days: int = DEFAULT_DAYS,
) -> tuple[bytes, bytes]:
    """A leaf (certificate PEM, key PEM) signed by the CA: a server certificate for ``hosts``, or with
    ``client`` a client certificate whose common name identifies the peer (e.g. an edge node)."""
    if not client and not hosts:
        raise ValueError("hosts: a server certificate needs at least one host name or address")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("ca key: expected an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    purpose = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = builder.add_extension(authority, critical=False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
    return _pem(builder.sign(ca_key, hashes.SHA256()), key)


def _write_pair(cert_path: Path, key_path: Path, cert_pem: bytes, key_pem: bytes) -> None:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    # the key is created 0600 from the start: never readable by others, not even for a moment
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert_pem)


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
    _write_pair(cert_path, key_path, *make_self_signed(hosts, days))
    return True


def ensure_mutual_tls(
    folder: str | Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    clients: Sequence[str] = DEFAULT_CLIENTS,
    force: bool = False,
) -> list[Path]:
    """Make the CA, the center's server certificate and client certificates in ``folder``.

    Files that exist are kept (unless ``force``; a new CA re-issues every leaf). Returns the
    certificate files it wrote.
    """
    folder = Path(folder)
    for name in clients:
        if not name or name in ("ca", "center") or "/" in name:
            raise ValueError(f"clients: bad client name {name!r}")
    wrote: list[Path] = []
    ca_crt, ca_key = folder / "ca.crt", folder / "ca.key"
    if force or not (ca_crt.exists() and ca_key.exists()):
        _write_pair(ca_crt, ca_key, *make_ca())
        wrote.append(ca_crt)
        force = True  # leaves signed by an older CA would no longer verify
    ca = (ca_crt.read_bytes(), ca_key.read_bytes())
    leaves = [("center", tuple(hosts), False), *((name, (), True) for name in clients)]
    for name, names, is_client in leaves:
        crt, key = folder / f"{name}.crt", folder / f"{name}.key"
        if force or not (crt.exists() and key.exists()):
            _write_pair(crt, key, *issue_cert(*ca, common_name=name, hosts=names, client=is_client))
            wrote.append(crt)
    return wrote


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isthmus.edge.tls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", help="certificate file to write (PEM)")
    parser.add_argument("--key", help="private key file to write (PEM, mode 0600)")
    parser.add_argument("--mutual-tls-dir",
                        help="write a CA, a center certificate and client certificates here")
    parser.add_argument("--client", action="append", help="client certificate name for --mutual-tls-dir "
                        "(repeatable; default: edge)")
    parser.add_argument("--host", action="append", help="host name or IP for the certificate (repeatable)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity in days")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    if args.mutual_tls_dir is None and (args.cert is None or args.key is None):
        parser.error("give --cert and --key, or --mutual-tls-dir")
    hosts = args.host or DEFAULT_HOSTS
    try:
        if args.mutual_tls_dir is not None:
            clients = args.client or DEFAULT_CLIENTS
            written = ensure_mutual_tls(args.mutual_tls_dir, hosts, clients, args.force)
            names = ", ".join(p.name for p in written)
            print(f"wrote {names} in {args.mutual_tls_dir}" if written
                  else f"kept existing certificates in {args.mutual_tls_dir}")
            return 0
        wrote = ensure_self_signed(args.cert, args.key, hosts, args.days, args.force)
    except (OSError, ValueError) as exc:
        print(f"isthmus.edge.tls: {exc}", file=sys.stderr)
        return 1
    print(f"{'wrote' if wrote else 'kept existing'} {args.cert} and {args.key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
