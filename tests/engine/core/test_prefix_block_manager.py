"""Prefix caching in the block manager: matching, sharing, reference counts, LRU eviction."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isthmus.engine.core.block_manager import BlockManager, OutOfBlocks


def admit(bm: BlockManager, seq_id: int, tokens: list[int]) -> int:
    """Admit like the scheduler does, compute the whole sequence, register it. Returns tokens reused."""
    cached = bm.match_prefix(tokens)
    if not bm.can_allocate(bm.admission_cost(cached, len(tokens))):
        raise OutOfBlocks("no room")
    hit = bm.adopt(seq_id, cached, len(tokens))
    bm.grow(seq_id, len(tokens))
    bm.commit(seq_id, tokens, len(tokens))
    return hit


def test_second_sequence_reuses_full_blocks_of_the_shared_prefix():
    bm = BlockManager(num_blocks=16, block_size=4)
    system = list(range(100, 110))  # 10 tokens: 2 full blocks + 2
    assert admit(bm, 1, [*system, 1, 2, 3]) == 0
    assert admit(bm, 2, [*system, 7, 8]) == 8  # the two full blocks of the system prompt
    assert bm.block_table(2)[:2] == bm.block_table(1)[:2]
    assert bm.block_table(2)[2] != bm.block_table(1)[2]  # the partial block is never shared
    assert bm.stats.num_hit_tokens == 8 and bm.stats.num_queried_tokens == 25
    bm.check_invariants()


def test_match_always_leaves_the_last_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(8))
    admit(bm, 1, tokens)
    assert len(bm.match_prefix(tokens)) == 1  # 2 full blocks cached, but the last token recomputes
    assert len(bm.match_prefix([*tokens, 9])) == 2


def test_chained_hash_needs_the_whole_prefix_to_match():
    bm = BlockManager(num_blocks=8, block_size=2)
    admit(bm, 1, [1, 2, 3, 4, 5])
    assert bm.match_prefix([9, 9, 3, 4, 5]) == []  # same second block after a different first
    assert len(bm.match_prefix([1, 2, 3, 4, 5])) == 2


def test_salt_separates_caches_and_disabling_matches_nothing():
    a = BlockManager(num_blocks=8, block_size=2, salt="model-a")
    b = BlockManager(num_blocks=8, block_size=2, salt="model-b")
    admit(a, 1, [1, 2, 3])
    admit(b, 1, [1, 2, 3])
    assert a._hash_of[a.block_table(1)[0]] != b._hash_of[b.block_table(1)[0]]
    off = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    admit(off, 1, [1, 2, 3])
    assert off.match_prefix([1, 2, 3]) == [] and off.num_cached_blocks == 0
    assert off.free(1) == 2 and off.num_free_blocks == 8
    off.check_invariants()


def test_freed_cached_blocks_stay_cached_until_the_pool_runs_out():
    bm = BlockManager(num_blocks=4, block_size=2)
    admit(bm, 1, [1, 2, 3, 4, 5])  # 3 blocks, 2 full ones cached
    bm.free(1)
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 2
    assert len(bm.match_prefix([1, 2, 3, 4, 5])) == 2
    bm.grow(2, 4)  # 2 blocks: the uncached free ones first
    assert bm.stats.num_evictions == 0
    bm.grow(2, 6)  # a third block: evicts the cached tail (3, 4) first
    assert bm.stats.num_evictions == 1
    assert len(bm.match_prefix([1, 2, 3, 4, 5])) == 1
    bm.check_invariants()


def test_eviction_never_takes_a_block_in_use():
    bm = BlockManager(num_blocks=6, block_size=2)
    admit(bm, 1, [1, 2, 3, 4, 5])  # holds 3 blocks, 2 cached and referenced
    held = list(bm.block_table(1))
    admit(bm, 2, [7, 8, 9])  # 2 more; 1 left
    bm.free(2)  # its cached block (7, 8) becomes evictable
    bm.grow(3, 6)  # 3 blocks: 2 free + 1 evicted; seq 1's blocks are untouchable
    assert not set(held) & set(bm.block_table(3))
    assert bm.stats.num_evictions == 1
    with pytest.raises(OutOfBlocks):
        bm.grow(4, 1)  # nothing evictable left: seq 1 keeps its blocks
    assert bm.block_table(1) == held
    bm.check_invariants()


def test_adopting_an_evictable_block_takes_it_off_the_lru():
    bm = BlockManager(num_blocks=3, block_size=2)
    admit(bm, 1, [1, 2, 3])
    bm.free(1)
    cached = bm.match_prefix([1, 2, 5])
    assert bm.admission_cost(cached, 3) == 2  # one new block plus the reclaimed cached one
    bm.adopt(2, cached, 3)
    bm.grow(2, 3)
    assert bm.num_free_blocks == 1
    bm.grow(3, 2)  # the remaining free block; the shared one is not evictable now
    with pytest.raises(OutOfBlocks):
        bm.grow(4, 1)
    bm.check_invariants()


def test_duplicate_prefix_computed_twice_stays_private():
    bm = BlockManager(num_blocks=8, block_size=2)
    for sid in (1, 2):  # both admitted before either registered its blocks
        bm.adopt(sid, bm.match_prefix([1, 2, 3]), 3)
        bm.grow(sid, 3)
    bm.commit(1, [1, 2, 3], 3)
    bm.commit(2, [1, 2, 3], 3)
    assert bm.num_cached_blocks == 1
    bm.free(1)
    bm.free(2)
    assert bm.num_free_blocks == 8
    bm.check_invariants()


def test_adopt_rejects_uncached_blocks_and_occupied_tables():
    bm = BlockManager(num_blocks=4, block_size=2)
    bm.grow(1, 2)
    with pytest.raises(ValueError):
        bm.adopt(1, [], 2)
    with pytest.raises(ValueError):
        bm.adopt(2, [3], 2)
    bm.check_invariants()


# ---- properties over random operation mixes ---------------------------------------------------

PREFIXES = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9], [7, 7, 7, 7]]
ops = st.lists(
    st.tuples(
        st.sampled_from(["admit", "admit", "grow", "free"]),
        st.integers(0, 5),  # seq id
        st.integers(0, len(PREFIXES) - 1),
        st.lists(st.integers(0, 3), max_size=6),  # suffix tokens
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(3, 12), st.integers(1, 3))
def test_random_mixes_keep_counts_exact_and_content_intact(ops, num_blocks, block_size):
    bm = BlockManager(num_blocks=num_blocks, block_size=block_size)
    kv: dict[int, list[int | None]] = {b: [None] * block_size for b in range(num_blocks)}
    seqs: dict[int, list[int]] = {}  # seq -> tokens written so far
    for op, sid, pi, suffix in ops:
        if op == "admit" and sid not in seqs:
            tokens = PREFIXES[pi] + suffix
            cached = bm.match_prefix(tokens)
            if not bm.can_allocate(bm.admission_cost(cached, len(tokens))):
                continue
            hit = bm.adopt(sid, cached, len(tokens))
            bm.grow(sid, len(tokens))
            _check_content(bm, kv, sid, tokens[:hit], block_size)  # what was reused is right
            _write(bm, kv, sid, tokens, hit, block_size)
            seqs[sid] = tokens
        elif op == "grow" and sid in seqs:
            tokens = seqs[sid] + suffix
            if not bm.can_grow(sid, len(tokens)):
                continue
            bm.grow(sid, len(tokens))
            _write(bm, kv, sid, tokens, len(seqs[sid]), block_size)
            seqs[sid] = tokens
        elif op == "free":
            held = len(bm.block_table(sid))
            assert bm.free(sid) == held
            seqs.pop(sid, None)
        bm.check_invariants()
        for s, tokens in seqs.items():  # no block in use was evicted and overwritten
            _check_content(bm, kv, s, tokens, block_size)
    for sid in list(seqs):
        bm.free(sid)
    bm.check_invariants()
    assert bm.num_free_blocks == num_blocks  # no leak


def _write(bm, kv, sid, tokens, start, bs):
    table = bm.block_table(sid)
    for p in range(start, len(tokens)):
        kv[table[p // bs]][p % bs] = tokens[p]
    bm.commit(sid, tokens, len(tokens))


def _check_content(bm, kv, sid, tokens, bs):
    table = bm.block_table(sid)
    assert [kv[table[p // bs]][p % bs] for p in range(len(tokens))] == tokens
