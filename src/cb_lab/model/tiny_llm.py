"""TinyLLM: a one-layer attention model for the cb_lab teaching API.

Tokens are ``dim``-vectors (no vocabulary): a request's prompt is ``[L, dim]``
and each generated token is the model's output vector at the last position,
fed back as the next input.  One pre-norm attention block with a residual::

    h = x / rms(x)
    q, k, v = h Wq, h Wk, h Wv          # [N, dim] each, num_heads heads
    out = x + softmax(q kᵀ / sqrt(hd) + mask) v Wo

No positional encoding, so attention depends only on *which* keys a query may
see; that is what makes a ragged batch (and a compressed cache) meaningful.
Weights come from a seeded generator: the same ``seed`` gives the same model.
All paths (dense, ragged, decode) use the same attention kernel, so a request
batched with others gives the same outputs as the request alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from cb_lab.exceptions import ValidationError
from llmds._checks import check_int
from llmds.engine.kv.storage import check_dtype

__all__ = ["TinyLLM", "RaggedOutput", "attention"]


class RaggedOutput(NamedTuple):
    out: torch.Tensor  # [N, dim] outputs of the new tokens
    k: torch.Tensor  # [N, dim] keys of the new tokens (to append to the cache)
    v: torch.Tensor  # [N, dim]
    attn: torch.Tensor  # [heads, N, P + N] attention probabilities


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
    """Masked multi-head attention.

    ``q`` ``[N, H, hd]``, ``k``/``v`` ``[M, H, hd]``, ``mask`` bool ``[N, M]``
    (True = may attend; every row needs at least one True).  Returns
    ``(out [N, H, hd], probs [H, N, M])``.
    """
    scores = torch.einsum("nhd,mhd->hnm", q, k) * (1.0 / math.sqrt(q.size(-1)))
    scores = scores.masked_fill(~mask.unsqueeze(0), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hnm,mhd->nhd", probs, v), probs


def _xavier(g: torch.Generator, n: int, dtype: torch.dtype) -> torch.Tensor:
    bound = math.sqrt(6.0 / (n + n))
    return (torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).to(dtype)


class TinyLLM(nn.Module):
    """Single-layer attention model with fixed-seed initialisation.

    Parameters
    ----------
    dim : int
        Model (and token) width, > 0 and divisible by ``num_heads``.
    num_heads : int
        Attention heads (default 1).
    seed : int
        Seed of the weight initialisation.
    dtype : torch.dtype
        Parameter dtype (floating point); inputs must match it.
    """

    def __init__(
        self, dim: int = 16, num_heads: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        dim, num_heads = check_int("dim", dim, 1), check_int("num_heads", num_heads, 1)
        if dim % num_heads:
            raise ValidationError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        check_dtype(dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        # weights are [in, out]: y = x @ W
        self.wq = nn.Parameter(_xavier(g, dim, dtype), requires_grad=False)
        self.wk = nn.Parameter(_xavier(g, dim, dtype), requires_grad=False)
        self.wv = nn.Parameter(_xavier(g, dim, dtype), requires_grad=False)
        self.wo = nn.Parameter(_xavier(g, dim, dtype), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.wq.dtype

    # ----------------------------------------------------------------- checks
    def _check_tokens(self, x, what: str = "tokens") -> None:
        if not isinstance(x, torch.Tensor):
            raise ValidationError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.size(1) != self.dim:
            raise ValidationError(f"{what} must be [n, {self.dim}], got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise ValidationError(f"{what} must be {self.dtype} like the model, got {x.dtype}")

    # ------------------------------------------------------------------ core
    def _qkv(self, x: torch.Tensor):
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return h @ self.wq, h @ self.wk, h @ self.wv

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.size(0), self.num_heads, self.head_dim)

    @torch.no_grad()
    def forward_ragged(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        past_k: torch.Tensor | None = None,
        past_v: torch.Tensor | None = None,
    ) -> RaggedOutput:
        """Attention of ``N`` new tokens over ``P`` context keys plus themselves.

        Parameters
        ----------
        tokens : torch.Tensor
            ``[N, dim]`` new tokens (any mix of requests).
        mask : torch.Tensor
            Bool ``[N, P + N]``; columns are ``past_k`` rows then the new tokens.
        past_k, past_v : torch.Tensor, optional
            ``[P, dim]`` cached keys/values (``P = 0`` when omitted).
        """
        self._check_tokens(tokens)
        if past_k is None and past_v is None:
            past_k = past_v = tokens.new_empty(0, self.dim)
        elif past_k is None or past_v is None:
            raise ValidationError("pass both past_k and past_v, or neither")
        else:
            self._check_tokens(past_k, "past_k")
            self._check_tokens(past_v, "past_v")
            if past_k.size(0) != past_v.size(0):
                raise ValidationError(f"past_k has {past_k.size(0)} rows, past_v {past_v.size(0)}")
        n, m = tokens.size(0), past_k.size(0) + tokens.size(0)
        if (
            not isinstance(mask, torch.Tensor)
            or mask.dtype != torch.bool
            or tuple(mask.shape) != (n, m)
        ):
            got = (tuple(mask.shape), mask.dtype) if isinstance(mask, torch.Tensor) else type(mask)
            raise ValidationError(f"mask must be a bool tensor [{n}, {m}], got {got}")
        q, k, v = self._qkv(tokens)
        keys = torch.cat((past_k, k)) if past_k.size(0) else k
        vals = torch.cat((past_v, v)) if past_v.size(0) else v
        ctx, probs = attention(self._heads(q), self._heads(keys), self._heads(vals), mask)
        out = tokens + ctx.reshape(n, self.dim) @ self.wo
        return RaggedOutput(out, k, v, probs)

    # ------------------------------------------------------- documented paths
    def forward_prefill_ragged(
        self,
        tokens: torch.Tensor,
        ragged_mask: torch.Tensor,
        past_k: torch.Tensor | None = None,
        past_v: torch.Tensor | None = None,
    ):
        """Prefill over concatenated chunks; returns ``(output, keys, values)``, each ``[N, dim]``.

        ``ragged_mask`` is ``[N, N]`` (from ``build_ragged_batch``) or, with
        cached context, ``[N, P + N]`` over ``past_k`` rows then the chunks.
        """
        r = self.forward_ragged(tokens, ragged_mask, past_k, past_v)
        return r.out, r.k, r.v

    def forward_prefill_dense(self, tokens: torch.Tensor):
        """Causal prefill of one sequence ``[L, dim]``; returns ``(output, keys, values)``."""
        self._check_tokens(tokens)
        n = tokens.size(0)
        mask = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril_()
        r = self.forward_ragged(tokens, mask)
        return r.out, r.k, r.v

    def forward_decode(self, new_token: torch.Tensor, kv_cache):
        """One decode step of one request.

        ``new_token`` is ``[dim]`` or ``[1, dim]``; it attends to everything in
        ``kv_cache`` (anything with ``get_kv()`` and ``len``) and to itself.
        Returns ``(output [1, dim], new_keys [1, dim], new_values [1, dim])``;
        appending the new keys/values to the cache is the caller's job.
        """
        if isinstance(new_token, torch.Tensor) and new_token.dim() == 1:
            new_token = new_token.unsqueeze(0)
        self._check_tokens(new_token, "new_token")
        if new_token.size(0) != 1:
            raise ValidationError(f"new_token must be one token, got {new_token.size(0)} rows")
        if len(kv_cache):
            pk, pv = kv_cache.get_kv()
        else:
            pk = pv = None
        p = 0 if pk is None else pk.size(0)
        mask = torch.ones(1, p + 1, dtype=torch.bool, device=new_token.device)
        r = self.forward_ragged(new_token, mask, pk, pv)
        return r.out, r.k, r.v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense causal forward of one sequence ``[L, dim]`` → ``[L, dim]``."""
        return self.forward_prefill_dense(x)[0]
