"""Paged KV-cache bookkeeping with automatic prefix caching (pure Python, no torch).

A block holds ``block_size`` consecutive token positions of one sequence. A sequence's block table
lists its blocks in position order, so position ``p`` lives in ``table[p // block_size]`` at slot
``p % block_size``. The runner only ever sees block ids; this class decides who owns which.

Prefix caching (on unless ``enable_prefix_caching=False``): once a *full* block's KV is computed
(:meth:`BlockManager.commit`), it is registered under a hash chained over the token ids of that
block and of every block before it, seeded with a ``salt`` naming whatever else changes the KV
(model, dtype, quantization, tensor-parallel layout). A new sequence adopts the longest chain of
registered blocks matching its tokens (:meth:`match_prefix`, :meth:`adopt`), each shared block
reference-counted. Partial blocks are never shared, and a match always leaves at least the last
token to compute (so the step that follows samples from fresh logits); hence a shared block is
never written again and no copy-on-write is needed. A registered block whose last reference goes
stays cached ("evictable", LRU order) and counts as free: it is evicted, oldest first, only when a
fresh block is needed and no never-cached block is left.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass


class OutOfBlocks(RuntimeError):
    """Raised when an allocation needs more free blocks than remain. Nothing was allocated."""


def chain_hash(prev: bytes, token_ids: list[int]) -> bytes:
    """The hash of one full block: its token ids chained onto the hash of the blocks before it."""
    return hashlib.blake2b(prev + array("q", token_ids).tobytes(), digest_size=16).digest()


def root_hash(salt: str) -> bytes:
    """The chain's seed: a hash of the salt (model fingerprint, TP layout, ...)."""
    return hashlib.blake2b(b"isthmus-kv:" + salt.encode(), digest_size=16).digest()


@dataclass(slots=True)
class PrefixCacheStats:
    """Counters of the prefix cache since the engine started."""

    num_queried_tokens: int = 0  # tokens of the sequences admitted (prompt + resumed output)
    num_hit_tokens: int = 0  # of those, tokens whose KV came from the cache
    num_cached_blocks: int = 0  # blocks registered under a hash now (in use or evictable)
    num_evictions: int = 0  # cached blocks reclaimed for new KV

    @property
    def hit_rate(self) -> float:
        """Tokens reused / tokens queried (0.0 before any query)."""
        return self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0


