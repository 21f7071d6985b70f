"""API keys: hashes only, unknown or missing keys refused, per-key concurrency."""

from __future__ import annotations

import pytest
from isthmus.edge.auth import ANONYMOUS, ApiKey, ApiKeyStore, hash_key
from isthmus.protocol import ErrorCode, ProtocolError


def store(**kw: object) -> ApiKeyStore:
    keys = [ApiKey(hash_key("alpha"), name="a", max_concurrent=2), ApiKey(hash_key("beta"), name="b")]
    return ApiKeyStore(keys, **kw)  # type: ignore[arg-type]


def test_known_key_admitted() -> None:
    s = store()
    with s.acquire("alpha") as lease:
        assert lease.key_name == "a"
        assert s.num_in_use("a") == 1
    assert s.num_in_use("a") == 0


@pytest.mark.parametrize("key", [None, "", "gamma", "alpha ", hash_key("alpha")])
def test_missing_or_wrong_key_refused(key: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        store().acquire(key)
    assert info.value.code == ErrorCode.UNAUTHENTICATED


def test_per_key_limit_and_release() -> None:
    s = store()
    first, second = s.acquire("alpha"), s.acquire("alpha")
    with pytest.raises(ProtocolError) as info:
        s.acquire("alpha")
    assert info.value.code == ErrorCode.RATE_LIMITED and info.value.retryable
    for _ in range(5):
        s.acquire("beta")  # unlimited, and other keys are unaffected
    first.release()
    first.release()  # idempotent: must not free a second slot
    third = s.acquire("alpha")
    with pytest.raises(ProtocolError):
        s.acquire("alpha")
    second.release()
    third.release()
    assert s.num_in_use("a") == 0


def test_anonymous_only_without_keys() -> None:
    open_store = ApiKeyStore([], allow_anonymous=True, anonymous_max_concurrent=1)
    lease = open_store.acquire(None)
    assert lease.key_name == ANONYMOUS
    with pytest.raises(ProtocolError) as info:
        open_store.acquire("anything")
    assert info.value.code == ErrorCode.RATE_LIMITED
    lease.release()
    closed = ApiKeyStore([], allow_anonymous=False)
    with pytest.raises(ProtocolError):
        closed.acquire(None)
    with pytest.raises(ProtocolError):
        store(allow_anonymous=True).acquire(None)  # keys configured: anonymous is not enough


def test_bad_hash_and_duplicate_names_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        ApiKey("not-a-hash")
    with pytest.raises(ValueError, match="unique"):
        ApiKeyStore([ApiKey(hash_key("x"), name="n"), ApiKey(hash_key("y"), name="n")])
