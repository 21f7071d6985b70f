"""JWT bearer tokens beside API keys (PyJWT with cryptography; no hand-written crypto).

A token is accepted only when its signature checks with the configured key under one of the
pinned `algorithms` (``alg: none`` and any algorithm not pinned are refused before the signature
is looked at; symmetric and asymmetric algorithms may not be mixed, which closes the old
"RS256 public key used as an HS256 secret" confusion), and when ``exp`` (required), ``nbf`` and,
when configured, ``aud`` and ``iss`` hold. The key is an HS shared secret read from a file, a PEM
public key, or a JWKS file (the token's ``kid`` picks the key).

The claim named by `tenant_claim` names the caller's tenant; each tenant has a concurrency limit
(`[[auth.jwt.tenants]]`), shared by every token of that tenant. The ``sub`` claim is the actor
written to logs; the token itself never is.

Where a token travels: over HTTP in ``Authorization: Bearer <token>``; over QUIC in the request's
``api_key`` field (so SDK clients need no change). `ApiKeyStore` tells a token from a key by its
shape (three base64url parts, the first starting ``eyJ``). The protocol caps ``api_key`` at 256
characters, which fits compact HS256/ES256 tokens but not RS256 ones (a 2048-bit signature alone
is 342 characters): over QUIC, use HS256 or ES256.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isthmus.protocol import ErrorCode, ProtocolError

SYMMETRIC = ("HS256", "HS384", "HS512")
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
_JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class TenantLimit:
    """One tenant a token's claim may name, and its limit on concurrent requests (0 = unlimited)."""

    name: str = ""
    max_concurrent: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: required")
        if self.max_concurrent < 0:
            raise ValueError("max_concurrent: expected an integer >= 0")


@dataclass(frozen=True)
class JwtConfig:
    """``[auth.jwt]``: off unless `enabled`; exactly one of `secret_file`, `public_key`, `jwks`."""

    enabled: bool = False
    algorithms: list[str] = field(default_factory=lambda: ["ES256"])  # pinned; never "none"
    secret_file: str | None = None  # HS*: a file holding the shared secret (kept out of the config)
    public_key: str | None = None  # RS*/ES*/PS*: a PEM public key file
    jwks: str | None = None  # RS*/ES*/PS*: a JWKS file (keys picked by the token's "kid")
    audience: str = ""  # required "aud" ("" = not checked)
    issuer: str = ""  # required "iss" ("" = not checked)
    leeway_s: float = 30.0  # seconds of clock skew allowed on exp and nbf
    tenant_claim: str = "tenant"  # the claim naming the tenant
    default_tenant: str = ""  # for tokens without the claim ("" = such tokens are refused)
    tenants: list[TenantLimit] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.algorithms:
            raise ValueError("algorithms: pin at least one")
        for alg in self.algorithms:
            if alg not in SYMMETRIC + ASYMMETRIC:
                allowed = ", ".join(SYMMETRIC + ASYMMETRIC)
                raise ValueError(f"algorithms: {alg!r} is not allowed (use {allowed})")
        is_symmetric = [alg in SYMMETRIC for alg in self.algorithms]
        if any(is_symmetric) and not all(is_symmetric):
            raise ValueError("algorithms: HS* and public-key algorithms may not be mixed")
        sources = [s for s in (self.secret_file, self.public_key, self.jwks) if s]
        if len(sources) != 1:
            raise ValueError("secret_file: give exactly one of secret_file, public_key, jwks")
        if all(is_symmetric) != bool(self.secret_file):
            raise ValueError("secret_file: HS* algorithms need secret_file; RS/ES/PS need public_key or jwks")
        if self.leeway_s < 0:
            raise ValueError("leeway_s: expected a number >= 0")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenants: names must be unique")
        if self.default_tenant and self.default_tenant not in names:
            raise ValueError(f"default_tenant: {self.default_tenant!r} is not one of the tenants")

    def resolved(self, res: Any) -> JwtConfig:
        """A copy with its file paths resolved by `res` (the config loader's resolver)."""
        from dataclasses import replace

        return replace(
            self, secret_file=res(self.secret_file), public_key=res(self.public_key), jwks=res(self.jwks)
        )


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    """A verified token: its tenant (the limit name) and subject (the actor in logs)."""

    tenant: str
    subject: str


def looks_like_jwt(credential: str) -> bool:
    """True for a compact JWS (what a bearer token is); API keys never start with ``eyJ``."""
    return len(credential) < 16_384 and _JWT_SHAPE.match(credential) is not None


def _refuse(why: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAUTHENTICATED, f"jwt: {why}")


class JwtVerifier:
    """Verifies tokens against one `JwtConfig`; keys are read once, when it is built."""

    def __init__(self, config: JwtConfig) -> None:
        import jwt

        self._jwt = jwt
        self.config = config
        self.tenants = {t.name: t.max_concurrent for t in config.tenants}
        self._key: Any = None
        self._jwks: dict[str, Any] = {}
        try:
            if config.secret_file:
                self._key = Path(config.secret_file).read_bytes().strip()
                if len(self._key) < 32:
                    raise ValueError("jwt.secret_file: the secret must be at least 32 bytes")
            elif config.public_key:
                self._key = Path(config.public_key).read_text(encoding="utf-8")
            elif config.jwks:
                keyset = jwt.PyJWKSet.from_dict(json.loads(Path(config.jwks).read_text(encoding="utf-8")))
                self._jwks = {k.key_id or "": k for k in keyset.keys}
        except OSError as exc:
            raise ValueError(f"jwt: cannot read the key file ({exc.strerror or exc})") from None
        except (jwt.PyJWTError, json.JSONDecodeError) as exc:
            raise ValueError(f"jwt: not a usable key ({exc})") from None

    def verify(self, token: str) -> TokenIdentity:
        """The token's identity, or ProtocolError(UNAUTHENTICATED) saying why (never the token)."""
        jwt, cfg = self._jwt, self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refuse("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in cfg.algorithms:  # "none" included: never pinned
            raise _refuse(f"algorithm {str(alg)[:16]!r} not allowed")
        key = self._key if not self._jwks else self._jwks_key(header.get("kid"))
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": bool(cfg.audience)}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(cfg.algorithms),
                audience=cfg.audience or None,
                issuer=cfg.issuer or None,
                leeway=cfg.leeway_s,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired") from None
        except jwt.ImmatureSignatureError:
            raise _refuse("not yet valid (nbf)") from None
        except jwt.InvalidAudienceError:
            raise _refuse("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _refuse("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise _refuse("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(f"missing claim {exc.claim!r}") from None
        except jwt.PyJWTError as exc:
            raise _refuse(f"invalid token ({type(exc).__name__})") from None
        return TokenIdentity(self._tenant(claims), str(claims.get("sub", ""))[:128])

    def _jwks_key(self, kid: object) -> Any:
        if isinstance(kid, str) and kid in self._jwks:
            return self._jwks[kid]
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        raise _refuse("unknown key id")

    def _tenant(self, claims: dict[str, Any]) -> str:
        tenant = claims.get(self.config.tenant_claim)
        if tenant is None and self.config.default_tenant:
            return self.config.default_tenant
        if not isinstance(tenant, str) or tenant not in self.tenants:
            raise _refuse(f"claim {self.config.tenant_claim!r} names no configured tenant")
        return tenant
