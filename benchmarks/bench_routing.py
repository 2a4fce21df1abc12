"""Replica routing policies on a trace-driven simulation of 4, 16 and 64 engine replicas.

Each replica is the engine's real planner on a real ``BlockManager`` with a KV budget
(``--num-blocks``, default 1,024 blocks of 16 tokens: about 0.35 GiB of SmolLM2's KV); a step
lasts what the engine's step-time model says, fitted from the engine's own measurements in
``benchmarks/results/bench_engine.json`` (llmds bf16: linear stack tok/s at 1 / 32 / 512 tokens
per step, interpolated, plus the per-step overhead of a single decode; see
``benchmarks/routing/sim.py``).  The trace (``benchmarks/routing/workload.py``) mixes multi-turn
chats that resend their history, RAG prompts sharing retrieved chunks and single questions over
200 system prompts with Zipf popularity, Poisson arrivals at ``--rate`` requests/s per replica
(3.0 by default: every policy keeps the replicas ~95% busy, near saturation).

Policies (``benchmarks/routing/policies.py``): round-robin, power-of-two choices, Ray Serve's
``PrefixCacheAffinityRouter`` and SGLang's cache-aware router (their published algorithms and
defaults), llmds's router (:mod:`llmds.server.routing`) and an oracle (the same policy with
every cache known exactly).  Per policy: prefix hit rate (cached / prompt tokens over all
admissions), TTFT p50 / p99, throughput (output tokens / makespan), load imbalance (the
busiest replica's time-averaged requests in flight / the mean).

Run: ``python -m benchmarks.bench_routing [--quick] [--replicas 4 16 64]``; writes
``benchmarks/results/bench_routing.json`` and ``bench_routing.png``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from benchmarks._common import add_out_arg, out_path, ratio_rule, run_main, write_results
from benchmarks.routing.policies import POLICIES, make_policy
from benchmarks.routing.sim import SimConfig, StepModel, simulate
from benchmarks.routing.workload import WorkloadConfig, make_trace
from llmds.server.routing import RouterConfig

RESULTS = Path(__file__).resolve().parent / "results" / "bench_routing.json"
ENGINE_RESULTS = RESULTS.parent / "bench_engine.json"
METRICS = (("hit_rate", "hit rate", "{:.3f}"), ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
           ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"), ("throughput_tok_s", "tok/s", "{:.0f}"),
           ("imbalance", "imbalance", "{:.2f}"))


def run(replicas: list[int], rate: float, duration: float, num_blocks: int, seed: int,
        policies=POLICIES, verbose: bool = True) -> dict:
    model = StepModel.from_bench_engine(ENGINE_RESULTS)
    router = RouterConfig()
    sim = SimConfig(num_blocks=num_blocks)
    out: dict = {"step_model": {"source": model.source, "overhead_ms": model.overhead * 1e3,
                                "linear_ms": dict(zip(map(str, model.tokens), (s * 1e3 for s in model.seconds)))},
                 "rate_per_replica": rate, "duration": duration, "num_blocks": num_blocks, "seed": seed,
                 "router": {"max_queue_gap": router.max_queue_gap, "waiting_weight": router.waiting_weight,
                            "stats_period_s": router.stats_period_s}, "sizes": {}}
    for n in replicas:
        trace = make_trace(WorkloadConfig(rate=rate * n, duration=duration, seed=seed))
        res = {"requests": len(trace), "policies": {}}
        for name in policies:
            t0 = time.perf_counter()
            r = simulate(trace, make_policy(name, n, seed, router), n, sim, model)
            r["sim_seconds"] = time.perf_counter() - t0
            res["policies"][name] = r
            if verbose:
                print(f"  {n:3d} replicas {name:13s} " + "  ".join(
                    f"{label} {fmt.format(r[k])}" for k, label, fmt in METRICS), flush=True)
        out["sizes"][str(n)] = res
    return out


def goals(res: dict, n: str = "64") -> dict:
    """The issue's goals at ``n`` replicas, each True / False."""
    p = res["sizes"][n]["policies"]
    me = p["llmds"]
    others = [v["ttft_p99_ms"] for k, v in p.items() if k != "llmds"]
    return {"hit_vs_oracle": me["hit_rate"] / p["oracle"]["hit_rate"],
            "hit_vs_power_of_two": me["hit_rate"] / p["power-of-two"]["hit_rate"],
            "ttft_p99_lowest": me["ttft_p99_ms"] <= min(others),
            "imbalance": me["imbalance"]}


def format_table(res: dict) -> str:
    lines = [f"bench_routing: {res['rate_per_replica']} req/s per replica for {res['duration']:.0f} s, "
             f"{res['num_blocks']} KV blocks per replica; step model from {res['step_model']['source']}",
             ratio_rule("llmds hit rate / power-of-two hit rate"),
             f"{'replicas':>8s} {'policy':13s} " + " ".join(f"{label:>11s}" for _, label, _ in METRICS)]
    for n, size in res["sizes"].items():
        for name, r in size["policies"].items():
            lines.append(f"{n:>8s} {name:13s} " + " ".join(f"{fmt.format(r[k]):>11s}" for k, _, fmt in METRICS))
    for n in res["sizes"]:
        g = goals(res, n)
        lines.append(f"{n} replicas: llmds hit = {g['hit_vs_oracle']:.2f}x oracle, {g['hit_vs_power_of_two']:.2f}x "
                     f"power-of-two; TTFT p99 lowest: {g['ttft_p99_lowest']}; imbalance {g['imbalance']:.2f}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = list(res["sizes"])
    names = list(next(iter(res["sizes"].values()))["policies"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.0 * len(METRICS), 3.8))
    width = 0.8 / len(names)
    for ax, (key, label, _) in zip(axes, METRICS):
        per = key == "throughput_tok_s"  # per replica, so the sizes share one scale
        for j, name in enumerate(names):
            ys = [res["sizes"][n]["policies"][name][key] / (int(n) if per else 1) for n in sizes]
            ax.bar([i + j * width for i in range(len(sizes))], ys, width, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(sizes))], [f"{n} replicas" for n in sizes])
        ax.set_title(label + (" per replica" if per else ""))
        if key.startswith("ttft") or key == "imbalance":
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=9)
    fig.suptitle(f"bench_routing: {res['rate_per_replica']} req/s per replica, {res['num_blocks']} KV blocks each")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 and 16 replicas, 15 s of arrivals")
    ap.add_argument("--replicas", type=int, nargs="+", default=None, help="replica counts (default 4 16 64)")
    ap.add_argument("--rate", type=float, default=3.0, help="requests/s per replica (default 3.0)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of arrivals (default 60)")
    ap.add_argument("--num-blocks", type=int, default=1024, help="KV blocks per replica (default 1024)")
    ap.add_argument("--seed", type=int, default=0)
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    args.replicas = args.replicas or ([4, 16] if args.quick else [4, 16, 64])
    args.duration = args.duration or (15.0 if args.quick else 60.0)
    res = run(args.replicas, args.rate, args.duration, args.num_blocks, args.seed)
    res["machine"] = platform.processor() or platform.machine()
    print(format_table(res))
    out = write_results(out_path(args, RESULTS), res)
    png = plot(res, out.with_suffix(".png"))
    if png is not None:
        print(f"plot: {png}")
    return res


if __name__ == "__main__":
    run_main(main)
