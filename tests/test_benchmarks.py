"""The seed's documented benchmark entry point keeps working (a smoke run, no timing asserted)."""

from benchmarks.bench_kv_cache import benchmark_kv_cache


def test_benchmark_kv_cache_seed_signature():
    res = benchmark_kv_cache(num_sequences=40, tokens_per_seq=512, page_size=64, repeats=1, num_prefixes=2)
    for op in ("attach", "get", "detach"):
        for p in ("p50", "p95", "p99"):
            assert res[f"{op}_{p}_ms"] >= 0.0
    assert res["peak_rss_mb"] > 0
    shared = res["shared_prefix"]
    assert shared["pages_with_sharing"] < shared["pages_without_sharing"]
    assert shared["pages_saved"] == shared["pages_without_sharing"] - shared["pages_with_sharing"]
