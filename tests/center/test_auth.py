"""The center's control plane is closed by default: admin calls need an authenticated peer, and a
bind beyond loopback needs mutual TLS (or --insecure). Servers here bind 127.0.0.1 only."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from isthmus.center.auth import (
    AdminPolicy,
    AdminTokenError,
    InsecureBind,
    admin_metadata,
    check_exposure,
    is_admin_method,
    is_loopback,
    read_admin_token,
    write_admin_token,
)
from isthmus.center.main import parse_args
from isthmus.center.server import CenterServer, TLSFiles
from isthmus.edge.tls import ensure_mutual_tls
from isthmus.protocol import Done, DrainReply, DrainRequest, GenerateRequest, SamplingOptions, rpc

from tests.center.conftest import ADMIN_TOKEN, Center, running_center

GREEDY = SamplingOptions(max_tokens=3, temperature=0.0, ignore_eos=True)
SSL = {"transport_security_type": [b"ssl"], "x509_common_name": [b"edge-1"]}


async def _still_serving(c: Center) -> None:
    """Nothing changed: not draining, health SERVING, a request is answered."""
    assert not c.service.is_draining
    reply = await health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    msgs = await c.generate(GenerateRequest(id="after", prompt="hi", sampling=GREEDY))
    assert isinstance(msgs[-1], Done)


async def _drain_refused(c: Center, metadata: object = None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await c.unary(rpc.DRAIN, DrainRequest(grace_s=0.0), metadata=metadata)
    return info.value.code()


async def test_unauthenticated_drain_is_refused_and_changes_nothing(center: Center) -> None:
    assert await _drain_refused(center) == grpc.StatusCode.UNAUTHENTICATED
    wrong = admin_metadata("not-the-token-at-all")
    assert await _drain_refused(center, wrong) == grpc.StatusCode.UNAUTHENTICATED
    await _still_serving(center)
    reply = await center.unary(rpc.DRAIN, DrainRequest(grace_s=0.0), metadata=admin_metadata(ADMIN_TOKEN))
    assert isinstance(reply, DrainReply) and center.service.is_draining


async def test_a_center_without_admin_credentials_refuses_every_drain(tp_llama: Path) -> None:
    async with running_center(tp_llama) as c:  # the default: no token, no mutual TLS
        assert await _drain_refused(c) == grpc.StatusCode.PERMISSION_DENIED
        assert await _drain_refused(c, admin_metadata(ADMIN_TOKEN)) == grpc.StatusCode.UNAUTHENTICATED
        await _still_serving(c)


async def test_mutual_tls_admin_by_client_certificate_and_allowed_cn(tp_llama: Path, tmp_path: Path) -> None:
    ensure_mutual_tls(tmp_path, hosts=["localhost"], clients=["edge-1", "ops"])
    ca = (tmp_path / "ca.crt").read_bytes()
    tls = TLSFiles(tmp_path / "center.crt", tmp_path / "center.key", client_ca=tmp_path / "ca.crt")

    def creds(name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(ca, (tmp_path / f"{name}.key").read_bytes(),
                                            (tmp_path / f"{name}.crt").read_bytes())

    only_ops = AdminPolicy(mutual_tls=True, allowed_cns=frozenset({"ops"}))
    async with running_center(tp_llama, tls=tls, channel_credentials=creds("edge-1"), admin=only_ops) as c:
        msgs = await c.generate(GenerateRequest(id="data-plane", prompt="hi", sampling=GREEDY))
        assert isinstance(msgs[-1], Done)  # the edge's certificate serves the data plane ...
        assert await _drain_refused(c) == grpc.StatusCode.PERMISSION_DENIED  # ... not admin calls
        assert not c.service.is_draining
        async with grpc.aio.secure_channel(f"localhost:{c.server.port}", creds("ops")) as ops:
            stub = ops.unary_unary(rpc.DRAIN, request_serializer=_encode, response_deserializer=_decode)
            assert isinstance(await stub(DrainRequest(grace_s=0.0)), DrainReply)
        assert c.service.is_draining


async def test_the_edges_center_pool_reaches_a_mutual_tls_center(tp_llama: Path, tmp_path: Path) -> None:
    """What `launch-center.sh --tls-dir` + `install-edge.sh --center-tls-dir` set up, end to end."""
    from isthmus.edge.replica import CenterTls, PoolOptions, Replica

    ensure_mutual_tls(tmp_path)  # the launch script's defaults: localhost, 127.0.0.1, ::1; client "edge"
    tls = TLSFiles(tmp_path / "center.crt", tmp_path / "center.key", client_ca=tmp_path / "ca.crt")
    ca, edge_key, edge_crt = ((tmp_path / name).read_bytes() for name in ("ca.crt", "edge.key", "edge.crt"))
    creds = grpc.ssl_channel_credentials(ca, edge_key, edge_crt)
    async with running_center(tp_llama, tls=tls, channel_credentials=creds) as c:
        edge_tls = CenterTls(ca_file=str(tmp_path / "ca.crt"), cert_file=str(tmp_path / "edge.crt"),
                             key_file=str(tmp_path / "edge.key"))
        replica = Replica(f"127.0.0.1:{c.server.port}", PoolOptions(), edge_tls)
        try:
            assert await replica.check() and replica.status is not None
            call = replica.generate(GenerateRequest(id="via-edge", prompt="hi", sampling=GREEDY), 30.0)
            assert isinstance([m async for m in call][-1], Done)
        finally:
            await replica.close()
        ca_only = CenterTls(ca_file=str(tmp_path / "ca.crt"))
        no_cert = Replica(f"127.0.0.1:{c.server.port}", PoolOptions(), ca_only)
        try:
            assert not await no_cert.check()  # without a client certificate the handshake fails
        finally:
            await no_cert.close()


def _encode(msg: object) -> bytes:
    from isthmus.protocol import encode

    return encode(msg)  # type: ignore[arg-type]


def _decode(data: bytes) -> object:
    from isthmus.protocol import decode

    return decode(data)


def test_policy_is_sans_io() -> None:
    policy = AdminPolicy(token="t" * 20, mutual_tls=True, allowed_cns=frozenset({"ops"}))
    assert policy.check(admin_metadata("t" * 20), {}) is None
    assert policy.check([("authorization", b"Bearer " + b"t" * 20)], {}) is None
    assert policy.check(admin_metadata("u" * 20), SSL).code == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[union-attr]
    assert policy.check((), SSL).code == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[union-attr]
    assert policy.check((), {**SSL, "x509_common_name": [b"ops"]}) is None
    plaintext_cn = {"transport_security_type": [b"insecure"], "x509_common_name": [b"ops"]}
    assert policy.check((), plaintext_cn).code == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[union-attr]
    assert AdminPolicy(mutual_tls=True).check((), SSL) is None  # any verified certificate


def test_every_method_but_the_data_plane_is_admin() -> None:
    assert is_admin_method(rpc.DRAIN)
    assert is_admin_method(f"/{rpc.SERVICE_NAME}/MigrateOut")  # a future control call: guarded unlisted
    assert not is_admin_method(rpc.GENERATE) and not is_admin_method(rpc.STATUS)
    assert not is_admin_method("/grpc.health.v1.Health/Check")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("center.example", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_beyond_loopback_needs_mutual_tls_or_insecure() -> None:
    check_exposure("127.0.0.1", mutual_tls=False, insecure=False)
    check_exposure("0.0.0.0", mutual_tls=True, insecure=False)
    check_exposure("0.0.0.0", mutual_tls=False, insecure=True)
    with pytest.raises(InsecureBind, match="--insecure"):
        check_exposure("0.0.0.0", mutual_tls=False, insecure=False)


async def test_server_refuses_a_plaintext_bind_beyond_loopback_before_binding(center: Center) -> None:
    server = CenterServer(center.service, host="0.0.0.0", port=0)
    with pytest.raises(InsecureBind, match="beyond loopback"):
        await server.start()
    assert server._server is None  # nothing was bound


def test_main_defaults_to_loopback_and_refuses_exposure_without_mutual_tls(
    tp_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_args(["--model", str(tp_llama)]).host == "127.0.0.1"
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", str(tp_llama), "--host", "0.0.0.0"])
    assert exit_info.value.code == 2 and "needs mutual TLS" in capsys.readouterr().err
    assert parse_args(["--model", str(tp_llama), "--host", "0.0.0.0", "--insecure"]).insecure
    ensure_mutual_tls(tmp_path)
    a = parse_args(["--model", str(tp_llama), "--host", "0.0.0.0", "--tls-cert", str(tmp_path / "center.crt"),
                    "--tls-key", str(tmp_path / "center.key"), "--tls-client-ca", str(tmp_path / "ca.crt"),
                    "--admin-cn", "ops"])
    assert a.admin_cn == ["ops"]
    with pytest.raises(SystemExit):
        parse_args(["--model", str(tp_llama), "--admin-cn", "ops"])  # --admin-cn without mutual TLS
    assert "--admin-cn needs mutual TLS" in capsys.readouterr().err


def test_admin_token_file(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    token = write_admin_token(path)
    assert len(token) >= 16 and os.stat(path).st_mode & 0o077 == 0
    assert write_admin_token(path) == token == read_admin_token(path)  # kept
    os.chmod(path, 0o644)
    with pytest.raises(AdminTokenError, match="chmod 600"):
        read_admin_token(path)
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    os.chmod(short, 0o600)
    with pytest.raises(AdminTokenError, match="at least 16"):
        read_admin_token(short)
    with pytest.raises(AdminTokenError, match="cannot read"):
        read_admin_token(tmp_path / "missing")
