"""Cache-aware replica choice: the sans-IO policy, the pool's use of it, and the workload simulation."""

import argparse
import importlib.util
import struct
import sys
from pathlib import Path

import pytest
from isthmus.edge.affinity import AffinityOptions, PrefixAffinity, prompt_bytes
from isthmus.edge.pool import CenterPool
from isthmus.protocol import ChatMessage, GenerateRequest, Status


def ids(*tokens: int) -> bytes:
    return struct.pack(f"<{len(tokens)}i", *tokens)


def test_block_hashes_are_chained_and_bounded():
    aff = PrefixAffinity(AffinityOptions(block_bytes=8, max_blocks=3))
    a = aff.block_hashes(ids(*range(10)))  # 40 bytes: 5 full blocks, 3 kept
    assert len(a) == 3
    assert aff.block_hashes(ids(*range(5))) == a[:2]  # a prefix hashes to a prefix
    b = aff.block_hashes(ids(9, 9, *range(2, 10)))
    assert b[1] != a[1]  # same second block after a different first one
    assert aff.block_hashes(b"short") == []


def test_prefers_the_replica_holding_the_longest_prefix():
    aff = PrefixAffinity(AffinityOptions(block_bytes=8, load_cost_blocks=2.0))
    conv = aff.block_hashes(ids(*range(16)))
    aff.record("b", conv)
    aff.record("a", conv[:2])
    assert aff.match("b", conv) == 8 and aff.match("a", conv) == 2
    assert aff.choose({"a": 0.0, "b": 1.0}, conv) == "b"  # 6 blocks to compute on "a" > 2 for a request
    assert aff.choose({"a": 0.0, "b": 4.0}, conv) == "a"  # 6 < 8: the queue costs more than the prefill
    assert aff.choose({"a": 0.0, "b": 0.0}, aff.block_hashes(ids(77, 78, 79))) is None  # no match
    assert aff.num_affinity_choices == 2


def test_imbalance_falls_back_to_least_loaded():
    aff = PrefixAffinity(AffinityOptions(block_bytes=8, balance_abs=4, balance_rel=1.5, load_cost_blocks=1))
    conv = aff.block_hashes(ids(*range(16)))
    aff.record("b", conv)
    assert aff.choose({"a": 0.0, "b": 5.0}, conv) is None  # gap 5 > 4 and 5 > 0 * 1.5
    assert aff.choose({"a": 10.0, "b": 14.0}, conv) == "b"  # gap 4: not above the margin
    assert aff.num_balance_choices == 1


def test_a_shared_prefix_alone_does_not_pile_onto_one_replica():
    aff = PrefixAffinity(AffinityOptions(block_bytes=8, load_cost_blocks=4.0))
    system = list(range(12))  # 6 blocks shared by every conversation
    aff.record("a", aff.block_hashes(ids(*system, 50, 51, 52, 53)))
    new = aff.block_hashes(ids(*system, 60, 61, 62, 63))  # 8 blocks, 6 cached on "a"
    assert aff.choose({"a": 0.0, "b": 0.0}, new) == "a"
    assert aff.choose({"a": 2.0, "b": 0.0}, new) == "b"  # 2 + 4 * 2 > 8 blocks to compute on "b"


def test_record_is_lru_bounded_and_forget_drops_it():
    aff = PrefixAffinity(AffinityOptions(block_bytes=4, max_entries=4))
    old = aff.block_hashes(ids(1, 2, 3))
    aff.record("a", old)
    aff.record("a", aff.block_hashes(ids(7, 8, 9, 10)))
    assert aff.match("a", old) == 0 and len(aff._records["a"]) == 4
    aff.forget("a")
    assert aff.match("a", old) == 0


def test_disabled_and_bad_options():
    aff = PrefixAffinity(AffinityOptions(enabled=False, block_bytes=4))
    h = aff.block_hashes(ids(1, 2))
    aff.record("a", h)
    assert aff.choose({"a": 0.0, "b": 0.0}, h) is None
    with pytest.raises(ValueError):
        AffinityOptions(block_bytes=0)
    with pytest.raises(ValueError):
        AffinityOptions(balance_rel=0.5)


def test_prompt_bytes_of_each_prompt_form():
    assert prompt_bytes(GenerateRequest(id="1", prompt_ids=ids(1, 2))) == ids(1, 2)
    assert prompt_bytes(GenerateRequest(id="1", prompt="hi")) == b"hi"
    msgs = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hi")]
    assert prompt_bytes(GenerateRequest(id="1", messages=msgs)) == b"<system>be brief<user>hi"


def test_pool_pick_follows_the_prefix_unless_loads_are_imbalanced():
    pool = CenterPool(["a:1", "b:1"], affinity=PrefixAffinity(AffinityOptions(block_bytes=8, balance_abs=2)))
    pool.replicas = [_FakeReplica("a:1"), _FakeReplica("b:1")]  # type: ignore[list-item]
    conv = pool.affinity.block_hashes(ids(*range(16)))
    first = pool.pick((), conv)
    assert first is not None
    assert pool.pick((), conv) is first  # the same conversation again: same replica
    other = pool.pick((), pool.affinity.block_hashes(ids(*range(100, 116))))
    assert other is not first  # a new prefix goes to the least recently picked idle replica
    first.num_outstanding = 5  # type: ignore[attr-defined]
    assert pool.pick((), conv) is other  # imbalanced: least loaded wins


class _FakeReplica:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.is_healthy = True
        self.num_outstanding = 0
        self.status = Status(tier="center")
        self.breaker = _OpenBreaker()

    def load_score(self) -> float:
        return float(self.num_outstanding)


class _OpenBreaker:
    def can_try(self, now: float) -> bool:
        return True


def _load_sim():
    path = Path(__file__).parents[2] / "bench" / "prefix_sim.py"
    spec = importlib.util.spec_from_file_location("prefix_sim", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_simulated_chat_workload_hits_more_without_starving_a_replica():
    sim = _load_sim()
    args = argparse.Namespace(
        seed=1, system=200, turns=4, conversations=16, replicas=2, sim_blocks=256, max_tokens=16
    )
    base = sim.simulate(args, "least-loaded")
    aff = sim.simulate(args, "affinity")
    assert aff["hit_rate"] > base["hit_rate"]
    assert aff["computed"] < base["computed"]
    assert min(aff["requests"]) >= 0.3 * sum(aff["requests"])  # neither replica starves


async def test_pool_forgets_a_replica_that_turns_unhealthy():
    pool = CenterPool(["a:1"], affinity=PrefixAffinity(AffinityOptions(block_bytes=8)))
    replica = _FakeReplica("a:1")
    conv = pool.affinity.block_hashes(ids(*range(16)))
    pool.affinity.record("a:1", conv)

    async def unhealthy() -> bool:
        return False

    replica.check = unhealthy  # type: ignore[attr-defined]
    await pool._check(replica)  # type: ignore[arg-type]
    assert pool.affinity.match("a:1", conv) == 0
