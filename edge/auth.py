"""API keys: configured as sha256 hashes, checked in constant time, with per-key concurrency and
request-rate limits.

The edge never stores a key, only ``sha256(key).hexdigest()``. A presented key is hashed and
compared with every configured hash using `hmac.compare_digest`, without stopping at a match, so
neither the position nor the prefix of a matching hash shows in the timing.

Wrong keys are throttled per source address (`auth_throttle.py`): every transport calls
`check_throttle(source)` before looking at a key and `record_failure(source)` after a wrong or
missing one, or both at once through `identify_from(source, key)` / `acquire_from(source, key)`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from isthmus.protocol import ErrorCode, ProtocolError

from .auth_throttle import FailureThrottle, ThrottleLimits
from .jwt_auth import JwtVerifier, looks_like_jwt

if TYPE_CHECKING:
    from .audit import AuditLog

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its sha256 hex digest, a name for logs and metrics, and its limit."""

    sha256: str
    name: str = ""
    max_concurrent: int = 0  # requests at once; 0 = unlimited
    max_requests_per_s: float = 0.0  # requests admitted a second, sustained; 0 = unlimited
    burst: int = 0  # requests admitted at once above that rate; 0 = one second's worth

    def __post_init__(self) -> None:
        if not _HEX64.match(self.sha256):
            raise ValueError("sha256: expected 64 lowercase hex characters")
        if self.max_concurrent < 0:
            raise ValueError("max_concurrent: expected an integer >= 0")
        if self.max_requests_per_s < 0 or self.burst < 0:
            raise ValueError("max_requests_per_s: expected a number >= 0 (and burst an integer >= 0)")


