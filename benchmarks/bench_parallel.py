"""Parallel sampling: one request with ``n = 8`` against 8 separate requests sent at once.

The engine as ``llmds serve`` runs it (default options, bfloat16), stepped in this process.  A
workload: one chat prompt (a ~600-token document to summarise, a fresh nonce first so no earlier
run's blocks are cached), 8 completions of ``--max-tokens`` tokens each at temperature 0.8 with
``ignore_eos``, as

* ``n=8``: one request with ``n = 8``, ``seed = s`` (its sequence ``i`` samples with ``s + i``);
* ``8 separate``: 8 requests added together before the first step, seeds ``s .. s + 7`` (the same
  tokens as ``n=8``: ``tests/engine/test_parallel_sampling.py``), prefix caching on (the default);
* ``8 separate, no prefix cache``: the same on an engine with ``enable_prefix_caching=False``.

Reported per way: prompt tokens computed (prefill), KV blocks in use once all 8 sequences have
their first token and at the peak, engine steps, seconds from the first step to the last
(output tokens/s).  Medians over ``--repeats``, the three ways interleaved in each repeat.

Run: ``python -m benchmarks.bench_parallel [--quick] [--repeats R] [--max-tokens N]``; writes
``benchmarks/results/bench_parallel.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks._common import add_out_arg, machine_info, out_path, ratio_rule, run_main, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "bench_parallel.json"
N = 8
WAYS = ("n=8", "8 separate", "8 separate, no prefix cache")
DOCUMENT = " ".join(
    f"Section {i}: the paged KV cache keeps keys and values in fixed-size blocks; a block table maps each "
    f"request's logical blocks to physical ones, so requests that share a prefix share its blocks, and a "
    f"block is freed when its last reader finishes." for i in range(12))


def _messages(nonce: str) -> list[dict]:
    return [{"role": "user", "content": f"[{nonce}] Summarise this document in one paragraph.\n\n{DOCUMENT}"}]


def run_way(engine, way: str, nonce: str, max_tokens: int, seed: int) -> dict:
    from llmds.engine.config import SamplingParams

    msgs = _messages(nonce)
    params = SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=seed)
    m, bm = engine.metrics, engine.block_manager
    prompt_before, out_before = m.prompt_tokens, m.generation_tokens
    if way == "n=8":
        engine.add_request(msgs, SamplingParams(**{**_params_dict(params), "n": N}))
    else:
        for i in range(N):
            engine.add_request(msgs, SamplingParams(**{**_params_dict(params), "seed": seed + i}))
    steps, peak, after_prefill, started = 0, 0, None, set()
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        outs = engine.step()
        steps += 1
        used = engine.num_blocks - bm.num_free_blocks
        peak = max(peak, used)
        started |= {(o.request_id, o.index) for o in outs}
        if after_prefill is None and len(started) == N:  # all 8 have their first token
            after_prefill = used
    seconds = time.perf_counter() - t0
    assert bm.num_free_blocks == engine.num_blocks  # no hot-prefix pinning here: every block back
    return {"prompt_tokens": len(engine.encode_prompt(msgs)), "prefill_tokens": m.prompt_tokens - prompt_before,
            "output_tokens": m.generation_tokens - out_before, "blocks_after_prefill": after_prefill,
            "blocks_peak": peak, "steps": steps, "seconds": seconds}


def _params_dict(p) -> dict:
    return {k: getattr(p, k) for k in ("temperature", "max_tokens", "ignore_eos", "seed")}


def run(repeats: int, max_tokens: int, dtype: str) -> dict:
    from llmds.engine.engine import LLMEngine

    engines = {"on": LLMEngine(dtype=dtype, hot_prefix_threshold=0),
               "off": LLMEngine(dtype=dtype, hot_prefix_threshold=0, enable_prefix_caching=False)}
    runs: dict[str, list[dict]] = {w: [] for w in WAYS}
    for r in range(-1, repeats):  # repeat -1 warms both engines up
        for j, w in enumerate(WAYS):  # same-length nonces: every way's prompt has the same length
            res = run_way(engines["off" if "no prefix" in w else "on"], w, f"run {r:02d}-{j}", max_tokens, 1000 + r)
            if r >= 0:
                runs[w].append(res)
    med = {w: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for w, rs in runs.items()}
    for w in WAYS:
        med[w]["output_tok_s"] = med[w]["output_tokens"] / med[w]["seconds"]
    return {"n": N, "max_tokens": max_tokens, "repeats": repeats, "dtype": dtype,
            "block_size": engines["on"].config.block_size, "median": med, "runs": runs}


def format_table(r: dict) -> str:
    med, base = r["median"], r["median"]["n=8"]
    mach = r.get("machine", {})
    lines = [f"bench_parallel: n={r['n']} vs {r['n']} separate requests at once, {base['prompt_tokens']:.0f}-token "
             f"prompt, {r['max_tokens']} tokens each, {r['dtype']}, medians of {r['repeats']}; "
             f"{mach.get('processor', '?')}, AMX {'yes' if mach.get('amx') else 'no'}",
             ratio_rule("8 separate / n=8 (tok/s: n=8 / 8 separate)", better="n=8"),
             "| way | prefill tokens | KV blocks once all 8 started | KV blocks peak | steps | seconds | output tok/s |",
             "|---|---|---|---|---|---|---|"]

    def cell(w: str, key: str, fmt: str, inverse: bool = False) -> str:
        v = med[w][key]
        if w == "n=8":
            return format(v, fmt)
        ratio = base[key] / v if inverse else v / base[key]
        return f"{v:{fmt}} ({ratio:.2f}x)"

    for w in WAYS:
        lines.append(f"| {w} | {cell(w, 'prefill_tokens', '.0f')} | {cell(w, 'blocks_after_prefill', '.0f')} | "
                     f"{cell(w, 'blocks_peak', '.0f')} | {med[w]['steps']:.0f} | {med[w]['seconds']:.2f} | "
                     f"{cell(w, 'output_tok_s', '.1f', inverse=True)} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, 8 tokens")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.max_tokens = 1, 8
    result = run(args.repeats, args.max_tokens, args.dtype)
    result["machine"] = machine_info()
    print(format_table(result))
    write_results(out_path(args, RESULTS), result)
    return result


if __name__ == "__main__":
    run_main(main)
