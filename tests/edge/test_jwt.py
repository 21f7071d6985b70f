"""JWT bearer tokens: signatures, exp/nbf/aud, pinned algorithms (never `none`), JWKS, tenants and
their limits, and a real edge node on loopback that refuses bad tokens over QUIC and HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from isthmus.edge.auth import ApiKey, ApiKeyStore, hash_key
from isthmus.edge.config import ConfigError, EdgeConfig
from isthmus.edge.jwt_auth import JwtConfig, JwtVerifier, TenantLimit, looks_like_jwt
from isthmus.protocol import Done, Error, ErrorCode, GenerateRequest, ProtocolError, SamplingOptions

from .quic_helpers import final, raw_client, write_self_signed

pytestmark = pytest.mark.timeout(120)

SECRET = b"s3cret-for-tests-0123456789abcdef" * 2  # 66 bytes: long enough for HS512 too
AUD = "isthmus-edge"
TENANTS = [TenantLimit("acme", max_concurrent=1), TenantLimit("globex")]


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "aud": AUD, "exp": now + 300, "tenant": "acme"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs_config(tmp_path: Path, **over: Any) -> JwtConfig:
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(SECRET)
    kw: dict[str, Any] = {
        "enabled": True, "algorithms": ["HS256"], "secret_file": str(secret), "audience": AUD,
        "leeway_s": 0.0, "tenants": TENANTS,
    }
    kw.update(over)
    return JwtConfig(**kw)


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def alg_none(payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}))}.{b64(json.dumps(payload))}."


def refusal(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(ProtocolError) as info:
        verifier.verify(token)
    assert info.value.code == ErrorCode.UNAUTHENTICATED
    assert token not in info.value.message
    return info.value.message


def test_hs256_good_token_names_tenant_and_subject(tmp_path: Path) -> None:
    v = JwtVerifier(hs_config(tmp_path))
    ident = v.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert (ident.tenant, ident.subject) == ("acme", "alice")


def test_bad_tokens_are_refused_with_the_reason(tmp_path: Path) -> None:
    v = JwtVerifier(hs_config(tmp_path))
    now = int(time.time())
    assert "signature" in refusal(v, jwt.encode(claims(), SECRET + b"x", algorithm="HS256"))
    assert "expired" in refusal(v, jwt.encode(claims(exp=now - 5), SECRET, algorithm="HS256"))
    assert "nbf" in refusal(v, jwt.encode(claims(nbf=now + 600), SECRET, algorithm="HS256"))
    assert "audience" in refusal(v, jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"))
    assert "not allowed" in refusal(v, alg_none(claims()))
    assert "not allowed" in refusal(v, jwt.encode(claims(), SECRET, algorithm="HS512"))  # not pinned
    assert "exp" in refusal(v, jwt.encode(claims(exp=None), SECRET, algorithm="HS256"))
    assert "tenant" in refusal(v, jwt.encode(claims(tenant="initech"), SECRET, algorithm="HS256"))
    assert "malformed" in refusal(v, "eyJhbGciOi.e30.x")  # a header that is not JSON


def test_default_tenant_and_issuer(tmp_path: Path) -> None:
    v = JwtVerifier(hs_config(tmp_path, default_tenant="globex", issuer="idp"))
    token = jwt.encode(claims(tenant=None, iss="idp"), SECRET, algorithm="HS256")
    assert v.verify(token).tenant == "globex"
    assert "issuer" in refusal(v, jwt.encode(claims(iss="evil"), SECRET, algorithm="HS256"))


def ec_pair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem.decode()


def test_es256_public_key_and_the_hs_confusion_attack(tmp_path: Path) -> None:
    private, pem = ec_pair()
    (tmp_path / "pub.pem").write_text(pem)
    v = JwtVerifier(JwtConfig(enabled=True, algorithms=["ES256"], public_key=str(tmp_path / "pub.pem"),
                              audience=AUD, tenants=TENANTS))
    assert v.verify(jwt.encode(claims(), private, algorithm="ES256")).subject == "alice"
    other, _ = ec_pair()
    assert "signature" in refusal(v, jwt.encode(claims(), other, algorithm="ES256"))
    # the public key used as an HMAC secret: refused, HS256 is not pinned
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}))}.{b64(json.dumps(claims()))}"
    mac = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(mac)}"
    assert "not allowed" in refusal(v, forged)


def test_rs256_from_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}
    jwks = {"keys": []}
    for kid, private in keys.items():
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        jwks["keys"].append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    v = JwtVerifier(JwtConfig(enabled=True, algorithms=["RS256"], jwks=str(tmp_path / "jwks.json"),
                              audience=AUD, tenants=TENANTS))
    good = jwt.encode(claims(), keys["k2"], algorithm="RS256", headers={"kid": "k2"})
    assert v.verify(good).tenant == "acme"
    wrong_kid = jwt.encode(claims(), keys["k2"], algorithm="RS256", headers={"kid": "k1"})
    assert "signature" in refusal(v, wrong_kid)
    assert "key id" in refusal(v, jwt.encode(claims(), keys["k1"], algorithm="RS256", headers={"kid": "k9"}))


def test_config_pins_algorithms_and_needs_one_key_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        JwtConfig(enabled=True, algorithms=["none"], secret_file="s")
    with pytest.raises(ValueError, match="mixed"):
        JwtConfig(enabled=True, algorithms=["HS256", "RS256"], secret_file="s")
    with pytest.raises(ValueError, match="secret_file"):
        JwtConfig(enabled=True, algorithms=["RS256"], secret_file="s")
    with pytest.raises(ValueError, match="exactly one"):
        JwtConfig(enabled=True, algorithms=["ES256"])
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        JwtVerifier(JwtConfig(enabled=True, algorithms=["HS256"], secret_file=str(tmp_path / "short")))
    data = {"model": {"path": "/m"}, "auth": {"jwt": {"enabled": True, "algorithms": ["none"]}}}
    with pytest.raises(ConfigError, match=r"auth\.jwt\.algorithms"):
        EdgeConfig.from_dict(data)
    (tmp_path / "edge.toml").write_text(
        '[model]\npath = "m"\n[auth.jwt]\nenabled = true\nalgorithms = ["HS256"]\nsecret_file = "nope"\n'
    )
    with pytest.raises(ConfigError, match="cannot read"):
        EdgeConfig.load(tmp_path / "edge.toml")


def test_store_takes_keys_and_tokens_and_applies_tenant_limits(tmp_path: Path) -> None:
    store = ApiKeyStore([ApiKey(hash_key("plain-key"), name="app")], jwt=JwtVerifier(hs_config(tmp_path)))
    assert store.identify("plain-key") == "app"
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert looks_like_jwt(token) and not looks_like_jwt("plain-key")
    lease = store.acquire(token)
    assert lease.key_name == "acme"
    with pytest.raises(ProtocolError) as info:  # acme: 1 at once, shared by all its tokens
        store.acquire(jwt.encode(claims(sub="bob"), SECRET, algorithm="HS256"))
    assert info.value.code == ErrorCode.RATE_LIMITED
    lease.release()
    with pytest.raises(ValueError, match="also the name of a key"):
        ApiKeyStore([ApiKey(hash_key("k"), name="acme")], jwt=JwtVerifier(hs_config(tmp_path)))
    tokens_only = ApiKeyStore([], allow_anonymous=True, jwt=JwtVerifier(hs_config(tmp_path)))
    assert not tokens_only.is_open
    with pytest.raises(ProtocolError):
        tokens_only.acquire(None)


# --- a real edge node on loopback ------------------------------------------------------------------

def node_config(tmp_path: Path) -> EdgeConfig:
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "model", "llama", seed=9)
    cert, key = write_self_signed(tmp_path)
    (tmp_path / "jwt.secret").write_bytes(SECRET)
    path = tmp_path / "edge.toml"
    path.write_text(
        f'[model]\npath = "{model}"\n[engine]\nnum_kv_blocks = 32\nmax_num_seqs = 2\n'
        f'[listen]\nhost = "127.0.0.1"\nport = 0\ncert = "{cert}"\nkey = "{key}"\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        f'[audit]\npath = "audit.log"\n'
        '[auth]\nallow_anonymous = false\n'
        '[auth.jwt]\nenabled = true\nalgorithms = ["HS256"]\nsecret_file = "jwt.secret"\n'
        f'audience = "{AUD}"\n'
        'leeway_s = 0.0\n[[auth.jwt.tenants]]\nname = "acme"\nmax_concurrent = 4\n'
    )
    return EdgeConfig.load(path)


async def test_edge_node_refuses_bad_tokens_over_quic_and_http(tmp_path: Path) -> None:
    from isthmus.edge.node import EdgeNode

    now = int(time.time())
    good = jwt.encode(claims(), SECRET, algorithm="HS256")
    bad = {
        "signature": jwt.encode(claims(), SECRET[::-1], algorithm="HS256"),
        "expired": jwt.encode(claims(exp=now - 60), SECRET, algorithm="HS256"),
        "audience": jwt.encode(claims(aud="other"), SECRET, algorithm="HS256"),
        "none": alg_none(claims()),
    }
    node = EdgeNode(node_config(tmp_path))
    await node.start()
    try:
        sampling = SamplingOptions(max_tokens=2, temperature=0.0, ignore_eos=True)
        async with raw_client(node.quic_port) as client:
            for name, token in [("good", good), *bad.items()]:
                req = GenerateRequest(id=name, prompt="hi", sampling=sampling, tier="edge", api_key=token)
                last = final(await client.request(req))
                if name == "good":
                    assert isinstance(last, Done), last
                else:
                    assert isinstance(last, Error) and last.code == ErrorCode.UNAUTHENTICATED, name
        url = f"http://127.0.0.1:{node.http_port}/v1/completions"
        body = {"model": "m", "prompt": "hi", "max_tokens": 2}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body, headers={"Authorization": f"Bearer {good}"}) as r:
                assert r.status == 200
            for name, token in bad.items():
                async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 401, name
                    assert "jwt" in (await r.json())["error"]["message"]
    finally:
        await node.stop(grace_s=0.0)
    text = (tmp_path / "audit.log").read_text()
    assert len([json.loads(line) for line in text.splitlines()]) == 2 * len(bad)
    assert all(token.split(".")[2] not in text for token in [good, *bad.values()] if token.split(".")[2])
