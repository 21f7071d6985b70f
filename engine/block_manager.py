"""Paged KV-cache bookkeeping: which fixed-size blocks each sequence owns (pure Python, no torch).

A block holds ``block_size`` consecutive token positions of one sequence. A sequence's block table
lists its blocks in position order, so position ``p`` lives in ``table[p // block_size]`` at slot
``p % block_size``. The runner only ever sees block ids; this class decides who owns which.
"""

from __future__ import annotations


class OutOfBlocks(RuntimeError):
    """Raised when an allocation needs more free blocks than remain. Nothing was allocated."""


class BlockManager:
    """Allocates, grows and frees per-sequence block tables from a fixed pool."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.num_total_blocks = num_blocks
        self.block_size = block_size  # tokens per block
        # LIFO free list: recently freed blocks are reused first (warm in cache).
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[int, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` positions."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        """True when ``num_blocks`` more blocks can be handed out now."""
        return num_blocks <= len(self._free)

    def has(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def block_table(self, seq_id: int) -> list[int]:
        """The sequence's blocks in position order (empty when it holds none)."""
        return self._tables.get(seq_id, [])

    def num_extra_blocks(self, seq_id: int, num_tokens: int) -> int:
        """Blocks the sequence still needs so that its table covers ``num_tokens`` positions."""
        have = len(self._tables.get(seq_id, ()))
        return max(0, self.blocks_for(num_tokens) - have)

    def can_grow(self, seq_id: int, num_tokens: int) -> bool:
        return self.can_allocate(self.num_extra_blocks(seq_id, num_tokens))

    def grow(self, seq_id: int, num_tokens: int) -> list[int]:
        """Extend (or create) the table so it covers positions ``[0, num_tokens)``.

        All or nothing: raises :class:`OutOfBlocks` without allocating when the pool is short.
        """
        if num_tokens < 0:
            raise ValueError("num_tokens must be >= 0")
        need = self.num_extra_blocks(seq_id, num_tokens)
        if need > len(self._free):
            raise OutOfBlocks(f"need {need} blocks, {len(self._free)} free")
        table = self._tables.setdefault(seq_id, [])
        for _ in range(need):
            table.append(self._free.pop())
        return table

    def tokens_that_fit(self, seq_id: int, num_tokens_now: int) -> int:
        """How many positions past ``num_tokens_now`` fit in owned plus free blocks."""
        have = len(self._tables.get(seq_id, ()))
        capacity = (have + len(self._free)) * self.block_size
        return max(0, capacity - num_tokens_now)

    def free(self, seq_id: int) -> int:
        """Return all the sequence's blocks to the pool; returns how many. Unknown ids free 0."""
        table = self._tables.pop(seq_id, None)
        if not table:
            return 0
        self._free.extend(reversed(table))
        return len(table)

    def check_invariants(self) -> None:
        """Every block is either free or owned by exactly one sequence (tests call this)."""
        owned = [b for t in self._tables.values() for b in t]
        all_ids = sorted(owned + self._free)
        if all_ids != list(range(self.num_total_blocks)):
            raise AssertionError("block pool corrupted: blocks leaked or double-owned")
