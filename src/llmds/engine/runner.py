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

from llmds.engine.models.llama import ForwardBatch, PrefillChunk

__all__ = ["build_batch"]


def build_batch(plan, block_size: int) -> ForwardBatch:
    """The :class:`ForwardBatch` of ``plan`` (decodes first, then prefill chunks in plan order)."""
    bs = block_size
    decode, prefill = plan.decode, plan.prefill
    nd = len(decode)
    ids: list[int] = []
    pos_parts: list[np.ndarray] = []
    slot_parts: list[np.ndarray] = []
    logits_idx: list[int] = list(range(nd))
    if nd:
        dec_pos = np.fromiter((s.num_computed_tokens for s in decode), np.int64, nd)
        width = int(max(len(s.block_table) for s in decode))
        tables = np.zeros((nd, width), np.int32)
        for i, s in enumerate(decode):
            bt = s.block_table
            tables[i, :len(bt)] = bt
            ids.append(s.output_token_ids[-1])  # a decode computes its last sampled token
        rows = np.arange(nd)
        dec_slots = tables[rows, dec_pos // bs].astype(np.int64) * bs + dec_pos % bs
        pos_parts.append(dec_pos)
        slot_parts.append(dec_slots)
        dec_lens = (dec_pos + 1).astype(np.int32)
    else:
        tables = np.zeros((0, 1), np.int32)
        dec_lens = np.zeros(0, np.int32)
    chunks: list[PrefillChunk] = []
    off = nd
    for s, n in prefill:
        c = s.num_computed_tokens
        ctx = c + n
        ids.extend(s.token_slice(c, ctx))
        bt = np.asarray(s.block_table, dtype=np.int64)
        nb = -(-ctx // bs)
        head = bt[:nb]
        if nb == 1 or (head[-1] - head[0] == nb - 1 and bool(np.all(np.diff(head) == 1))):
            base = int(head[0]) * bs  # one ascending run: slots are base + position
            kv = slice(base, base + ctx)
            slot_parts.append(np.arange(base + c, base + ctx, dtype=np.int64))
        else:
            p = np.arange(ctx, dtype=np.int64)
            all_slots = head[p // bs] * bs + p % bs
            kv = torch.from_numpy(all_slots)
            slot_parts.append(all_slots[c:])
        pos_parts.append(np.arange(c, ctx, dtype=np.int64))
        chunks.append(PrefillChunk(off, n, c, kv))
        off += n
        if ctx == s.num_tokens:  # completes the known tokens: samples the next one
            logits_idx.append(off - 1)
    return ForwardBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        positions=torch.from_numpy(np.concatenate(pos_parts)),
        slot_mapping=torch.from_numpy(np.concatenate(slot_parts)),
        num_decode=nd,
        decode_block_tables=tables,
        decode_context_lens=dec_lens,
        prefills=chunks,
        logits_indices=torch.tensor(logits_idx, dtype=torch.long),
    )
