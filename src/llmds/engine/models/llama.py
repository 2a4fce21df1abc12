"""Llama / SmolLM2 forward over one flattened batch, with paged K/V.

One call of :meth:`LlamaModel.forward` runs every token the step planned, of every request,
through the 30 layers at once: the decode tokens first (one per decoding request), then each
prefill chunk.  The linear layers see ``[num_tokens, hidden]`` (that is where batching pays);
attention is per request:

* decode tokens: one numba call per layer for all of them (``paged_decode_attention``), reading
  K/V through the block tables;
* a prefill chunk of ``n`` tokens at positions ``[start, start + n)``: ``scaled_dot_product_attention``
  of its queries against K/V ``[0, start + n)``, a zero-copy slice of the layer's slot view when
  the request's blocks are one ascending run, else a gather; causal within the chunk.

K/V of every token are written into the layer's block tensor at ``slot_mapping`` before its
attention, so a chunk sees its own keys and any earlier chunk's (or a shared prefix's).

Numerics follow transformers' ``LlamaForCausalLM`` op for op in float32 (RMSNorm in float32 then
cast, rotate-half RoPE from the same ``inv_freq``, SiLU-gated MLP), which is what makes greedy
outputs token-identical; in bfloat16 the linear layers run in bfloat16 (oneDNN) while norms,
RoPE tables and attention accumulate in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from llmds.engine.kv.storage import KVStorage
from llmds.engine.loader import ModelConfig, ModelWeights
from llmds.engine.models._attn_kernels import paged_decode_attention
from llmds.errors import ValidationError

__all__ = ["ForwardBatch", "PrefillChunk", "LlamaModel"]


@dataclass(slots=True)
class PrefillChunk:
    """Tokens ``[offset, offset + n)`` of the flat batch are positions ``[start, start + n)`` of one request.

    ``kv`` addresses the request's K/V of positions ``[0, start + n)`` in a layer's slot view:
    a ``slice`` when they are one run of slots (zero-copy), else an int64 tensor of slots.
    """

    offset: int
    n: int
    start: int
    kv: slice | torch.Tensor


@dataclass(slots=True)
class ForwardBatch:
    """Inputs of one step (built by the runner from the plan and the block tables).

    input_ids, positions, slot_mapping : int64 [num_tokens]
    num_decode : the first ``num_decode`` tokens are decodes, one per request
    decode_block_tables : int32 [num_decode, max_blocks]; decode_context_lens : int32 [num_decode]
    prefills : the prefill chunks after the decodes, in order
    logits_indices : int64 [num_sampling]: flat rows whose logits are returned (last token of
        each decode and of each chunk that completes its request's prompt)
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    num_decode: int
    decode_block_tables: np.ndarray
    decode_context_lens: np.ndarray
    prefills: list[PrefillChunk]
    logits_indices: torch.Tensor


_LINEAR = ("qkv", "o", "gate_up", "down")


def _onednn_packing() -> bool:
    """Whether this torch build can prepack linear weights for oneDNN (CPU builds with mkldnn)."""
    try:
        w = torch.ones(8, 8)
        x = torch.ones(2, 8)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 32), None, "none",
                                               [], "")
        return bool(torch.equal(y, F.linear(x, w)))
    except (AttributeError, RuntimeError):
        return False


_PACKED = torch.backends.mkldnn.is_available() and _onednn_packing()


