"""The printed tables of ``bench_engine`` (from its result dict)."""

from __future__ import annotations


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _lat(d: dict, key: str) -> str:
    return f"{_f(d.get(f'{key}_p50_ms'), '{:.0f}')} / {_f(d.get(f'{key}_p99_ms'), '{:.0f}')}"


def _mem(r: dict) -> str:
    rss = r.get("rss", {})
    return _f(rss.get("tree_mb", rss.get("peak_self_mb")), "{:.0f}")


def format_tables(r: dict, ratio_rule) -> str:
    w, eng = r["workload"], r["engines"]
    lines = [f"\n{w['requests']} chat requests, prompts {w['prompt_len_min']}-{w['prompt_len_max']} tokens "
             f"(mean total {w['prompt_tokens_mean']:.0f}), {w['max_tokens']} output tokens each, greedy; "
             f"{w['repeats']} rounds, llmds and vLLM alternating (median), Poisson pass at {w['poisson_rate']} req/s; "
             f"{r['machine']['processor']} ({r['machine']['cpus']} cpus)",
             f"{ratio_rule('llmds tok/s / peer tok/s, same dtype')}", "",
             "| engine | output tok/s, all at once | ratio | TTFT p50 / p99 ms | ITL p50 / p99 ms | "
             "single-request decode tok/s | load s | RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for dtype in ("bfloat16", "float32"):
        mine = eng.get(f"llmds {dtype}")
        for name in (f"llmds {dtype}", f"llmds gguf {dtype}", f"vllm {dtype}"):
            e = eng.get(name)
            if e is None:
                continue
            off = e["offline"]
            ratio = "" if name.startswith("llmds") or mine is None else \
                f"{mine['offline']['tok_s'] / off['tok_s']:.2f}x"
            lines.append(f"| {name} | {off['tok_s']:.0f} ({', '.join(f'{x:.0f}' for x in off['tok_s_runs'])}) | "
                         f"{ratio} | {_lat(off, 'ttft')} | {_lat(off, 'itl')} | {e['single_decode_tok_s']:.1f} | "
                         f"{e['load_s']:.1f} | {_mem(e)} |")
    hf = eng.get("transformers")
    if hf:
        for dtype in ("float32", "bfloat16"):
            h, mine = hf.get(dtype), eng.get(f"llmds {dtype}")
            if h is None:
                continue
            ratio = f"{mine['offline']['tok_s'] / h['static_batch_tok_s']:.2f}x" if mine else ""
            lines.append(f"| transformers {dtype}, static batch of {w['requests']} | {h['static_batch_tok_s']:.0f} | "
                         f"{ratio} | - | - | {h['single_decode_tok_s']:.1f} (one at a time: "
                         f"{h['single_tok_s']:.1f} end to end) | {hf['load_s']:.1f} | {_mem(hf)} |")
    lc = eng.get("llama.cpp")
    if lc:
        mine = eng.get("llmds bfloat16")
        ratio = f"{mine['offline']['tok_s'] / lc['in_turn_tok_s']:.2f}x (bf16)" if mine else ""
        lines.append(f"| llama.cpp Q4_1, one request after another | {lc['in_turn_tok_s']:.0f} | {ratio} | "
                     f"{_f(lc['ttft_p50_ms'], '{:.0f}')} / - | - | {lc['single_decode_tok_s']:.1f} | "
                     f"{lc['load_s']:.1f} | {_mem(lc)} |")
    for name, note in r["notes"].items():
        lines.append(f"| {name} | skipped: {note} | | | | | | |")

    pz = [(n, e["poisson"]) for n, e in eng.items() if "poisson" in e]
    if pz:
        lines += ["", f"Poisson arrivals ({w['poisson_rate']} req/s, {w['requests']} requests):", "",
                  "| engine | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |", "|---|---|---|---|"]
        lines += [f"| {n} | {p['tok_s']:.0f} | {_lat(p, 'ttft')} | {_lat(p, 'itl')} |" for n, p in pz]

    mine = [(n, e) for n, e in eng.items() if n.startswith("llmds")]
    if mine:
        lines += ["", "| llmds | step time outside the forward | prefix hit rate | linear stack tok/s at 1 / 32 / 512 "
                  "tokens per step | workload ceiling tok/s | share of ceiling |", "|---|---|---|---|---|---|"]
        for n, e in mine:
            lr = e["linear_tok_s"]
            lines.append(f"| {n} | {1 - e['forward_fraction']:.1%} | {e['prefix_hit_rate']:.1%} | "
                         f"{lr['1']:.0f} / {lr['32']:.0f} / {lr['512']:.0f} | {e['ceiling_tok_s']:.0f} | "
                         f"{e['offline']['tok_s'] / e['ceiling_tok_s']:.0%} |")
    ones = [(n, e) for n, e in eng.items() if "single_decode_tok_s" in e and ("llmds" in n or n == "llama.cpp")]
    if ones:
        lc = eng.get("llama.cpp")
        lines += ["", "One request at a time (" + ratio_rule("llmds / llama.cpp") + "):", "",
                  "| engine | decode tok/s | ratio | TTFT of a 500-token prompt ms | ratio | load s | RSS after load / "
                  "at the end MB |", "|---|---|---|---|---|---|---|"]
        for n, e in ones:
            dec, ttft = e["single_decode_tok_s"], e.get("ttft_long_ms")
            r1 = f"{dec / lc['single_decode_tok_s']:.2f}x" if lc and n != "llama.cpp" else ""
            r2 = (f"{lc['ttft_long_ms'] / ttft:.2f}x" if lc and n != "llama.cpp" and ttft and lc.get("ttft_long_ms")
                  else "")
            after = e.get("rss_after_load", {}).get("tree_mb")
            lines.append(f"| {n} | {dec:.1f} | {r1} | {_f(ttft, '{:.0f}')} | {r2} | {e['load_s']:.2f} | "
                         f"{_f(after, '{:.0f}')} / {_mem(e)} |")
    prof = [(n, e["profile"]) for n, e in eng.items() if "profile" in e]
    if prof:
        groups = ["linear", "attention prefill", "attention decode", "element-wise", "sampling", "forward, other",
                  "outside the forward"]
        lines += ["", "Where a step's time goes (one offline pass, share of step time):", "",
                  "| llmds | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        for n, pr in prof:
            lines.append(f"| {n} | " + " | ".join(f"{pr.get(g, 0.0):.1%}" for g in groups) + " |")
    ppl = [(n, e["perplexity"]) for n, e in eng.items() if "perplexity" in e]
    if ppl:
        lines.append("\nPerplexity on the project's docs (2048 tokens): " + ", ".join(f"{n} {v:.3f}" for n, v in ppl))
    if "gguf_vs_fp32" in r:
        d = r["gguf_vs_fp32"]
        lines.append(f"gguf (4-bit) vs fp32 (llmds, greedy): {d['identical']}/{d['requests']} outputs identical; first "
                     f"differing token at median index {d['median_first_diff']}, earliest {d['min_first_diff']}")
    if "bf16_vs_fp32" in r:
        d = r["bf16_vs_fp32"]
        lines.append(f"\nbf16 vs fp32 (llmds, greedy): {d['identical']}/{d['requests']} outputs identical; first "
                     f"differing token at median index {d['median_first_diff']}, earliest {d['min_first_diff']}")
    if "llmds_fp32_vs_vllm_fp32" in r:
        d = r["llmds_fp32_vs_vllm_fp32"]
        lines.append(f"llmds fp32 vs vLLM fp32: {d['identical']}/{d['requests']} outputs identical "
                     f"(earliest difference at {d['min_first_diff']})")
    if "attention_ms" in r:
        lines += ["", "Decode attention, one layer, all requests at mid-generation context (CPU ms, median; "
                  + ratio_rule("other / numba_paged") + "):", "",
                  "| dtype | numba paged kernel | per-request SDPA | padded batched SDPA |", "|---|---|---|---|"]
        for d, a in r["attention_ms"].items():
            base = a["numba_paged"]
            lines.append(f"| {d} | {base:.2f} | {a['sdpa_per_request']:.2f} ({a['sdpa_per_request'] / base:.1f}x) | "
                         f"{a['sdpa_padded']:.2f} ({a['sdpa_padded'] / base:.1f}x) |")
    if "hot_prefix" in r:
        h = r["hot_prefix"]
        wl = h["workload"]
        lines += ["", f"Hot prefixes: {wl['requests']} requests over {wl['system_prompts']} system prompts "
                  f"(Zipf s={wl['zipf_s']}), {wl['num_blocks']} KV blocks of 16:", "",
                  "| pinning | prefix hit rate | pinned blocks at the end |", "|---|---|---|",
                  f"| on (threshold 4) | {h['pinned']['hit_rate']:.1%} | {h['pinned']['pinned_blocks']} |",
                  f"| off | {h['unpinned']['hit_rate']:.1%} | 0 |"]
    return "\n".join(lines)
