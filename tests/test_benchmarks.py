"""The benchmarks' shared behaviour (no timing asserted): the seed's entry point, quick runs that
keep the committed results, the ratio rule in every table header, the missing-extra hint."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _common
from benchmarks.bench_kv_cache import benchmark_kv_cache


def test_benchmark_kv_cache_seed_signature():
    res = benchmark_kv_cache(num_sequences=40, tokens_per_seq=512, page_size=64, repeats=1, num_prefixes=2)
    for op in ("attach", "get", "detach"):
        assert res[f"{op}_p50_ms"] <= res[f"{op}_p95_ms"] <= res[f"{op}_p99_ms"]
    assert res["peak_rss_mb"] > 0
    shared = res["shared_prefix"]
    assert shared["pages_with_sharing"] < shared["pages_without_sharing"]
    assert shared["pages_saved"] == shared["pages_without_sharing"] - shared["pages_with_sharing"]


# ------------------------------------------------------------------ what every benchmark shares
ROOT = Path(__file__).resolve().parents[1]
# module -> extra argv that keeps the quick run short
OWN_BENCHES = {
    "benchmarks.bench_kv_cache": [],
    "benchmarks.bench_planner": [],
    "benchmarks.bench_kv_arena": [],
    "benchmarks.bench_structures": ["--repeats", "1"],
    "benchmarks.bench_routing": ["--replicas", "4", "--duration", "5"],
}


@pytest.mark.parametrize("name", list(OWN_BENCHES))
def test_quick_run_keeps_full_results_and_states_the_ratio_rule(name, tmp_path, monkeypatch, capsys):
    """--quick writes results/quick/<name>.json, never the committed full results file."""
    if name.endswith("bench_structures"):
        pytest.importorskip("probables")  # its peer comes from the bench extra only
    mod = importlib.import_module(name)
    full = tmp_path / Path(mod.RESULTS).name
    full.write_text("committed full results\n")
    monkeypatch.setattr(mod, "RESULTS", full)
    mod.main(["--quick", *OWN_BENCHES[name]])
    assert full.read_text() == "committed full results\n"
    assert (tmp_path / "quick" / full.name).is_file()
    assert "> 1 means llmds is better" in capsys.readouterr().out
    explicit = tmp_path / "elsewhere.json"
    mod.main(["--quick", "--out", str(explicit), *OWN_BENCHES[name]])  # an explicit --out wins
    assert explicit.is_file() and full.read_text() == "committed full results\n"


def test_part_main_writes_quick_runs_beside_the_full_results(tmp_path, capsys):
    full = tmp_path / "retrieval_x.json"
    run = lambda quick: {"quick": quick}  # noqa: E731
    assert _common.part_main("doc", run, str, full, "help", ["--quick"]) == {"quick": True}
    assert (tmp_path / "quick" / full.name).is_file() and not full.exists()
    _common.part_main("doc", run, str, full, "help", [])
    assert full.is_file()


def test_ratio_rule_and_results_path():
    assert _common.ratio_rule("peer s / llmds s") == "ratio = peer s / llmds s: > 1 means llmds is better"
    assert _common.results_path("r/bench_x.json", quick=False) == Path("r/bench_x.json")
    assert _common.results_path("r/bench_x.json", quick=True) == Path("r/quick/bench_x.json")
    assert (ROOT / ".gitignore").read_text().count("benchmarks/results/quick/") == 1


BLOCK_PEERS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
import benchmarks.{module} as bench
from benchmarks._common import run_main
def started(*args):
    sys.exit("the benchmark started before checking its peers")
bench.bench_token_lru = bench.bench_indexed_heap = bench.bench_cmsketch = started
run_main(lambda: bench.main(["--quick", "--out", {out!r}]))
"""


@pytest.mark.parametrize("blocked, missing", [(("cachetools", "probables"), "cachetools"),
                                              (("probables",), "probables")])
def test_missing_bench_extra_is_one_clear_line_before_any_work(blocked, missing, tmp_path):
    code = BLOCK_PEERS.format(blocked=set(blocked), module="bench_structures",
                              out=str(tmp_path / "o.json"))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"this benchmark needs the `bench` extra (no module named {missing!r}): "
        "run `make install-bench` (or `pip install -e '.[bench]'`)"
    ]
    assert run.stdout == "" and not (tmp_path / "o.json").exists()


def test_missing_bench_extra_stops_bench_retrieval_instead_of_failing_a_part(monkeypatch):
    from benchmarks import bench_retrieval

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "tantivy":
                raise ModuleNotFoundError("No module named 'tantivy'", name="tantivy")

    monkeypatch.delitem(sys.modules, "tantivy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Block(), *sys.meta_path])
    monkeypatch.setattr(bench_retrieval, "PARTS", {"lexical": ("tantivy", "run")})
    with pytest.raises(SystemExit) as exc:
        with _common.needs_bench_extra():
            bench_retrieval.run_all(quick=True, verbose=False)
    assert "make install-bench" in str(exc.value.code)
    # any other failure is still reported per part and the run goes on
    monkeypatch.setattr(bench_retrieval, "PARTS", {"lexical": ("benchmarks._common", "no_such_runner")})
    res = bench_retrieval.run_all(quick=True, verbose=False)
    assert res["parts"]["lexical"]["error"].startswith("AttributeError")
    assert _common.missing_bench_extra(ModuleNotFoundError("x", name="numpy")) is None


def test_bench_engine_runs_its_workers_from_this_checkout(monkeypatch):
    """The engine benchmark's parts live in benchmarks/engine/, and its worker processes import
    this checkout's llmds (its src/ first on PYTHONPATH), not whatever llmds is installed."""
    from benchmarks import bench_engine

    assert bench_engine.WORKERS == ROOT / "benchmarks" / "engine" / "workers.py"
    for part in ("workers", "extras", "tables"):
        importlib.import_module(f"benchmarks.engine.{part}")
    seen = {}

    def fake_run(cmd, cwd, env, **kw):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 1, "", "no worker in this test")

    monkeypatch.setattr(bench_engine.subprocess, "run", fake_run)
    assert bench_engine.run_worker("llmds", {}).startswith("llmds failed")
    assert seen["cmd"][1:3] == ["-m", "benchmarks.engine.workers"]
    assert seen["env"]["PYTHONPATH"].split(os.pathsep)[:2] == [str(ROOT / "src"), str(ROOT)]