def pack_linear(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[out, in]`` in oneDNN's blocked layout when available, else as is.

    Prepacking is what torch's own inductor does for CPU inference: without it, each call
    reorders the weight (bf16) or runs MKL's sgemm (fp32).  Measured on the 2-core machine,
    per call: 1.7-4x faster at 1-32 rows, 1.0-1.4x at 512 (lm_head: 4x at one row); bf16 results
    identical, fp32 within 2e-4 of F.linear (different blocking of the same sums).
    """
    return torch.ops.mkldnn._reorder_linear_weight(weight, 32) if _PACKED else weight


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a weight from :func:`pack_linear`."""
    if _PACKED:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    return F.linear(x, weight)


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
        self.embed = cast(weights.embed)
        # linear weights prepacked for oneDNN (see `pack_linear`); the tied lm_head gets its own packed copy
        self.lm_head = pack_linear(cast(weights.lm_head))
        self.norm = cast(weights.norm)
        self.layers = [tuple(pack_linear(cast(getattr(lw, f))) if f in _LINEAR else cast(getattr(lw, f))
                             for f in ("attn_norm", "qkv", "o", "ffn_norm", "gate_up", "down"))
                       for lw in weights.layers]
        k_cache, v_cache = kv.k_cache, kv.v_cache
        nl, nb, bs, hkv, hd = k_cache.shape
        if (nl, hkv, hd) != (config.num_layers, config.num_kv_heads, config.head_dim):
            raise ValidationError(f"KV storage {kv!r} does not fit the model ({config.num_layers} layers, "
                                  f"{config.num_kv_heads} KV heads of {config.head_dim})")
        self.block_size = bs
        self.kv = kv
        # flat slot views per layer, for torch (writes, prefill) and numpy (decode kernel)
        self.k_slots = [kv.k_layer(i) for i in range(nl)]
        self.v_slots = [kv.v_layer(i) for i in range(nl)]
        # per-layer block tensors as numpy (bfloat16 as its uint16 bits) for the decode kernel
        if k_cache.dtype == torch.bfloat16:
            self.k_np = [k_cache[i].view(torch.int16).numpy().view(np.uint16) for i in range(nl)]
            self.v_np = [v_cache[i].view(torch.int16).numpy().view(np.uint16) for i in range(nl)]
        else:
            self.k_np = [k_cache[i].numpy() for i in range(nl)]
            self.v_np = [v_cache[i].numpy() for i in range(nl)]
        # RoPE tables exactly as transformers builds them (float32)
        hd2 = torch.arange(0, hd, 2, dtype=torch.int64).float() / hd
        inv_freq = 1.0 / (config.rope_theta ** hd2)
        pos = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        # [max_pos, hd/2] (transformers' cat(freqs, freqs) repeats these), in the model dtype
        self.cos = freqs.cos().to(dtype)
        self.sin = freqs.sin().to(dtype)
        self.scale = hd ** -0.5
        self._norm = self._rms_norm_exact if dtype == torch.float32 else self._rms_norm_fused

    # ------------------------------------------------------------------ ops
    def _rms_norm_exact(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """transformers' LlamaRMSNorm op for op (float32: the exactness reference)."""
        xf = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return w * xf

    def _rms_norm_fused(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """One fused op (it accumulates in float32) for bfloat16."""
        return F.rms_norm(x, (x.shape[-1],), w, self.config.rms_norm_eps)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, heads, hd]; cos/sin [T, 1, hd/2]: (x1 c - x2 s, x2 c + x1 s) (rotate-half form)."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)

    # -------------------------------------------------------------- forward
    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Float32 logits ``[len(batch.logits_indices), vocab]``."""
        c = self.config
        T = batch.input_ids.shape[0]
        nh, nkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        qs, ks = c.q_size, c.kv_size
        nd = batch.num_decode
        h = F.embedding(batch.input_ids, self.embed)
        cos = self.cos[batch.positions].unsqueeze(1)
        sin = self.sin[batch.positions].unsqueeze(1)
        slots = batch.slot_mapping
        attn = torch.empty((T, nh, hd), dtype=torch.float32)
        attn_np = attn.numpy()
        if nd:
            dec_tables, dec_lens = batch.decode_block_tables, batch.decode_context_lens
        for li, (attn_norm, w_qkv, w_o, ffn_norm, w_gate_up, w_down) in enumerate(self.layers):
            x = self._norm(h, attn_norm)
            qkv = linear(x, w_qkv)
            qk = self._rope(qkv[:, :qs + ks].view(T, nh + nkv, hd), cos, sin)  # q and k heads at once
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, qs + ks:].view(T, nkv, hd)
            kc, vc = self.k_slots[li], self.v_slots[li]
            kc.index_copy_(0, slots, k if k.dtype == kc.dtype else k.to(kc.dtype))
            vc.index_copy_(0, slots, v if v.dtype == vc.dtype else v.to(vc.dtype))
            if nd:
                qd = q[:nd].float().contiguous()
                paged_decode_attention(qd.numpy(), self.k_np[li], self.v_np[li], dec_tables, dec_lens,
                                       np.float32(self.scale), attn_np[:nd])
            for p in batch.prefills:
                self._prefill_attention(q, kc, vc, p, attn)
            o = linear(attn.view(T, qs).to(h.dtype), w_o)
            h = h + o
            x = self._norm(h, ffn_norm)
            gu = linear(x, w_gate_up)
            f = c.intermediate_size
            h = h + linear(F.silu(gu[:, :f]) * gu[:, f:], w_down)
        last = h.index_select(0, batch.logits_indices)
        return linear(self._norm(last, self.norm), self.lm_head).float()

    def _prefill_attention(self, q, kc, vc, p: PrefillChunk, out) -> None:
        n, start = p.n, p.start
        ctx = start + n
        if isinstance(p.kv, slice):
            K, V = kc[p.kv], vc[p.kv]
        else:
            K, V = kc.index_select(0, p.kv), vc.index_select(0, p.kv)
        qf = q[p.offset:p.offset + n].transpose(0, 1).unsqueeze(0).float()  # [1, nh, n, hd]
        K = K.transpose(0, 1).unsqueeze(0).float()  # [1, nkv, ctx, hd]
        V = V.transpose(0, 1).unsqueeze(0).float()
        if start == 0:
            o = F.scaled_dot_product_attention(qf, K, V, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            rows = torch.arange(start, ctx).unsqueeze(1)
            mask = torch.arange(ctx).unsqueeze(0) <= rows  # [n, ctx]: causal, offset by start
            o = F.scaled_dot_product_attention(qf, K, V, attn_mask=mask, scale=self.scale, enable_gqa=True)
        out[p.offset:p.offset + n] = o[0].transpose(0, 1)
