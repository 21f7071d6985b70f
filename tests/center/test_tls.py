"""TLS and mutual TLS to the center with certificates generated in the test."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from isthmus.center.server import TLSFiles
from isthmus.protocol import Done, GenerateRequest, SamplingOptions

from tests.center.conftest import running_center

GREEDY = SamplingOptions(max_tokens=4, temperature=0.0, ignore_eos=True)


def _cert(name: str, folder: Path, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
          is_ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        san = x509.SubjectAlternativeName([x509.DNSName("localhost")])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, cert_path, key_path


async def test_tls_round_trip(tp_llama: Path, tmp_path: Path) -> None:
    _, _, cert, key = _cert("localhost", tmp_path)
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with running_center(tp_llama, tls=TLSFiles(cert, key), channel_credentials=creds) as c:
        msgs = await c.generate(GenerateRequest(id="tls", prompt="hello", sampling=GREEDY))
        assert isinstance(msgs[-1], Done) and msgs[-1].usage.completion_tokens == 4


async def test_mutual_tls_requires_a_client_certificate(tp_llama: Path, tmp_path: Path) -> None:
    ca_cert, ca_key, ca_path, _ = _cert("test-ca", tmp_path, is_ca=True)
    _, _, server_cert, server_key = _cert("localhost", tmp_path, issuer=(ca_cert, ca_key))
    _, _, client_cert, client_key = _cert("edge-1", tmp_path, issuer=(ca_cert, ca_key))
    tls = TLSFiles(server_cert, server_key, client_ca=ca_path)
    with_client = grpc.ssl_channel_credentials(
        root_certificates=ca_path.read_bytes(), private_key=client_key.read_bytes(),
        certificate_chain=client_cert.read_bytes(),
    )
    async with running_center(tp_llama, tls=tls, channel_credentials=with_client) as c:
        msgs = await c.generate(GenerateRequest(id="mtls", prompt="hello", sampling=GREEDY))
        assert isinstance(msgs[-1], Done)
        anonymous = grpc.aio.secure_channel(f"localhost:{c.server.port}",
                                            grpc.ssl_channel_credentials(root_certificates=ca_path.read_bytes()))
        try:
            from isthmus.protocol import decode, encode, rpc

            stub = anonymous.unary_stream(
                rpc.GENERATE, request_serializer=encode, response_deserializer=decode
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                req = GenerateRequest(id="anon", prompt="hi", sampling=GREEDY)
                _ = [m async for m in stub(req, timeout=5)]
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await anonymous.close()
