"""Structured outputs: the grammar library against its peer, and constrained decoding in the engine.

Parts, one run:

* ``library``: llguidance (the engine's) against xgrammar (vLLM's default) on the same work: the
  token streams of four JSON instances (a person, a math answer, an event, a tool call), 32
  matchers (8 per schema), every step one batched mask fill for all live matchers and one token
  consumed each; compile time of each schema (first and cached), and the jump-forward query.
  Medians over ``--repeats``.  xgrammar comes from the ``bench`` extra (skipped with a note if absent).
* ``engine``: 32 chat requests, each constrained to one of four JSON schemas (8 each), running
  together in ``LLMEngine`` (float32, greedy, jump-forward off so every step decodes 32 rows),
  beside the same 32 requests unconstrained with the same output lengths (``ignore_eos``,
  ``max_tokens`` = each constrained output's length).  Per step: the time to fill and apply the 32
  masks and the whole step time (median over the steps with 32 requests decoding); the share is
  the goal's figure (<= 5%).  Then the same constrained requests at temperature 1.
* ``jump_forward``: the constrained greedy requests again with jump-forward on: steps, forced
  tokens and wall time against off.
* ``validity``: every constrained output of these runs parsed and validated (``jsonschema``).
* ``start``: what a cached schema adds to a request's start (``GrammarCompiler.matcher`` on a hit).

Run: ``python -m benchmarks.bench_structured [--quick] [--repeats 3]``; writes
``benchmarks/results/bench_structured.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks._common import add_out_arg, machine_info, out_path, ratio_rule, run_main, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "bench_structured.json"
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _s(n: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": n}


def _obj(props: dict, required=None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props), "additionalProperties": False}


SCHEMAS = {
    "person": _obj({"name": _s(24), "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "email": {"anyOf": [_s(32), {"type": "null"}]},
                    "favorite": {"type": "string", "enum": ["red", "green", "blue"]},
                    "address": _obj({"street": _s(32), "city": _s(24), "zip": {"type": "string",
                                                                               "pattern": "^[0-9]{5}$"}}),
                    "tags": {"type": "array", "items": _s(12), "minItems": 1, "maxItems": 4}}),
    "math": _obj({"steps": {"type": "array", "items": _obj({"explanation": _s(48), "output": _s(12)}),
                            "minItems": 1, "maxItems": 3},
                  "final_answer": {"type": "number", "minimum": -1e9, "maximum": 1e9}}),
    "event": _obj({"title": _s(32), "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                   "attendees": {"type": "array", "items": _s(16), "maxItems": 5},
                   "priority": {"type": "string", "enum": ["low", "medium", "high"]}, "done": {"type": "boolean"}}),
    "weather": _obj({"location": _s(32), "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}),
}
INSTANCES = {
    "person": {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "favorite": "blue",
               "address": {"street": "12 St James's Square", "city": "London", "zip": "12345"},
               "tags": ["math", "poetry", "engines"]},
    "math": {"steps": [{"explanation": "Add two and two together to get the sum", "output": "4"},
                       {"explanation": "Multiply the result by ten", "output": "40"}], "final_answer": 40.0},
    "event": {"title": "Quarterly planning meeting", "date": "2026-12-06", "attendees": ["ann", "bob", "carla"],
              "priority": "high", "done": False},
    "weather": {"location": "Paris, France", "unit": "celsius"},
}
ASK = {"person": "Describe a famous scientist as JSON.", "math": "Solve 12 times 7, step by step, as JSON.",
       "event": "Describe a team meeting as JSON.", "weather": "Which city's weather should I check? JSON."}


def _med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------- library
def bench_library(tokenizer_json: str, vocab: int, eos: int, repeats: int, batch: int = 32) -> dict:
    import llguidance as llg
    import numpy as np
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(tokenizer_json)
    names = list(SCHEMAS)
    streams = {k: tk.encode(json.dumps(v), add_special_tokens=False).ids for k, v in INSTANCES.items()}
    words = (vocab + 31) // 32
    out: dict = {"batch": batch, "tokens_per_stream": {k: len(v) for k, v in streams.items()}}

    def replay(make, fill, consume, ff) -> dict:
        matchers = [make(names[i % len(names)]) for i in range(batch)]
        seqs = [streams[names[i % len(names)]] for i in range(batch)]
        fills, ffs = [], []
        for step in range(max(map(len, seqs)) + 1):
            live = [i for i in range(batch) if step <= len(seqs[i])]
            t0 = time.perf_counter()
            fill([matchers[i] for i in live], live)
            fills.append(time.perf_counter() - t0)
            for i in live:
                if step < len(seqs[i]):
                    assert consume(matchers[i], seqs[i][step]), (names[i % len(names)], step)
            t0 = time.perf_counter()
            for i in live:
                ff(matchers[i])
            ffs.append(time.perf_counter() - t0)
        return {"fill_ms": 1e3 * float(np.mean(fills)), "ff_ms": 1e3 * float(np.mean(ffs))}

    # llguidance, as the engine uses it
    lltok = llg.LLTokenizer(open(tokenizer_json, encoding="utf-8").read(), n_vocab=vocab, eos_token=eos)
    ex = llg.LLExecutor(num_threads=2)
    bits = np.zeros((batch, words), np.int32)
    rows = {"llguidance": [], "xgrammar": []}
    for _ in range(repeats):
        comp, start = {}, {}
        templates = {}
        for k, s in SCHEMAS.items():
            t0 = time.perf_counter()
            m = llg.LLMatcher(lltok, llg.LLMatcher.grammar_from_json_schema(s, defaults=COMPACT))
            m.compute_bitmask()
            comp[k] = 1e3 * (time.perf_counter() - t0)
            t0 = time.perf_counter()
            m.deep_copy()
            start[k] = 1e3 * (time.perf_counter() - t0)
            templates[k] = m
        r = replay(lambda k: templates[k].deep_copy(),
                   lambda ms, live: ex.unsafe_compute_mask_ptr([(m, j) for j, m in enumerate(ms)],
                                                               bits.ctypes.data, words * 4, batch),
                   lambda m, t: m.consume_token(t), lambda m: m.compute_ff_tokens())
        rows["llguidance"].append({**r, "compile_ms": comp, "cached_start_ms": start})
    try:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast
    except ImportError as exc:
        out["xgrammar"] = f"skipped: {exc}"
        rows.pop("xgrammar")
    else:
        info = xgr.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_file=tokenizer_json),
                                                  vocab_size=vocab, stop_token_ids=[eos])
        xbits = xgr.allocate_token_bitmask(batch, vocab)
        bgm = xgr.BatchGrammarMatcher(max_threads=2)
        for _ in range(repeats):
            compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=True)
            comp, start, grams = {}, {}, {}
            for k, s in SCHEMAS.items():
                t0 = time.perf_counter()
                g = compiler.compile_json_schema(json.dumps(s), any_whitespace=False, separators=(", ", ": "))
                xgr.GrammarMatcher(g)
                comp[k] = 1e3 * (time.perf_counter() - t0)
                t0 = time.perf_counter()
                xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(s), any_whitespace=False,
                                                                separators=(", ", ": ")))
                start[k] = 1e3 * (time.perf_counter() - t0)
                grams[k] = g
            r = replay(lambda k: xgr.GrammarMatcher(grams[k]),
                       lambda ms, live: bgm.batch_fill_next_token_bitmask(ms, xbits, list(range(len(ms)))),
                       lambda m, t: m.accept_token(t), lambda m: m.find_jump_forward_string())
            rows["xgrammar"].append({**r, "compile_ms": comp, "cached_start_ms": start})
    for lib, runs in rows.items():
        out[lib] = {
            "fill_ms_per_step": _med([r["fill_ms"] for r in runs]),
            "jump_forward_query_ms_per_step": _med([r["ff_ms"] for r in runs]),
            "compile_ms": {k: _med([r["compile_ms"][k] for r in runs]) for k in SCHEMAS},
            "cached_start_ms": {k: _med([r["cached_start_ms"][k] for r in runs]) for k in SCHEMAS},
        }
    return out


# ---------------------------------------------------------------------- engine
def _drive(engine, reqs, stats_rows: int | None = None) -> dict:
    """Run ``reqs`` [(prompt, params)] to completion, stepping by hand; per-step times."""
    m = engine.metrics
    ids = [engine.add_request(p, sp) for p, sp in reqs]
    finals, steps, masks = {}, [], []
    t_start = time.perf_counter()
    mask0, step0 = m.structured_mask_seconds, m.step_seconds
    while engine.has_unfinished_requests():
        running = engine.planner.num_running
        decoding = sum(1 for s in engine.planner.running if s.is_decoding)
        m0 = m.structured_mask_seconds
        t0 = time.perf_counter()
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        dt = time.perf_counter() - t0
        if stats_rows is None or (running == stats_rows and decoding == stats_rows):
            steps.append(dt)
            masks.append(m.structured_mask_seconds - m0)
    wall = time.perf_counter() - t_start
    outs = [finals[i] for i in ids]
    return {"outputs": outs, "wall_s": wall, "mask_share_all_steps": (m.structured_mask_seconds - mask0) /
            (m.step_seconds - step0), "step_ms": [1e3 * s for s in steps], "mask_ms": [1e3 * x for x in masks],
            "tokens": sum(len(o.output_token_ids) for o in outs)}


def bench_engine(n: int, repeats: int, max_tokens: int) -> dict:
    import jsonschema

    from llmds.engine.config import SamplingParams
    from llmds.engine.engine import LLMEngine

    names = [list(SCHEMAS)[i % len(SCHEMAS)] for i in range(n)]
    prompts = [[{"role": "user", "content": ASK[k]}] for k in names]

    def constrained(temp: float, seed_base: int = 0):
        return [SamplingParams(max_tokens=max_tokens, temperature=temp, seed=seed_base + i,
                               structured_outputs={"json": SCHEMAS[k]}) for i, k in enumerate(names)]

    valid = {"checked": 0, "valid": 0, "finished_stop": 0, "finished_length": 0}

    def check(outs):
        for k, o in zip(names, outs):
            valid["checked"] += 1
            valid["finished_" + ("stop" if o.finish_reason == "stop" else "length")] += 1
            try:
                jsonschema.validate(json.loads(o.output_text), SCHEMAS[k])
                valid["valid"] += 1
            except (ValueError, jsonschema.ValidationError):
                pass

    runs: dict[str, list] = {"free": [], "constrained": [], "constrained_t1": [], "jf_off": [], "jf_on": []}
    start_ms, compile_ms = [], []
    for r in range(repeats):
        eng = LLMEngine(jump_forward=False, hot_prefix_threshold=0)
        eng.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0))  # warm-up (numba, threads)
        # compile (first) and start (cached) of each schema in the engine's compiler
        from llmds.engine.structured import StructuredOutputs

        eng.grammars.matcher(StructuredOutputs(regex="warm"))  # the tokenizer's one-time setup
        for k in SCHEMAS:
            spec = StructuredOutputs(json=SCHEMAS[k])
            t0 = time.perf_counter()
            eng.grammars.matcher(spec)
            compile_ms.append((k, 1e3 * (time.perf_counter() - t0)))
            t0 = time.perf_counter()
            eng.grammars.matcher(spec)
            start_ms.append(1e3 * (time.perf_counter() - t0))
        c = _drive(eng, list(zip(prompts, constrained(0.0))), stats_rows=n)
        check(c["outputs"])
        lens = [max(1, len(o.output_token_ids)) for o in c["outputs"]]
        f = _drive(eng, [(p, SamplingParams(max_tokens=ln, temperature=0, ignore_eos=True))
                         for p, ln in zip(prompts, lens)], stats_rows=n)
        t1 = _drive(eng, list(zip(prompts, constrained(1.0, 100 * r))), stats_rows=n)
        check(t1["outputs"])
        runs["constrained"].append(c)
        runs["free"].append(f)
        runs["constrained_t1"].append(t1)
        jf = LLMEngine(jump_forward=True, hot_prefix_threshold=0)
        jf.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0))
        s0, f0 = jf.metrics.num_steps, jf.metrics.structured_jump_forward_tokens
        on = _drive(jf, list(zip(prompts, constrained(0.0))))
        on["steps"] = jf.metrics.num_steps - s0
        on["forced"] = jf.metrics.structured_jump_forward_tokens - f0
        check(on["outputs"])
        runs["jf_on"].append(on)
        s0 = eng.metrics.num_steps
        off = _drive(eng, list(zip(prompts, constrained(0.0))))
        off["steps"] = eng.metrics.num_steps - s0
        runs["jf_off"].append(off)
        del eng, jf

    def summary(key):
        rs = runs[key]
        return {"step_ms_median": _med([_med(r["step_ms"]) for r in rs]),
                "mask_ms_median": _med([_med(r["mask_ms"]) for r in rs]) if rs[0]["mask_ms"] else 0.0,
                "steps_measured": _med([len(r["step_ms"]) for r in rs]),
                "tok_per_s": _med([r["tokens"] / r["wall_s"] for r in rs]),
                "mask_share_all_steps": _med([r["mask_share_all_steps"] for r in rs]),
                "tokens": _med([r["tokens"] for r in rs])}

    res = {"requests": n, "max_tokens": max_tokens, "free": summary("free"), "constrained": summary("constrained"),
           "constrained_t1": summary("constrained_t1"), "validity": valid,
           "cached_start_ms_median": _med(start_ms),
           "compile_ms_first": {k: _med([v for kk, v in compile_ms if kk == k]) for k in SCHEMAS}}
    for key in ("constrained", "constrained_t1"):
        res[key]["mask_share_of_step"] = res[key]["mask_ms_median"] / res[key]["step_ms_median"]
        res[key]["step_ratio_vs_free"] = res[key]["step_ms_median"] / res["free"]["step_ms_median"]
    res["jump_forward"] = {
        "off_steps": _med([r["steps"] for r in runs["jf_off"]]), "on_steps": _med([r["steps"] for r in runs["jf_on"]]),
        "forced_tokens": _med([r["forced"] for r in runs["jf_on"]]),
        "off_wall_s": _med([r["wall_s"] for r in runs["jf_off"]]), "on_wall_s": _med([r["wall_s"] for r in runs["jf_on"]]),
        "off_tokens": _med([r["tokens"] for r in runs["jf_off"]]), "on_tokens": _med([r["tokens"] for r in runs["jf_on"]]),
    }
    j = res["jump_forward"]
    j["off_tok_per_s"], j["on_tok_per_s"] = j["off_tokens"] / j["off_wall_s"], j["on_tokens"] / j["on_wall_s"]
    return res


# ----------------------------------------------------------------------- table
def format_table(res: dict) -> str:
    lines = [f"CPU: {res['cpu']['processor']} (AMX: {res['cpu']['amx']})", ""]
    lib = res["library"]
    lines.append(f"grammar library, {lib['batch']} matchers over 4 JSON schemas  "
                 f"({ratio_rule('xgrammar / llguidance time', 'llguidance, the one llmds uses')})")
    lines.append(f"{'':34} {'llguidance':>11} {'xgrammar':>11} {'ratio':>7}")
    x = lib.get("xgrammar") if isinstance(lib.get("xgrammar"), dict) else None
    items = [("batched mask fill ms / step", "fill_ms_per_step"),
             ("jump-forward query ms / step", "jump_forward_query_ms_per_step")]
    for label, key in items:
        a = lib["llguidance"][key]
        b = x[key] if x else float("nan")
        lines.append(f"{label:34} {a:11.3f} {b:11.3f} {b / a:7.2f}")
    for k in SCHEMAS:
        a, b = lib["llguidance"]["compile_ms"][k], x["compile_ms"][k] if x else float("nan")
        lines.append(f"{'compile ms, ' + k:34} {a:11.3f} {b:11.3f} {b / a:7.2f}")
    for k in SCHEMAS:
        a, b = lib["llguidance"]["cached_start_ms"][k], x["cached_start_ms"][k] if x else float("nan")
        lines.append(f"{'cached start ms, ' + k:34} {a:11.4f} {b:11.4f} {b / a:7.2f}")
    e = res["engine"]
    lines += ["", f"engine: {e['requests']} requests running together (float32, median over steps with all of them "
                  "decoding)",
              f"{'':26} {'step ms':>8} {'mask ms':>8} {'mask share':>10} {'vs free':>8} {'tok/s':>7}"]
    for key, label in (("free", "unconstrained"), ("constrained", "JSON schema, T=0"),
                       ("constrained_t1", "JSON schema, T=1")):
        r = e[key]
        share = f"{100 * r['mask_share_of_step']:9.1f}%" if "mask_share_of_step" in r else f"{'-':>10}"
        vs = f"{r['step_ratio_vs_free']:8.3f}" if "step_ratio_vs_free" in r else f"{'-':>8}"
        lines.append(f"{label:26} {r['step_ms_median']:8.1f} {r['mask_ms_median']:8.2f} {share} {vs} "
                     f"{r['tok_per_s']:7.1f}")
    j = e["jump_forward"]
    lines += ["", f"jump-forward (T=0): steps {j['off_steps']:.0f} -> {j['on_steps']:.0f}, forced tokens "
                  f"{j['forced_tokens']:.0f}, wall {j['off_wall_s']:.2f} s -> {j['on_wall_s']:.2f} s "
                  f"({j['off_tok_per_s']:.1f} -> {j['on_tok_per_s']:.1f} tok/s)",
              f"cached schema adds {e['cached_start_ms_median']:.3f} ms to a request's start; first compile ms "
              + ", ".join(f"{k} {v:.2f}" for k, v in e["compile_ms_first"].items()),
              f"validity: {e['validity']['valid']}/{e['validity']['checked']} outputs parse and validate "
              f"({e['validity']['finished_stop']} finished by their grammar, {e['validity']['finished_length']} "
              "at max_tokens)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 requests, one repeat (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=400)
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    from llmds.engine.loader import load_model

    loaded = load_model(None)
    repeats = 1 if args.quick else args.repeats
    n = 8 if args.quick else args.requests
    res = {"cpu": machine_info(), "repeats": repeats,
           "library": bench_library(loaded.tokenizer_json, loaded.config.vocab_size,
                                    min(loaded.config.eos_token_ids), max(repeats, 3)),
           "engine": bench_engine(n, repeats, args.max_tokens)}
    del loaded
    print(format_table(res))
    write_results(out_path(args, RESULTS), res)
    return 0


if __name__ == "__main__":
    run_main(main)
