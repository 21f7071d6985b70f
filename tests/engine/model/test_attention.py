"""Portable paged decode attention: GQA without repeated keys, and length groups."""

from __future__ import annotations

import torch
from isthmus.engine.model.attention import AttentionMetadata, _decode_batch, paged_attention

BLOCK = 4


def _caches(num_blocks: int, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (num_blocks, BLOCK, kv_heads, head_dim)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _reference(q, k_cache, v_cache, tables, lens, scale):  # type: ignore[no-untyped-def]
    """Each sequence alone, query head h reading KV head h // G, explicit softmax."""
    heads, kv_heads = q.shape[1], k_cache.shape[2]
    out = []
    for i in range(q.shape[0]):
        n = int(lens[i])
        slots = [int(tables[i, p // BLOCK]) * BLOCK + p % BLOCK for p in range(n)]
        k = k_cache.flatten(0, 1)[slots].repeat_interleave(heads // kv_heads, dim=1)  # [n, heads, d]
        v = v_cache.flatten(0, 1)[slots].repeat_interleave(heads // kv_heads, dim=1)
        w = torch.softmax(torch.einsum("hd,nhd->hn", q[i], k) * scale, dim=-1)
        out.append(torch.einsum("hn,nhd->hd", w, v))
    return torch.stack(out)


def test_decode_matches_per_sequence_reference_for_gqa_and_mha() -> None:
    for heads, kv_heads in [(6, 2), (4, 4), (8, 1)]:
        k_cache, v_cache = _caches(40, kv_heads, 16)
        lens = torch.tensor([1, 4, 5, 17, 30])
        tables = torch.stack([torch.randperm(40)[:8] for _ in range(5)])
        q = torch.randn(5, heads, 16)
        got = _decode_batch(q, k_cache, v_cache, tables, lens, 0.25)
        assert torch.allclose(got, _reference(q, k_cache, v_cache, tables, lens, 0.25), atol=1e-5)


def test_length_groups_give_the_same_output_as_one_group() -> None:
    k_cache, v_cache = _caches(200, 2, 16)
    lens = torch.tensor(sorted(torch.randint(1, 120, (20,)).tolist()))  # the runner sorts decodes
    tables = torch.stack([torch.randperm(200)[:30] for _ in range(20)])
    q = torch.randn(20, 6, 16)

    def attend(groups: list[tuple[int, int, int]]) -> torch.Tensor:
        meta = AttentionMetadata(
            slot_mapping=torch.zeros(20, dtype=torch.long), num_prefills=0, num_prefill_tokens=0,
            prefill_query_start_cpu=[0], prefill_start_pos_cpu=[], prefill_block_ids=[],
            decode_block_tables=tables, decode_context_lens=lens, block_size=BLOCK, decode_groups_cpu=groups,
        )
        return paged_attention(q, k_cache, v_cache, meta, 0.25)

    blocks = [-(-int(lens[b - 1]) // BLOCK) for b in (7, 14, 20)]
    grouped = attend([(0, 7, blocks[0]), (7, 14, blocks[1]), (14, 20, blocks[2])])
    assert torch.allclose(grouped, attend([]), atol=1e-6)
    assert torch.allclose(grouped, _reference(q, k_cache, v_cache, tables, lens, 0.25), atol=1e-5)
