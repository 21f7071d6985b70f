import random

import pytest
from isthmus.engine.core.block_manager import BlockManager, OutOfBlocks


def test_grow_allocates_whole_blocks_and_free_returns_them():
    bm = BlockManager(num_blocks=8, block_size=4)
    assert bm.grow(1, 5) == bm.block_table(1)
    assert len(bm.block_table(1)) == 2
    assert bm.num_free_blocks == 6
    bm.grow(1, 8)  # still 2 blocks
    assert len(bm.block_table(1)) == 2
    bm.grow(1, 9)
    assert len(bm.block_table(1)) == 3
    assert bm.free(1) == 3
    assert bm.num_free_blocks == 8
    assert bm.free(1) == 0
    bm.check_invariants()


def test_out_of_blocks_is_all_or_nothing():
    bm = BlockManager(num_blocks=3, block_size=2)
    bm.grow(1, 4)
    assert not bm.can_grow(2, 4)
    assert bm.can_grow(2, 2)
    with pytest.raises(OutOfBlocks):
        bm.grow(2, 4)
    assert bm.num_free_blocks == 1
    assert bm.block_table(2) == []
    assert bm.tokens_that_fit(1, 4) == 2
    bm.check_invariants()


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        BlockManager(0, 4)
    with pytest.raises(ValueError):
        BlockManager(4, 0)


def test_random_operations_never_leak_or_double_own():
    rng = random.Random(7)
    bm = BlockManager(num_blocks=20, block_size=3)
    sizes: dict[int, int] = {}
    for _ in range(2000):
        sid = rng.randrange(10)
        op = rng.random()
        if op < 0.6:
            n = sizes.get(sid, 0) + rng.randrange(1, 8)
            if bm.can_grow(sid, n):
                bm.grow(sid, n)
                sizes[sid] = n
            else:
                with pytest.raises(OutOfBlocks):
                    bm.grow(sid, n)
        else:
            bm.free(sid)
            sizes.pop(sid, None)
        bm.check_invariants()
        owned = sum(len(bm.block_table(s)) for s in range(10))
        assert owned + bm.num_free_blocks == 20
    for sid in range(10):
        bm.free(sid)
    assert bm.num_free_blocks == 20
