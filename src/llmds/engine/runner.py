"""Turn a step plan into the model's flat batch: token ids, positions, KV slots, block tables.

A token at position ``pos`` of a request lives in KV slot
``block_table[pos // block_size] * block_size + pos % block_size`` of every layer's block tensor.
The planner's invariant (a request holds blocks for exactly the tokens it has computed plus the
ones this step computes) means every slot computed here exists.  Per step the work is O(requests)
Python plus numpy over the tokens; no per-token Python objects.
"""

from __future__ import annotations

import numpy as np
import torch

from llmds.engine.models.llama import ForwardBatch

__all__ = ["build_batch"]


def build_batch(plan, block_size: int) -> ForwardBatch:
    """The :class:`ForwardBatch` of ``plan`` (decodes first, then prefill chunks in plan order)."""
    bs = block_size
    decode, prefill = plan.decode, plan.prefill
    nd, npf = len(decode), len(prefill)
    ids: list[int] = []
    pos_parts: list[np.ndarray] = []
    slot_parts: list[np.ndarray] = []
    logits_idx: list[int] = list(range(nd))
    if nd:
        dec_pos = np.fromiter((s.num_computed_tokens for s in decode), np.int64, nd)
        dec_tables = _tables(decode)
        rows = np.arange(nd)
        pos_parts.append(dec_pos)
        slot_parts.append(dec_tables[rows, dec_pos // bs].astype(np.int64) * bs + dec_pos % bs)
        ids.extend(s.output_token_ids[-1] for s in decode)  # a decode computes its last sampled token
        dec_lens = (dec_pos + 1).astype(np.int32)
    else:
        dec_tables = np.zeros((0, 1), np.int32)
        dec_lens = np.zeros(0, np.int32)
    starts = np.empty(npf, np.int64)
    lens = np.empty(npf, np.int64)
    offsets = np.empty(npf, np.int64)
    pre_tables = _tables([s for s, _ in prefill]) if npf else np.zeros((0, 1), np.int32)
    off = nd
    for i, (s, n) in enumerate(prefill):
        c = s.num_computed_tokens
        ids.extend(s.token_slice(c, c + n))
        p = np.arange(c, c + n, dtype=np.int64)
        pos_parts.append(p)
        slot_parts.append(pre_tables[i, p // bs].astype(np.int64) * bs + p % bs)
        starts[i], lens[i], offsets[i] = c, n, off
        off += n
        if c + n == s.num_tokens:  # completes the known tokens: samples the next one
            logits_idx.append(off - 1)
    return ForwardBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        positions=np.concatenate(pos_parts),
        slot_mapping=np.concatenate(slot_parts),
        num_decode=nd,
        decode_block_tables=dec_tables,
        decode_context_lens=dec_lens,
        prefill_block_tables=pre_tables,
        prefill_starts=starts,
        prefill_lens=lens,
        prefill_offsets=offsets,
        logits_indices=torch.tensor(logits_idx, dtype=torch.long),
    )


def _tables(seqs) -> np.ndarray:
    """The block tables of ``seqs`` as one int32 array, zero-padded to the longest."""
    width = max(len(s.block_table) for s in seqs)
    tables = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        bt = s.block_table
        tables[i, :len(bt)] = bt
    return tables
