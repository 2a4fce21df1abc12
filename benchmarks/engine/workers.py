"""The engines of ``bench_engine``, each run in its own process: ``python benchmarks/engine/workers.py KIND SPEC OUT``.

Standard library only at the top, so vLLM's own venv can run this file by path.  ``SPEC`` (JSON)
holds the workload (token ids, made by ``bench_engine`` with the model's chat template, so every
engine computes the same tokens) and the options; ``OUT`` receives the measurements.

One driver for every engine that has a step loop (llmds, vLLM): requests enter at their arrival
times (all at 0 for the offline pass, Poisson for the online pass), the loop steps the engine and
timestamps every token: TTFT = first token - arrival, inter-token latency = gaps between tokens.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def latency_summary(ttft: list[float], itl: list[float]) -> dict:
    ms = lambda v: None if v is None else v * 1e3  # noqa: E731
    return {"ttft_p50_ms": ms(_pct(ttft, 50)), "ttft_p99_ms": ms(_pct(ttft, 99)),
            "itl_p50_ms": ms(_pct(itl, 50)), "itl_p99_ms": ms(_pct(itl, 99))}


def drive(add, step, busy, prompts: list[list[int]], arrivals: list[float]) -> dict:
    """Run ``prompts`` arriving at ``arrivals`` (seconds from now) to the end; see the module docstring.

    ``add(i, ids)`` queues request ``i``; ``step()`` returns ``(i, tokens so far, finished, output ids
    or None)`` for each request that progressed; ``busy()`` says whether any request is unfinished.
    """
    n = len(prompts)
    t0 = time.perf_counter()
    due = [t0 + a for a in arrivals]
    first, last, count = [None] * n, [None] * n, [0] * n
    outputs: list = [None] * n
    itl: list[float] = []
    nxt = done = 0
    while done < n:
        now = time.perf_counter()
        while nxt < n and due[nxt] <= now:
            add(nxt, prompts[nxt])
            nxt += 1
        if not busy():
            time.sleep(max(0.0, due[nxt] - time.perf_counter()))
            continue
        for i, total, finished, ids in step():
            t = time.perf_counter()
            k = total - count[i]
            if k > 0:
                if first[i] is None:
                    first[i], k = t, k - 1
                if k > 0:
                    itl.extend([(t - last[i]) / k] * k)
                last[i], count[i] = t, total
            if finished:
                outputs[i] = ids
                done += 1
    wall = max(last) - t0
    ttft = [f - d for f, d in zip(first, due)]
    return {"wall_s": wall, "output_tokens": sum(count), "tok_s": sum(count) / wall,
            **latency_summary(ttft, itl), "outputs": outputs}


def rss_mb() -> dict:
    """RSS of this process tree now, and this process's peak."""
    out = {"peak_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        import psutil

        p = psutil.Process()
        out["tree_mb"] = sum(q.memory_info().rss for q in [p] + p.children(recursive=True)) / 2**20
    except ImportError:
        pass
    return out


def passes(add, step, busy, spec: dict, reset=None) -> dict:
    """Warm-up, the offline pass ``repeats`` times (distinct prompts each time), the Poisson pass."""
    if spec["warmup"]:
        drive(add, step, busy, spec["warmup"], [0.0] * len(spec["warmup"]))
    runs = []
    for rep in spec["repeats"]:
        if reset is not None:
            reset()
        runs.append(drive(add, step, busy, rep, [0.0] * len(rep)))
    best = sorted(runs, key=lambda r: r["tok_s"])[len(runs) // 2]
    out = {"offline": {**{k: v for k, v in best.items() if k != "outputs"},
                       "tok_s_runs": [r["tok_s"] for r in runs]},
           "outputs": runs[0]["outputs"]}
    if spec.get("poisson"):
        pz = drive(add, step, busy, spec["poisson"]["prompts"], spec["poisson"]["arrivals"])
        out["poisson"] = {k: v for k, v in pz.items() if k != "outputs"}
    return out


def single_decode(add, step, busy, ids: list[int]) -> float:
    """Decode tok/s of one request alone: tokens after the first over the time after the first."""
    add(0, ids)
    t1 = None
    while busy():
        for _, total, finished, out in step():
            if t1 is None and total >= 1:
                t1 = time.perf_counter()
            if finished:
                return (len(out) - 1) / (time.perf_counter() - t1)
    raise RuntimeError("request did not finish")


# ---------------------------------------------------------------------------- llmds
def run_llmds(spec: dict) -> dict:
    t0 = time.perf_counter()
    from llmds.engine.config import SamplingParams
    from llmds.engine.engine import LLMEngine

    eng = LLMEngine(dtype=spec["dtype"], **spec.get("engine_options", {}))
    load_s = time.perf_counter() - t0
    sp = SamplingParams(temperature=0, max_tokens=spec["max_tokens"], ignore_eos=True)
    counts: dict = {}

    def add(i, ids):
        counts[i] = 0
        eng.add_request(ids, sp, request_id=i)

    def step():
        res = []
        for o in eng.step():
            counts[o.request_id] += len(o.new_token_ids)
            res.append((o.request_id, counts[o.request_id], o.finished, o.output_token_ids))
        return res

    busy = eng.has_unfinished_requests
    m = eng.metrics
    out = {"load_s": load_s, "rss_after_load": rss_mb()}
    drive(add, step, busy, spec["warmup"], [0.0] * len(spec["warmup"]))
    m.step_seconds = m.forward_seconds = 0.0
    q0, h0, s0 = m.prefix_cache_queries, m.prefix_cache_hits, m.num_steps
    out.update(passes(add, step, busy, {**spec, "warmup": []}))
    out["forward_fraction"] = m.forward_seconds / m.step_seconds
    out["steps"] = m.num_steps - s0
    out["prefix_hit_rate"] = (m.prefix_cache_hits - h0) / max(1, m.prefix_cache_queries - q0)
    out["rss"] = rss_mb()
    out["single_decode_tok_s"] = statistics.median(
        single_decode(add, step, busy, spec["repeats"][0][0]) for _ in range(3))
    if spec.get("long_prompts"):
        out["ttft_long_ms"] = statistics.median(first_token_ms(eng, ids) for ids in spec["long_prompts"])
    if spec.get("ceiling"):
        from benchmarks.engine.extras import linear_rates, step_profile

        out["linear_tok_s"] = linear_rates(eng)
        prompts = spec["repeats"][0]
        out["profile"] = step_profile(eng, lambda: drive(add, step, busy, prompts, [0.0] * len(prompts)))
    if spec.get("perplexity_ids"):
        from benchmarks.engine.extras import perplexity

        out["perplexity"] = perplexity(eng, spec["perplexity_ids"])
    return out


def first_token_ms(eng, ids: list[int]) -> float:
    """Milliseconds from adding one request (alone, one output token) to its first token."""
    from llmds.engine.config import SamplingParams

    t = time.perf_counter()
    eng.add_request(ids, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    while eng.has_unfinished_requests():
        eng.step()
    return (time.perf_counter() - t) * 1e3


# ---------------------------------------------------------------------------- vLLM
def run_vllm(spec: dict) -> dict:
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model_dir"], dtype=spec["dtype"], max_model_len=2048, seed=0)
    load_s = time.perf_counter() - t0
    eng = llm.llm_engine
    sp = SamplingParams(temperature=0, max_tokens=spec["max_tokens"], ignore_eos=True)

    def add(i, ids):
        eng.add_request(str(i), {"prompt_token_ids": ids}, sp)

    def step():
        return [(int(o.request_id), len(o.outputs[0].token_ids), o.finished, list(o.outputs[0].token_ids))
                for o in eng.step()]

    busy = eng.has_unfinished_requests
    out = {"load_s": load_s}
    out.update(passes(add, step, busy, spec, reset=llm.reset_prefix_cache if spec.get("reset") else None))
    out["rss"] = rss_mb()
    out["single_decode_tok_s"] = statistics.median(
        single_decode(add, step, busy, spec["repeats"][0][0]) for _ in range(3))
    return out


# ---------------------------------------------------------------------- transformers
def run_hf(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["gguf_dir"], gguf_file=spec["gguf_file"],
                                                 torch_dtype=torch.float32)
    out = {"load_s": time.perf_counter() - t0}
    prompts, n_out = spec["repeats"][0], spec["max_tokens"]
    for dtype in spec["dtypes"]:
        m = model.to(getattr(torch, dtype)).eval()
        res = {}
        gen = lambda ids, mask, n: m.generate(  # noqa: E731
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=0)
        with torch.inference_mode():
            gen(torch.tensor([prompts[0][:32]]), None, 4)  # warm-up
            rates = []
            for ids in prompts[:spec["single"]]:
                x = torch.tensor([ids])
                t = time.perf_counter()
                gen(x, None, 1)
                t1 = time.perf_counter() - t
                t = time.perf_counter()
                gen(x, None, n_out)
                tn = time.perf_counter() - t
                rates.append(((n_out - 1) / (tn - t1), n_out / tn))
            res["single_decode_tok_s"] = statistics.median(r[0] for r in rates)
            res["single_tok_s"] = statistics.median(r[1] for r in rates)
            width = max(map(len, prompts))
            x = torch.zeros((len(prompts), width), dtype=torch.long)
            mask = torch.zeros_like(x)
            for i, ids in enumerate(prompts):  # left padding
                x[i, width - len(ids):] = torch.tensor(ids)
                mask[i, width - len(ids):] = 1
            t = time.perf_counter()
            gen(x, mask, n_out)
            res["static_batch_tok_s"] = len(prompts) * n_out / (time.perf_counter() - t)
        out[dtype] = res
    out["rss"] = rss_mb()
    return out


# ------------------------------------------------------------------------ llama.cpp
def run_llamacpp(spec: dict) -> dict:
    import llama_cpp.llama_cpp as c

    default = c.llama_model_default_params

    def params():  # its AMX path segfaults on this CPU (llama.cpp issue #20824)
        p = default()
        p.use_extra_bufts = False
        return p

    c.llama_model_default_params = params
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=spec["gguf"], n_threads=2, n_threads_batch=2, n_ctx=2048, verbose=False)
    out = {"load_s": time.perf_counter() - t0}
    eos = llm.token_eos()
    prompts = spec["repeats"][0][:spec["llamacpp_requests"]]

    def one(ids):
        llm.reset()
        t = time.perf_counter()
        first, n = None, 0
        for _ in llm.create_completion(ids, max_tokens=spec["max_tokens"], temperature=0.0, stream=True,
                                       logit_bias={eos: -1e9}):
            n += 1
            first = first or time.perf_counter()
        end = time.perf_counter()
        return t, first, end, n

    one(prompts[0][:16])  # warm-up
    runs = [one(ids) for ids in prompts]
    total = sum(r[2] - r[0] for r in runs)
    out["in_turn_tok_s"] = sum(r[3] for r in runs) / total
    out["single_decode_tok_s"] = statistics.median((r[3] - 1) / (r[2] - r[1]) for r in runs)
    out["ttft_p50_ms"] = _pct([(r[1] - r[0]) * 1e3 for r in runs], 50)
    out["requests"] = len(runs)
    if spec.get("long_prompts"):
        def ttft(ids):
            llm.reset()
            t = time.perf_counter()
            for _ in llm.create_completion(ids, max_tokens=1, temperature=0.0, stream=True):
                return (time.perf_counter() - t) * 1e3
        out["ttft_long_ms"] = statistics.median(ttft(ids) for ids in spec["long_prompts"])
    out["rss"] = rss_mb()
    return out


if __name__ == "__main__":
    kind, spec_path, out_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    result = {"llmds": run_llmds, "vllm": run_vllm, "hf": run_hf, "llamacpp": run_llamacpp}[kind](spec)
    with open(out_path, "w") as f:
        json.dump(result, f)
