"""Ragged batches: the tokens of many requests in one flat tensor and one mask.

Continuous batching runs the tokens of several requests (prefill chunks and
single decode tokens) through one forward pass.  The tokens are concatenated
into ``[N_total, d]``; what keeps the requests apart is the attention mask::

    allowed[i, j] = seq[i] == seq[j]  and  pos[j] <= pos[i]

causal inside a request, nothing across requests.  The mask is built from two
integer vectors per side (request index and position) with one broadcast
compare, O(N·M) tensor work and O(#chunks) Python — never a per-token loop.
The same rule covers keys that come from a request's KV cache: give them the
request's index and a position below the chunk's start (e.g. ``-1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

from cb_lab.core.request import check_req_id
from cb_lab.exceptions import ValidationError
from llmds._checks import check_int

__all__ = ["TokenMeta", "RaggedBatch", "ragged_causal_mask", "pack_chunks", "build_ragged_batch"]


@dataclass(slots=True, frozen=True)
class TokenMeta:
    """Where one token of a ragged batch comes from (a record for inspection)."""

    req_id: Hashable
    pos_in_seq: int  # position in the request's full sequence
    global_idx: int  # row in the concatenated batch


def ragged_causal_mask(
    q_seq: torch.Tensor, q_pos: torch.Tensor, k_seq: torch.Tensor, k_pos: torch.Tensor
) -> torch.Tensor:
    """Boolean mask ``[Nq, Nk]``: query i may attend key j iff same request and ``k_pos <= q_pos``.

    Parameters
    ----------
    q_seq, q_pos : torch.Tensor
        ``[Nq]`` int64: request index and sequence position of each query.
    k_seq, k_pos : torch.Tensor
        ``[Nk]`` int64: the same for each key.
    """
    same = q_seq.unsqueeze(1) == k_seq.unsqueeze(0)
    causal = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)
    return same & causal


@dataclass(slots=True)
class RaggedBatch:
    """Chunks of several requests packed into one batch.

    ``tokens`` is ``[N, d]``; ``seq`` and ``pos`` are ``[N]`` int64 (request
    index, position in its sequence); chunk ``c`` occupies rows
    ``starts[c]:starts[c + 1]``.  Two chunks with the same ``req_id`` share a
    request index, so they see each other causally.
    """

    tokens: torch.Tensor
    seq: torch.Tensor
    pos: torch.Tensor
    starts: list[int]  # len = num_chunks + 1, starts[0] = 0, starts[-1] = N
    req_ids: list[Hashable]  # one per chunk

    @property
    def num_tokens(self) -> int:
        return self.starts[-1]

    def mask(self) -> torch.Tensor:
        """Self-attention mask ``[N, N]`` of the batch (no cached context)."""
        return ragged_causal_mask(self.seq, self.pos, self.seq, self.pos)

    def meta(self) -> list[TokenMeta]:
        """One :class:`TokenMeta` per token (O(N) Python: for display, not the hot path)."""
        pos = self.pos.tolist()
        out: list[TokenMeta] = []
        for c, rid in enumerate(self.req_ids):
            for g in range(self.starts[c], self.starts[c + 1]):
                out.append(TokenMeta(rid, pos[g], g))
        return out


def _check_chunk(i: int, chunk) -> tuple[Hashable, int, torch.Tensor]:
    if not isinstance(chunk, (tuple, list)) or len(chunk) != 3:
        raise ValidationError(
            f"chunk {i} must be a (req_id, start_pos, tokens) tuple, got {chunk!r}"
        )
    rid, start, toks = chunk
    check_req_id(f"chunk {i}: req_id", rid)
    start = check_int(f"chunk {i}: start_pos", start, 0)
    if not isinstance(toks, torch.Tensor) or toks.dim() != 2:
        shape = tuple(toks.shape) if isinstance(toks, torch.Tensor) else type(toks).__name__
        raise ValidationError(f"chunk {i}: tokens must be a 2-D tensor [len, dim], got {shape}")
    if not toks.is_floating_point():
        raise ValidationError(f"chunk {i}: tokens must be floating point, got {toks.dtype}")
    return rid, start, toks


def pack_chunks(chunks: Sequence[tuple[Hashable, int, torch.Tensor]]) -> RaggedBatch:
    """Validate ``(req_id, start_pos, tokens[len, d])`` chunks and pack them.

    Raises ``ValidationError`` for a malformed chunk or chunks that disagree
    on ``d``, dtype or device.  An empty sequence gives an empty batch
    (``tokens`` of shape ``[0, 0]``).
    """
    if not isinstance(chunks, (list, tuple)):
        raise ValidationError(f"chunks must be a list or tuple, got {type(chunks).__name__}")
    checked = [_check_chunk(i, c) for i, c in enumerate(chunks)]
    if not checked:
        empty = torch.empty(0, dtype=torch.int64)
        return RaggedBatch(torch.empty(0, 0), empty, empty.clone(), [0], [])
    ref = checked[0][2]
    for i, (_, _, t) in enumerate(checked):
        if t.size(1) != ref.size(1) or t.dtype != ref.dtype or t.device != ref.device:
            raise ValidationError(
                f"chunk {i} is [{t.size(1)}] {t.dtype} on {t.device}; chunk 0 is "
                f"[{ref.size(1)}] {ref.dtype} on {ref.device}: all chunks must agree"
            )
    index: dict[Hashable, int] = {}
    seq_of_chunk = [index.setdefault(rid, len(index)) for rid, _, _ in checked]
    lengths = [t.size(0) for _, _, t in checked]
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    dev = ref.device
    lens = torch.tensor(lengths, dtype=torch.int64, device=dev)
    seq = torch.repeat_interleave(torch.tensor(seq_of_chunk, dtype=torch.int64, device=dev), lens)
    # pos[g] = start_pos(chunk) + (g - starts[chunk])
    offset = torch.tensor(
        [s - st for (_, s, _), st in zip(checked, starts)], dtype=torch.int64, device=dev
    )
    pos = torch.arange(starts[-1], dtype=torch.int64, device=dev) + torch.repeat_interleave(
        offset, lens
    )
    tokens = torch.cat([t for _, _, t in checked], dim=0)
    return RaggedBatch(tokens, seq, pos, starts, [rid for rid, _, _ in checked])


def build_ragged_batch(
    chunks: Sequence[tuple[Hashable, int, torch.Tensor]],
) -> tuple[torch.Tensor, list[TokenMeta], torch.Tensor]:
    """Concatenate chunks and build their ragged causal mask.

    Parameters
    ----------
    chunks : sequence of (req_id, start_pos, tokens)
        ``tokens`` is ``[len, d]``; ``start_pos`` is the position of its first
        row in the request's sequence.

    Returns
    -------
    tokens : torch.Tensor
        ``[N_total, d]``, the chunks in order.
    meta : list of TokenMeta
        One record per row.
    mask : torch.Tensor
        Boolean ``[N_total, N_total]``: causal within a request, False across.
    """
    batch = pack_chunks(chunks)
    return batch.tokens, batch.meta(), batch.mask()