class RequestRate:
    """A token bucket of requests per key name (sans-IO): `rate` a second, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, math.ceil(rate)))
        self._tokens, self._at = self.burst, float("-inf")

    def take(self, now: float) -> float:
        """Admit one request (0.0), or say how many seconds until one is admitted."""
        tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate


def hash_key(key: str) -> str:
    """The sha256 hex digest to put in the config for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Lease:
    """One admitted request's slot; `release()` (idempotent) or use as a context manager."""

    def __init__(self, store: ApiKeyStore, name: str) -> None:
        self._store = store
        self.key_name = name
        self.is_released = False

    def release(self) -> None:
        if not self.is_released:
            self.is_released = True
            self._store._release(self.key_name)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class ApiKeyStore:
    """Admits requests by API key.

    With keys configured, a request must present one of them. With none configured, requests are
    admitted anonymously when `allow_anonymous` (limited by `anonymous_max_concurrent`, 0 =
    unlimited) and refused otherwise.
    """

    def __init__(
        self,
        keys: Iterable[ApiKey] = (),
        *,
        allow_anonymous: bool = True,
        anonymous_max_concurrent: int = 0,
        throttle: ThrottleLimits | None = None,
        audit: AuditLog | None = None,
        jwt: JwtVerifier | None = None,
    ) -> None:
        self._keys = list(keys)
        self.jwt = jwt  # bearer tokens beside the keys (jwt_auth.py); None: keys only
        self.audit = audit  # an `AuditLog` (audit.py) or None: refused authentications go there
        names = [k.name or f"key{i}" for i, k in enumerate(self._keys)]
        if len(set(names)) != len(names):
            raise ValueError("keys: names must be unique")
        self._names = names
        self._digests = [bytes.fromhex(k.sha256) for k in self._keys]
        self._limits = {name: k.max_concurrent for name, k in zip(names, self._keys, strict=True)}
        self._limits[ANONYMOUS] = max(0, anonymous_max_concurrent)
        self._rates = {
            name: RequestRate(k.max_requests_per_s, k.burst)
            for name, k in zip(names, self._keys, strict=True)
            if k.max_requests_per_s > 0
        }
        for tenant, limit in (jwt.tenants if jwt is not None else {}).items():
            if tenant in self._limits:
                raise ValueError(f"jwt.tenants: {tenant!r} is also the name of a key")
            self._limits[tenant] = limit
        self.allow_anonymous = allow_anonymous
        self._in_use: dict[str, int] = {}
        self.throttle = FailureThrottle(throttle)

    @property
    def is_open(self) -> bool:
        """True when requests without a key are admitted."""
        return not self._keys and self.jwt is None and self.allow_anonymous

    def identify(self, key: str | None) -> str:
        """The name of the key `key` matches (for a JWT, its tenant); raises
        ProtocolError(UNAUTHENTICATED)."""
        if self.is_open:
            return ANONYMOUS
        if not key:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "api_key: missing")
        if self.jwt is not None and looks_like_jwt(key):
            return self.jwt.verify(key).tenant  # the tenant names the limit
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        match = -1
        for i, stored in enumerate(self._digests):  # no early exit: constant time in the match position
            if hmac.compare_digest(digest, stored):
                match = i
        if match < 0:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "api_key: not recognised")
        return self._names[match]

    def acquire(self, key: str | None, now: float | None = None) -> Lease:
        """Admit one request: a `Lease`, or ProtocolError(UNAUTHENTICATED / RATE_LIMITED).

        RATE_LIMITED (retryable) when the key is at its concurrency limit or over its request
        rate (the message says how long to wait)."""
        name = self.identify(key)
        limit = self._limits.get(name, 0)
        in_use = self._in_use.get(name, 0)
        if limit and in_use >= limit:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"api_key: {limit} concurrent requests allowed for this key",
                retryable=True,
            )
        rate = self._rates.get(name)
        wait = 0.0 if rate is None else rate.take(time.monotonic() if now is None else now)
        if rate is not None and wait > 0.0:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"api_key: {rate.rate:g} requests a second allowed for this key; retry in {wait:.2f} s",
                retryable=True,
            )
        self._in_use[name] = in_use + 1
        return Lease(self, name)

    # --- throttling of wrong keys per source address ---------------------------------------------
    def check_throttle(self, source: str, now: float | None = None) -> None:
        """Refuse `source` while it is throttled for wrong keys: ProtocolError(RATE_LIMITED).

        The error is retryable and its message says how many seconds to wait
        (`throttle_retry_after` gives the number, e.g. for an HTTP ``Retry-After`` header).
        Call it before looking at the key. Never refuses when no keys are configured.
        """
        if self.is_open:
            return
        wait = self.throttle.check(source, time.monotonic() if now is None else now)
        if wait > 0.0:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"api_key: too many failed attempts from this address; retry in {wait:.1f} s",
                retryable=True,
            )

    def throttle_retry_after(self, source: str, now: float | None = None) -> float:
        """Seconds until `source` may present a key again; 0.0 when it is not throttled."""
        if self.is_open:
            return 0.0
        return self.throttle.retry_after(source, time.monotonic() if now is None else now)

    def record_failure(self, source: str, now: float | None = None, reason: str = "") -> None:
        """`source` presented a wrong or missing key (an UNAUTHENTICATED answer): throttle it and
        write one ``auth.refused`` audit record (never the key itself)."""
        if not self.is_open:
            self.throttle.record_failure(source, time.monotonic() if now is None else now)
        if self.audit is not None:
            details = {"reason": reason or "unauthenticated"}
            self.audit.record("auth.refused", actor="-", source=source, outcome="refused", details=details)

    def identify_from(self, source: str, key: str | None, now: float | None = None) -> str:
        """`identify(key)` for a request from address `source`, throttled: check, then record."""
        self.check_throttle(source, now)
        try:
            return self.identify(key)
        except ProtocolError as exc:
            if exc.code is ErrorCode.UNAUTHENTICATED:
                self.record_failure(source, now, exc.message)
            raise

    def acquire_from(self, source: str, key: str | None, now: float | None = None) -> Lease:
        """`acquire(key)` for a request from address `source`, throttled like `identify_from`."""
        self.check_throttle(source, now)
        try:
            return self.acquire(key, now)
        except ProtocolError as exc:
            if exc.code is ErrorCode.UNAUTHENTICATED:
                self.record_failure(source, now, exc.message)
            raise

    def num_in_use(self, name: str) -> int:
        """Requests in flight under key `name` (`ANONYMOUS` for anonymous ones)."""
        return self._in_use.get(name, 0)

    def _release(self, name: str) -> None:
        left = self._in_use.get(name, 0) - 1
        if left > 0:
            self._in_use[name] = left
        else:
            self._in_use.pop(name, None)
