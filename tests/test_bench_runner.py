"""``llmds bench`` plots and the server benchmark's table, on results made up here (no timing)."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_server import format_table
from llmds.bench_runner import plot_results


def _level(tok_s, ttft99):
    return {"tok_s": tok_s, "ttft_p50_ms": ttft99 / 2, "ttft_p99_ms": ttft99, "itl_p50_ms": 20.0,
            "itl_p99_ms": 60.0, "rejected_429": 0}


RESULT = {
    "clients": [1, 32], "duration": 30.0, "repeats": 3,
    "servers": {
        "llmds": {"levels": {"1": _level(40.0, 100.0), "32": _level(600.0, 900.0)}, "start_seconds": 3.0,
                  "rss_idle_mb": 700.0, "rss_after_mb": 720.0, "kv_free_blocks_after": 10, "kv_num_blocks": 10,
                  "engine_alone": {"clients": 32, "tok_s": 640.0, "http_cost": 0.0625}},
        "vllm": {"levels": {"1": _level(36.0, 150.0), "32": _level(480.0, 1800.0)}, "start_seconds": 30.0,
                 "rss_idle_mb": 3500.0, "rss_after_mb": 3600.0},
    },
    "skipped": {"llama.cpp": "not installed"},
}


def test_server_table_ratios_and_notes():
    table = format_table(RESULT)
    assert "> 1 means llmds is better" in table
    vllm32 = next(line for line in table.splitlines() if line.startswith("vllm") and " 32 " in line)
    assert vllm32.split()[-2:] == ["1.25", "2.00"]  # 600/480 throughput, 1800/900 p99 TTFT
    assert "llama.cpp: skipped (not installed)" in table
    assert "KV blocks after: 10 free + 0 pinned hot prefixes of 10" in table
    assert "HTTP layer cost 6.2%" in table  # 1 - 600/640


def test_plots_are_written_from_the_results(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "bench_server.json").write_text(json.dumps(RESULT))
    (tmp_path / "bench_structures.json").write_text(json.dumps(
        {"rows": [{"structure": "TokenLRU", "op": "get", "speed_ratio": 1.5}]}))
    fusion = {"table": {name: {"weights": [0.1, 0.9, 0.5], "dense_minus_bm25": [-0.3, 0.2, 0.0],
                               "mean_weight": 0.5, "within_tolerance": ok}
                        for name, ok in (("msmarco", True), ("arcd", False))}}
    (tmp_path / "retrieval_fusion.json").write_text(json.dumps(fusion))
    pngs = plot_results(tmp_path)
    assert sorted(p.name for p in pngs) == ["retrieval_fusion_weights.png", "server_latency.png",
                                            "server_throughput.png", "structures_ratio.png"]
    assert [p.name for p in plot_results(tmp_path, only=("retrieval_fusion",))] == \
        ["retrieval_fusion_weights.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_only_results_of_this_run_are_plotted_and_skipped_parts_are_no_error(tmp_path):
    pytest.importorskip("matplotlib")
    import os

    (tmp_path / "bench_server.json").write_text(json.dumps(RESULT))
    os.utime(tmp_path / "bench_server.json", (1000.0, 1000.0))  # an older run's
    (tmp_path / "bench_retrieval.json").write_text(json.dumps(
        {"parts": {"dense": {"msmarco": {"skipped": "IR collection 'msmarco' not found"}}}}))
    (tmp_path / "bench_engine.json").write_text(json.dumps(
        {"workload": {"requests": 32}, "engines": {"llmds bfloat16": {"offline": {"tok_s": 245.0}},
                                                   "vllm bfloat16": {"offline": {"tok_s": 257.0}}}}))
    assert [p.name for p in plot_results(tmp_path, since=2000.0)] == ["engine_throughput.png"]


def test_bench_without_the_bench_extra_is_one_line(monkeypatch, capsys):
    import importlib.util

    from llmds import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tantivy" else real(name, *a))
    assert cli.main(["bench", "structures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`bench` extra (missing: " in err and "tantivy" in err
    assert "make install-bench" in err
