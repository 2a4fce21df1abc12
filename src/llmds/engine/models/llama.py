"""Llama / SmolLM2 forward over one flattened batch, with paged K/V.

One call of :meth:`LlamaModel.forward` runs every token the step planned, of every request,
through the 30 layers at once: the decode tokens first (one per decoding request), then each
prefill chunk.  The linear layers see ``[num_tokens, hidden]`` (oneDNN, weights prepacked: that
is where batching pays); everything between them is a numba kernel over all tokens of the step,
reading and writing float32 or bfloat16 arrays in place (:mod:`._fused_kernels`,
:mod:`._attn_kernels`).  Per layer::

    qkv = linear(x)                       rope_cache: RoPE on q and k; k, v -> K/V blocks at the slots
    decode attention (one token each)     prefill attention (chunks, causal), both through block tables
    o = linear(attn)                      add_rms_norm: h += o; x = ffn_norm(h)
    gu = linear(x); act = silu(g) * u     d = linear(act); add_rms_norm: h += d; x = next norm(h)

K/V of every token are written before its attention, so a chunk sees its own keys and any
earlier chunk's (or a shared prefix's).  The last layer's second norm is the model's final norm,
applied to all rows; the logits are taken from the rows that sample.

Numerics: the kernels compute in float32 and round once to the activation dtype, RoPE tables are
transformers' (same ``inv_freq``, float32), attention accumulates in float32.  In float32 the
greedy output is token-identical to transformers' ``LlamaForCausalLM`` (tested).  In bfloat16 the
linear layers' inputs and outputs are bfloat16, but the residual stream stays float32 (as in
llama.cpp) and the logits within one bfloat16 step of each row's best are recomputed unrounded
(:func:`refine_top_logits`): greedy bfloat16 output then follows float32's much longer (24 chat
prompts, 48 tokens: 16 identical against 8 with a bfloat16 residual and rounded logits, and 10 for
transformers' bfloat16 against its float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmds.engine.kv.storage import KVStorage
from llmds.engine.loader import ModelConfig, ModelWeights
from llmds.engine.models import _fused_kernels as fk
from llmds.engine.models._attn_kernels import paged_decode_attention, paged_prefill_attention
from llmds.engine.models._fused_kernels import pick
from llmds.engine.models._simd import as_kernel_array as A
from llmds.engine.models.linear import as_embedding, as_linear
from llmds.errors import ValidationError

__all__ = ["ForwardBatch", "LlamaModel"]


@dataclass(slots=True)
class ForwardBatch:
    """Inputs of one step (built by the runner from the plan and the block tables).

    input_ids : int64 tensor [num_tokens]; positions, slot_mapping : int64 arrays [num_tokens]
    num_decode : the first ``num_decode`` tokens are decodes, one per request
    decode_block_tables : int32 [num_decode, max_blocks]; decode_context_lens : int32 [num_decode]
    prefill_* : one entry per prefill chunk (after the decodes, in plan order): its block table
        (int32 [num_chunks, max_blocks]), first position, token count and offset in the flat batch
    logits_indices : int64 [num_sampling]: flat rows whose logits are returned (last token of
        each decode and of each chunk that completes its request's prompt)
    """

    input_ids: torch.Tensor
    positions: np.ndarray
    slot_mapping: np.ndarray
    num_decode: int
    decode_block_tables: np.ndarray
    decode_context_lens: np.ndarray
    prefill_block_tables: np.ndarray
    prefill_starts: np.ndarray
    prefill_lens: np.ndarray
    prefill_offsets: np.ndarray
    logits_indices: torch.Tensor


_LINEAR = ("qkv", "o", "gate_up", "down")


class LlamaModel:
    """The forward pass.  Owns the (cast) weights; reads and writes the K/V block tensors it is given.

    Parameters
    ----------
    config, weights : from :func:`llmds.engine.loader.load_model` (float32)
    dtype : torch.float32 or torch.bfloat16 (weights and activations)
    kv : the :class:`~llmds.engine.kv_storage.KVStorage` arena (float32 or bfloat16) whose block ids the
        engine's BlockManager hands out; ``k_cache[layer]`` is ``[num_blocks, block_size, kv_heads, head_dim]``
    """

    def __init__(self, config: ModelConfig, weights: ModelWeights, dtype: torch.dtype,
                 kv: KVStorage) -> None:
        self.config = config
        self.dtype = dtype
        cast = (lambda t: t) if dtype == torch.float32 else (lambda t: t.to(dtype))
        # callables (see .linear): dense weights prepacked for oneDNN (the tied lm_head gets its own
        # packed copy), or weights a quantized loader prepared
        self.embed = as_embedding(weights.embed, dtype)
        self.lm_head = as_linear(weights.lm_head, dtype)
        # bfloat16: the lm_head's rows as a plain table, to recompute the logits nearest the best
        # (refine_top_logits); the embedding's own table when tied
        self.lm_rows = None
        if dtype == torch.bfloat16 and isinstance(weights.lm_head, torch.Tensor):
            tied = weights.lm_head is weights.embed and isinstance(getattr(self.embed, "table", None), torch.Tensor)
            self.lm_rows = self.embed.table if tied else weights.lm_head.to(dtype)
        self.linears = [tuple(as_linear(getattr(lw, f), dtype) for f in _LINEAR) for lw in weights.layers]
        # RMSNorm weights in the order the forward applies them: attn_norm 0, ffn_norm 0, attn_norm 1, ...,
        # ffn_norm L-1, the final norm (kernel arrays: float32 or bfloat16 bits)
        norms = [t for lw in weights.layers for t in (lw.attn_norm, lw.ffn_norm)] + [weights.norm]
        self.norms_np = [A(cast(t).contiguous()) for t in norms]
        self.eps = np.float32(config.rms_norm_eps)
        k_cache, v_cache = kv.k_cache, kv.v_cache
        nl, nb, bs, hkv, hd = k_cache.shape
        if (nl, hkv, hd) != (config.num_layers, config.num_kv_heads, config.head_dim):
            raise ValidationError(f"KV storage {kv!r} does not fit the model ({config.num_layers} layers, "
                                  f"{config.num_kv_heads} KV heads of {config.head_dim})")
        self.block_size = bs
        self.kv = kv
        # per layer, as kernel arrays: the block tensors (attention) and flat slot views (K/V writes)
        self.k_np = [A(k_cache[i]) for i in range(nl)]
        self.v_np = [A(v_cache[i]) for i in range(nl)]
        self.k_flat = [a.reshape(nb * bs, hkv, hd) for a in self.k_np]
        self.v_flat = [a.reshape(nb * bs, hkv, hd) for a in self.v_np]
        # RoPE tables from transformers' inv_freq: [max_pos, hd/2] float32 (its cat(freqs, freqs) repeats them)
        hd2 = torch.arange(0, hd, 2, dtype=torch.int64).float() / hd
        inv_freq = 1.0 / (config.rope_theta ** hd2)
        pos = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        self.cos = freqs.cos().numpy()
        self.sin = freqs.sin().numpy()
        self.scale = np.float32(hd ** -0.5)

    # -------------------------------------------------------------- forward
    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Float32 logits ``[len(batch.logits_indices), vocab]``."""
        c = self.config
        T = batch.input_ids.shape[0]
        nh, nkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        nd = batch.num_decode
        dt = self.dtype
        eps = self.eps
        norm, add_norm = pick(fk.rms_norm, T), pick(fk.add_rms_norm, T)
        silu_mul, rope_cache = pick(fk.silu_mul, T), pick(fk.rope_cache, T)
        h = self.embed(batch.input_ids).float()  # the residual stream [T, hidden], float32 in any dtype
        x = torch.empty(h.shape, dtype=dt)  # a norm's output: the next linear's input
        attn = torch.empty((T, nh * hd), dtype=dt)
        act = torch.empty((T, c.intermediate_size), dtype=dt)
        q = np.empty((T, nh, hd), np.float32)
        h_np, x_np, attn_np, act_np = A(h), A(x), A(attn), A(act)
        attn3 = attn_np.reshape(T, nh, hd)
        pos, slots = batch.positions, batch.slot_mapping
        norms = self.norms_np
        norm(h_np, norms[0], eps, x_np)
        for li, (qkv_proj, o_proj, gate_up_proj, down_proj) in enumerate(self.linears):
            rope_cache(A(qkv_proj(x)), pos, self.cos, self.sin, slots, nh, nkv, q,
                       self.k_flat[li], self.v_flat[li])
            if nd:
                paged_decode_attention(q[:nd], self.k_np[li], self.v_np[li], batch.decode_block_tables,
                                       batch.decode_context_lens, self.scale, attn3[:nd])
            if len(batch.prefill_lens):
                paged_prefill_attention(q, self.k_np[li], self.v_np[li], batch.prefill_block_tables,
                                        batch.prefill_starts, batch.prefill_lens, batch.prefill_offsets,
                                        self.scale, attn3)
            add_norm(h_np, A(o_proj(attn)), norms[2 * li + 1], eps, x_np)
            silu_mul(A(gate_up_proj(x)), act_np)
            add_norm(h_np, A(down_proj(act)), norms[2 * li + 2], eps, x_np)  # the last: the final norm
        last = x.index_select(0, batch.logits_indices)
        logits = self.lm_head(last).float()
        if self.lm_rows is not None:
            refine_top_logits(logits, last, self.lm_rows)
        return logits


def refine_top_logits(logits: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, max_per_row: int = 16) -> None:
    """Recompute in float32, in place, the logits within one bfloat16 step of each row's best.

    A bfloat16 linear layer rounds its output to 8 significant bits: logits near 25 land on a
    grid of 0.125, so two tokens whose float32 logits differ by less come out tied or swapped, and
    greedy decoding takes whichever the rounding favours (SmolLM2 answering "What is the capital
    of France?" with "L'..." instead of "The ...").  The few logits that can still be the best after
    that rounding, those within ``|best| * 2**-7`` of it, are recomputed as float32 dot products
    of the same bfloat16 ``x`` rows and weight ``rows``: greedy picks, and the logprobs of the top
    tokens, are then those of the unrounded sums.  Rows with more than ``max_per_row`` candidates
    (a flat distribution) are left as they are."""
    top = logits.amax(1, keepdim=True)
    near = logits >= top - top.abs() * 2.0 ** -7
    r, c = near.nonzero(as_tuple=True)
    if len(r) > max_per_row * logits.shape[0]:
        keep = near.sum(1)[r] <= max_per_row
        r, c = r[keep], c[keep]
    if len(r):
        logits[r, c] = torch.einsum("kh,kh->k", x[r].float(), rows[c].float())
