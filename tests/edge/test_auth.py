"""API keys: hashes only, unknown or missing keys refused, per-key concurrency, wrong keys throttled."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from isthmus.edge.auth import ANONYMOUS, ApiKey, ApiKeyStore, hash_key
from isthmus.edge.auth_throttle import FailureThrottle, ThrottleLimits, source_key
from isthmus.edge.config import EdgeConfig
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


# --- throttling of wrong keys per source address ----------------------------------------------------


def throttled_store() -> ApiKeyStore:
    return store(throttle=ThrottleLimits(max_failures=3, window_s=30.0, max_sources=4, jitter=0.0))


def test_wrong_keys_from_one_source_are_throttled_with_a_retryable_error() -> None:
    s = throttled_store()
    for _ in range(3):
        with pytest.raises(ProtocolError) as info:
            s.identify_from("198.51.100.7", "wrong", now=100.0)
        assert info.value.code == ErrorCode.UNAUTHENTICATED
    # out of credit: refused before the key is looked at, even the right one
    with pytest.raises(ProtocolError) as info:
        s.acquire_from("198.51.100.7", "alpha", now=100.0)
    assert info.value.code == ErrorCode.RATE_LIMITED and info.value.retryable
    assert "retry in 10.0 s" in info.value.message
    assert s.throttle_retry_after("198.51.100.7", now=100.0) == pytest.approx(10.0)
    # another source is unaffected
    assert s.identify_from("198.51.100.8", "beta", now=100.0) == "b"
    # one credit comes back every window / max_failures seconds
    with s.acquire_from("198.51.100.7", "alpha", now=110.0) as lease:
        assert lease.key_name == "a"
    assert s.throttle_retry_after("198.51.100.7", now=110.0) == 0.0


def test_right_keys_and_open_stores_are_never_throttled() -> None:
    s = throttled_store()
    for _ in range(20):
        assert s.identify_from("203.0.113.1", "beta", now=0.0) == "b"
    open_store = ApiKeyStore(throttle=ThrottleLimits(max_failures=1))
    for _ in range(5):
        open_store.record_failure("203.0.113.1", now=0.0)
        open_store.check_throttle("203.0.113.1", now=0.0)


def test_throttle_table_is_bounded_and_drops_refilled_sources_first() -> None:
    t = FailureThrottle(ThrottleLimits(max_failures=2, window_s=10.0, max_sources=4))
    t.record_failure("10.0.0.1", now=0.0)  # refills by t=5
    for i in range(2, 5):
        t.record_failure(f"10.0.0.{i}", now=4.0)
        t.record_failure(f"10.0.0.{i}", now=4.0)
    t.record_failure("10.0.0.9", now=6.0)  # table full: 10.0.0.1 (refilled) goes, not the others
    assert len(t) == 4
    assert all(t.retry_after(f"10.0.0.{i}", now=6.0) > 0 for i in range(2, 5))
    for i in range(10, 1000):  # a flood of sources keeps the table at its bound
        t.record_failure(f"10.0.{i // 256}.{i % 256}", now=7.0)
    assert len(t) == 4


def test_ipv6_sources_are_grouped_by_64() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key("not an address") == "not an address"
    t = FailureThrottle(ThrottleLimits(max_failures=1))
    t.record_failure("2001:db8:1:2::1", now=0.0)
    assert t.check("2001:db8:1:2::99", now=0.0) > 0 and t.num_refused == 1


def test_a_source_out_of_credit_again_before_refilling_backs_off_exponentially() -> None:
    # one credit every 10 s; each time the source spends it as soon as it is back, the wait doubles
    t = FailureThrottle(ThrottleLimits(max_failures=3, window_s=30.0, max_backoff_s=100.0, jitter=0.0))
    for _ in range(3):
        t.record_failure("10.0.0.1", now=0.0)
    assert t.retry_after("10.0.0.1", now=0.0) == pytest.approx(10.0)
    now, waits = 0.0, []
    for _ in range(5):
        now += t.retry_after("10.0.0.1", now)
        assert t.retry_after("10.0.0.1", now) == 0.0  # credit back: one more attempt allowed
        t.record_failure("10.0.0.1", now)
        waits.append(round(t.retry_after("10.0.0.1", now), 6))
    assert waits == [20.0, 40.0, 80.0, 100.0, 100.0]  # doubled, up to max_backoff_s
    # quiet for a whole window after the last wait: the bucket is full and the past forgotten
    now += 100.0 + 30.0
    for _ in range(3):
        t.record_failure("10.0.0.1", now)
    assert t.retry_after("10.0.0.1", now) == pytest.approx(10.0)


def test_a_key_over_its_request_rate_is_refused_with_the_wait() -> None:
    rated = ApiKey(hash_key("alpha"), name="a", max_requests_per_s=2.0, burst=3)
    keys = [rated, ApiKey(hash_key("beta"), name="b")]
    s = ApiKeyStore(keys)
    for _ in range(3):  # the burst
        s.acquire("alpha", now=10.0).release()
    with pytest.raises(ProtocolError) as info:
        s.acquire("alpha", now=10.0)
    assert info.value.code == ErrorCode.RATE_LIMITED and info.value.retryable
    assert "2 requests a second" in info.value.message and "retry in 0.50 s" in info.value.message
    assert s.num_in_use("a") == 0  # a refused request holds no slot
    for _ in range(20):  # keys without a rate are not limited
        s.acquire("beta", now=10.0).release()
    s.acquire("alpha", now=10.5).release()  # one credit back after 1 / rate seconds
    with pytest.raises(ProtocolError):
        s.acquire("alpha", now=10.5)
    with pytest.raises(ValueError, match="max_requests_per_s"):
        ApiKey(hash_key("x"), max_requests_per_s=-1.0)


def test_request_rate_is_read_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        f'[model]\npath = "/m"\n[auth]\n[[auth.keys]]\nsha256 = "{hash_key("k")}"\n'
        'name = "app"\nmax_requests_per_s = 50\nburst = 100\n'
    )
    key = EdgeConfig.load(path).auth.keys[0]
    assert (key.max_requests_per_s, key.burst) == (50.0, 100)


def test_sources_throttled_together_come_back_at_different_times() -> None:
    # 32 addresses of one attacker, throttled in the same instant, would otherwise all be let
    # back in the same instant: a burst of handshakes
    t = FailureThrottle(ThrottleLimits(max_failures=2, window_s=20.0, jitter=0.5), rng=random.Random(7))
    waits = []
    for i in range(32):
        for _ in range(2):
            t.record_failure(f"10.0.0.{i}", now=0.0)
        waits.append(t.retry_after(f"10.0.0.{i}", now=0.0))
    assert all(10.0 <= w <= 15.0 for w in waits)  # one credit's time, stretched by up to 50%
    assert max(waits) - min(waits) > 3.0 and len({round(w, 3) for w in waits}) == 32
    with pytest.raises(ValueError, match="jitter"):
        ThrottleLimits(jitter=2.0)