class BlockManager:
    """Allocates, shares, grows and frees per-sequence block tables from a fixed pool."""

    def __init__(
        self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True, salt: str = ""
    ) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.num_total_blocks = num_blocks
        self.block_size = block_size  # tokens per block
        self.enable_prefix_caching = enable_prefix_caching
        self._root = root_hash(salt)
        # LIFO free list of never-cached blocks: recently freed blocks are reused first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first
        self._refs: dict[int, int] = {}  # block -> number of tables holding it (absent: 0)
        self._hash_of: dict[int, bytes] = {}  # cached block -> its chain hash
        self._block_of: dict[bytes, int] = {}  # chain hash -> cached block
        self._tables: dict[int, list[int]] = {}
        self._chains: dict[int, list[bytes]] = {}  # seq -> hashes of its leading full blocks
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (never-cached plus evictable cached ones)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_uncached_free_blocks(self) -> int:
        """Free blocks that hold no cached prefix: handing them out evicts nothing."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._block_of)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` positions."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        """True when ``num_blocks`` more blocks can be handed out now."""
        return num_blocks <= self.num_free_blocks

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
        """True when the table can cover ``num_tokens`` positions now (inlined: once per row per step)."""
        table = self._tables.get(seq_id)
        need = -(-num_tokens // self.block_size) - (len(table) if table else 0)
        return need <= 0 or need <= len(self._free) + len(self._evictable)

    # ---- prefix cache ----------------------------------------------------------------------

    def match_prefix(self, token_ids: list[int]) -> list[int]:
        """Cached blocks holding the longest cached prefix of ``token_ids`` (read-only).

        At most ``(len(token_ids) - 1) // block_size`` blocks: the last token is always computed.
        """
        if not self.enable_prefix_caching:
            return []
        bs, prev, blocks = self.block_size, self._root, []
        for i in range((len(token_ids) - 1) // bs):
            prev = chain_hash(prev, token_ids[i * bs : (i + 1) * bs])
            block = self._block_of.get(prev)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def admission_cost(self, cached: list[int], num_tokens: int) -> int:
        """Free blocks consumed by adopting ``cached`` and growing to ``num_tokens`` positions."""
        reclaimed = sum(1 for b in cached if b in self._evictable)
        return max(0, self.blocks_for(num_tokens) - len(cached)) + reclaimed

    def adopt(self, seq_id: int, cached: list[int], num_tokens: int) -> int:
        """Start ``seq_id``'s table with the ``cached`` blocks of a :meth:`match_prefix` call.

        ``num_tokens``: the sequence's length (counted as queried). Returns the tokens reused.
        """
        if self._tables.get(seq_id):
            raise ValueError(f"sequence {seq_id} already holds blocks")
        for b in cached:
            if b not in self._hash_of:
                raise ValueError(f"block {b} is not cached")
            self._ref(b)
        self._tables[seq_id] = list(cached)
        self._chains[seq_id] = [self._hash_of[b] for b in cached]
        num_hit = len(cached) * self.block_size
        self.stats.num_queried_tokens += num_tokens
        self.stats.num_hit_tokens += num_hit
        return num_hit

    def commit(self, seq_id: int, token_ids: list[int], num_computed: int) -> None:
        """Register the sequence's full blocks among ``token_ids[:num_computed]`` (KV now written).

        A block whose hash is already cached elsewhere (two sequences computed the same prefix at
        once) stays private to its sequence and is freed uncached.
        """
        table = self._tables.get(seq_id)
        if table is None or not self.enable_prefix_caching:
            return
        chain = self._chains.setdefault(seq_id, [])
        bs = self.block_size
        full = min(num_computed // bs, len(table))
        if full <= len(chain):  # no block filled since the last commit (most decode steps)
            return
        for i in range(len(chain), full):
            h = chain_hash(chain[-1] if chain else self._root, token_ids[i * bs : (i + 1) * bs])
            chain.append(h)
            block = table[i]
            if h not in self._block_of and block not in self._hash_of:
                self._block_of[h] = block
                self._hash_of[block] = h
        self.stats.num_cached_blocks = len(self._block_of)

    # ---- allocation ------------------------------------------------------------------------

    def grow(self, seq_id: int, num_tokens: int) -> list[int]:
        """Extend (or create) the table so it covers positions ``[0, num_tokens)``.

        All or nothing: raises :class:`OutOfBlocks` without allocating when the pool is short.
        """
        if num_tokens < 0:
            raise ValueError("num_tokens must be >= 0")
        table = self._tables.get(seq_id)
        if table is not None and len(table) * self.block_size >= num_tokens:
            return table  # already covered (most decode steps)
        need = self.num_extra_blocks(seq_id, num_tokens)
        if need > self.num_free_blocks:
            raise OutOfBlocks(f"need {need} blocks, {self.num_free_blocks} free")
        table = self._tables.setdefault(seq_id, [])
        for _ in range(need):
            block = self._take_fresh()
            self._refs[block] = 1
            table.append(block)
        return table

    def tokens_that_fit(self, seq_id: int, num_tokens_now: int) -> int:
        """How many positions past ``num_tokens_now`` fit in owned plus free blocks."""
        have = len(self._tables.get(seq_id, ()))
        capacity = (have + self.num_free_blocks) * self.block_size
        return max(0, capacity - num_tokens_now)

    def free(self, seq_id: int) -> int:
        """Drop the sequence's references; returns how many blocks it held. Unknown ids free 0.

        Blocks nobody else holds go back to the pool: cached ones stay cached (evictable, the
        table's tail first so a prefix outlives its continuation), the others become free.
        """
        self._chains.pop(seq_id, None)
        table = self._tables.pop(seq_id, None)
        if not table:
            return 0
        for block in reversed(table):
            n = self._refs[block] - 1
            if n:
                self._refs[block] = n
                continue
            del self._refs[block]
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)
        return len(table)

    def _ref(self, block: int) -> None:
        self._evictable.pop(block, None)
        self._refs[block] = self._refs.get(block, 0) + 1

    def _take_fresh(self) -> int:
        if self._free:
            return self._free.pop()
        block, _ = self._evictable.popitem(last=False)  # least recently released
        del self._block_of[self._hash_of.pop(block)]
        self.stats.num_evictions += 1
        self.stats.num_cached_blocks = len(self._block_of)
        return block

    def check_invariants(self) -> None:
        """Each block is free, evictable or held with an exact reference count (tests call this)."""
        counts: dict[int, int] = {}
        for table in self._tables.values():
            for b in table:
                counts[b] = counts.get(b, 0) + 1
        if counts != self._refs:
            raise AssertionError("reference counts differ from the tables holding the blocks")
        everything = sorted([*counts, *self._free, *self._evictable])
        if everything != list(range(self.num_total_blocks)):
            raise AssertionError("block pool corrupted: blocks leaked, double-freed or double-owned")
        cached = self._hash_of
        if any(b in cached for b in self._free) or any(b not in cached for b in self._evictable):
            raise AssertionError("free list holds a cached block, or the LRU an uncached one")
        if {v: k for k, v in self._hash_of.items()} != self._block_of:
            raise AssertionError("hash maps out of sync")
