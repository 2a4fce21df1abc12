"""Parts of ``bench_engine`` that measure llmds alone: the linear-stack ceiling, decode attention
variants, and hot-prefix pinning under a Zipf mix of system prompts.  Each runs inside the llmds
worker process (``benchmarks.engine.workers.run_llmds``) or the bench process; CPU time, medians of repeats.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def _median_time(fn, repeats: int = 7, clock=time.perf_counter) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = clock()
        fn()
        ts.append(clock() - t)
    return statistics.median(ts)


def linear_rates(eng, sizes=(1, 32, 512)) -> dict:
    """Tokens/s of the model's linear layers alone (every layer's qkv, o, gate_up, down and the
    lm_head, on the real weights with the engine's kernels, in its dtype) at ``T`` tokens per step:
    the ceiling."""
    import torch

    m = eng.model
    f = m.config.intermediate_size
    out = {}
    with torch.inference_mode():
        for T in sizes:
            x = torch.randn(T, m.config.hidden_size, dtype=m.dtype)

            def stack():
                for qkv_proj, o_proj, gate_up_proj, down_proj in m.linears:
                    qkv_proj(x)
                    o_proj(x)
                    gu = gate_up_proj(x)
                    down_proj(gu[:, :f].contiguous())
                m.lm_head(x[:min(T, 32)])  # logits only for the last position of each request

            out[str(T)] = T / _median_time(stack, 5 if T < 512 else 3)
    return out


def ceiling_tok_s(prompt_tokens: int, output_tokens: int, rates: dict) -> float:
    """Output tok/s if the workload ran at the linear-stack rate: prompts at 512 tokens per step,
    outputs at 32 (the issue's definition)."""
    return output_tokens / (prompt_tokens / rates["512"] + output_tokens / rates["32"])


def attention_variants(context_lens: list[int], dtype: str, repeats: int = 9) -> dict:
    """One layer's decode attention for ``len(context_lens)`` requests, three ways, CPU ms.

    * ``numba_paged``: the engine's kernel, reading K/V through block tables in place;
    * ``sdpa_per_request``: torch SDPA per request on the arena's zero-copy slice of its run;
    * ``sdpa_padded``: one batched SDPA over K/V gathered into a padded tensor with a mask.
    """
    import torch
    import torch.nn.functional as F

    from llmds.engine.models._attn_kernels import paged_decode_attention

    tdt = getattr(torch, dtype)
    nh, nkv, hd, bs = 9, 3, 64, 16
    lens = np.asarray(context_lens, np.int32)
    nreq = len(lens)
    nblk = (lens + bs - 1) // bs
    starts = np.concatenate([[0], np.cumsum(nblk)[:-1]])
    total = int(nblk.sum())
    g = torch.Generator().manual_seed(0)
    kc = torch.randn(total, bs, nkv, hd, generator=g).to(tdt)
    vc = torch.randn(total, bs, nkv, hd, generator=g).to(tdt)
    q = torch.randn(nreq, nh, hd, generator=g)
    tables = np.zeros((nreq, int(nblk.max())), np.int32)
    for i in range(nreq):
        tables[i, :nblk[i]] = np.arange(starts[i], starts[i] + nblk[i])
    scale = np.float32(hd ** -0.5)
    out = np.empty((nreq, nh, hd), np.float32)
    as_np = (lambda t: t.view(torch.int16).numpy().view(np.uint16)) if tdt == torch.bfloat16 else (
        lambda t: t.numpy())
    knp, vnp, qnp = as_np(kc), as_np(vc), q.numpy()
    kflat, vflat = kc.view(-1, nkv, hd), vc.view(-1, nkv, hd)

    def numba_paged():
        paged_decode_attention(qnp, knp, vnp, tables, lens, scale, out)

    def per_request():
        for i in range(nreq):
            a = int(starts[i]) * bs
            K = kflat[a:a + lens[i]].transpose(0, 1).unsqueeze(0).float()
            V = vflat[a:a + lens[i]].transpose(0, 1).unsqueeze(0).float()
            F.scaled_dot_product_attention(q[i:i + 1].unsqueeze(2), K, V, scale=float(scale), enable_gqa=True)

    width = int(lens.max())
    pos = np.arange(width)
    slots = np.minimum(pos[None, :], lens[:, None] - 1) + starts[:, None] * bs
    slots_t = torch.from_numpy(slots.reshape(-1))
    mask = torch.from_numpy(pos[None, :] < lens[:, None]).view(nreq, 1, 1, width)

    def padded():
        K = kflat.index_select(0, slots_t).view(nreq, width, nkv, hd).transpose(1, 2).float()
        V = vflat.index_select(0, slots_t).view(nreq, width, nkv, hd).transpose(1, 2).float()
        F.scaled_dot_product_attention(q.unsqueeze(2), K, V, attn_mask=mask, scale=float(scale), enable_gqa=True)

    res = {}
    for name, fn in (("numba_paged", numba_paged), ("sdpa_per_request", per_request), ("sdpa_padded", padded)):
        res[name] = _median_time(fn, repeats, time.process_time) * 1e3
    return res


def hot_prefix_hit_rates(dtype: str, requests: int = 240, prompts: int = 20, zipf_s: float = 1.1,
                         num_blocks: int = 96, wave: int = 4, seed: int = 0) -> dict:
    """Prefix-cache hit rate with and without hot-prefix pinning: ``requests`` short questions after
    one of ``prompts`` system prompts (~100 tokens each, Zipf popularity), a KV cache of
    ``num_blocks`` blocks of 16 (about half the system prompts fit), ``wave`` requests at a time."""
    from llmds.engine.config import SamplingParams
    from llmds.engine.engine import LLMEngine

    rng = np.random.default_rng(seed)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
    systems = [" ".join(rng.choice(words, 90)) + f" You are assistant number {i}." for i in range(prompts)]
    w = 1.0 / np.arange(1, prompts + 1) ** zipf_s
    picks = rng.choice(prompts, size=requests, p=w / w.sum())
    sp = SamplingParams(temperature=0, max_tokens=1)
    out = {}
    for name, threshold in (("pinned", 4), ("unpinned", 0)):
        eng = LLMEngine(dtype=dtype, num_blocks=num_blocks, max_num_seqs=wave, hot_prefix_threshold=threshold,
                        max_pinned_fraction=0.5)
        t = time.perf_counter()
        for i in range(0, requests, wave):
            eng.generate([[{"role": "system", "content": systems[j]},
                           {"role": "user", "content": f"Question {k}: what is {k} plus {k}?"}]
                          for k, j in zip(range(i, i + wave), picks[i:i + wave])], sp)
        m = eng.metrics
        out[name] = {"hit_rate": m.prefix_cache_hits / max(1, m.prefix_cache_queries),
                     "pinned_blocks": eng.hot.num_pinned_blocks if eng.hot is not None else 0,
                     "seconds": time.perf_counter() - t}
        del eng
    out["workload"] = {"requests": requests, "system_prompts": prompts, "zipf_s": zipf_s, "num_blocks": num_blocks,
                       "wave": wave}
    return out


def step_profile(eng, run) -> dict:
    """Share of step time per op group while ``run()`` drives ``eng``: the model's callables and
    kernels wrapped with timers (linear, attention prefill / decode, element-wise), sampling, and
    the rest of the step (planner, batch building, detokenizing: outside the forward)."""
    import llmds.engine.models.llama as L

    m, t = eng.model, {}

    def timed(group, fn):
        def w(*a, **k):
            s = time.perf_counter()
            r = fn(*a, **k)
            t[group] = t.get(group, 0.0) + time.perf_counter() - s
            return r
        return w

    saved = (m.linears, m.lm_head, m.embed, L.paged_decode_attention, L.paged_prefill_attention, L.pick,
             eng.sampler)
    m.linears = [tuple(timed("linear", f) for f in layer) for layer in m.linears]
    m.lm_head, m.embed = timed("linear", m.lm_head), timed("element-wise", m.embed)
    L.paged_decode_attention = timed("attention decode", saved[3])
    L.paged_prefill_attention = timed("attention prefill", saved[4])
    L.pick = lambda k, rows: timed("element-wise", saved[5](k, rows))
    eng.sampler = timed("sampling", saved[6])
    s0, f0 = eng.metrics.step_seconds, eng.metrics.forward_seconds
    try:
        run()
    finally:
        m.linears, m.lm_head, m.embed, L.paged_decode_attention, L.paged_prefill_attention, L.pick, eng.sampler = saved
    step = eng.metrics.step_seconds - s0
    fwd = eng.metrics.forward_seconds - f0
    t["forward, other"] = fwd - sum(v for k, v in t.items() if k != "sampling")
    t["outside the forward"] = step - fwd - t.get("sampling", 0.0)
    return {k: v / step for k, v in sorted(t.items(), key=lambda kv: -kv[1])} | {"step_seconds": step}


def perplexity(eng, ids: list[int], window: int = 512) -> float:
    """exp(mean NLL) of ``ids`` (each token predicted from all before it), computed in chunks of
    ``window`` tokens through the model's forward on blocks 0.. of a fresh engine's KV."""
    import torch

    from llmds.engine.models.llama import ForwardBatch

    bs = eng.config.block_size
    n = len(ids)
    table = np.arange(-(-n // bs), dtype=np.int32)[None]
    nll, count = 0.0, 0
    for start in range(0, n - 1, window):
        stop = min(n, start + window)
        pos = np.arange(start, stop, dtype=np.int64)
        batch = ForwardBatch(torch.tensor(ids[start:stop]), pos, pos.copy(), 0, np.zeros((0, 1), np.int32),
                             np.zeros(0, np.int32), table, np.array([start]), np.array([stop - start]), np.array([0]),
                             torch.arange(stop - start))
        logp = torch.log_softmax(eng.model.forward(batch), -1)
        nxt = torch.tensor(ids[start + 1:stop + 1])
        k = len(nxt)
        nll -= float(logp[torch.arange(k), nxt].sum())
        count += k
    return float(np.exp(nll / count))
