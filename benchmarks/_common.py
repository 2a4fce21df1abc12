"""What every benchmark shares: where results go, the bench-extra hint, the ratio rule.

* Full runs write ``benchmarks/results/<name>.json`` (committed: the figures the
  docs quote). ``--quick`` smoke runs write ``benchmarks/results/quick/<name>.json``
  (git-ignored), so a smoke run never overwrites the committed full results.
  An explicit ``--out`` goes where it says.
* The peers come from the ``bench`` extra; a benchmark run without it stops with
  one line naming ``make install-bench`` instead of a ``ModuleNotFoundError``.
* Every table's ratio column means one thing: **> 1 means llmds is better**
  (faster or smaller), and the table header says so (``ratio_rule``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_DIR = RESULTS_DIR / "quick"

# importable top-level modules of the `bench` extra (pyproject.toml)
BENCH_EXTRA_MODULES = frozenset(
    {"cachetools", "hnswlib", "faiss", "bm25s", "rank_bm25", "tantivy", "probables", "aiohttp"}
)
INSTALL_HINT = "run `make install-bench` (or `pip install -e '.[bench]'`)"

RATIO_RULE = "> 1 means {} is better"


def ratio_rule(definition: str, better: str = "llmds") -> str:
    """Header text of a ratio column: what it divides and that > 1 favours ``better``."""
    return f"ratio = {definition}: " + RATIO_RULE.format(better)


def results_path(default: Path | str, quick: bool) -> Path:
    """Where a run writes by default: ``default`` for full runs, ``quick/`` beside it for quick ones."""
    default = Path(default)
    return default.parent / QUICK_DIR.name / default.name if quick else default


def add_out_arg(ap: argparse.ArgumentParser, default: Path) -> None:
    """The ``--out`` option every benchmark takes (default: ``results_path``)."""
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output path (default: {RESULTS_DIR.name}/{default.name}; "
        f"--quick runs: {RESULTS_DIR.name}/{QUICK_DIR.name}/{default.name})",
    )


def out_path(args: argparse.Namespace, default: Path) -> Path:
    """``args.out`` if given, else ``results_path(default, args.quick)``."""
    return args.out if args.out is not None else results_path(default, args.quick)


def machine_info() -> dict:
    """Which CPU a run's figures came from: its model name (as ``lscpu`` gives it), cores, and
    whether it has AMX (on AMX the bfloat16 matmuls are ~4x faster: read the ratios)."""
    import os
    import platform

    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == (platform.processor() or platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    return {"processor": name, "cpus": os.cpu_count(), "amx": " amx_bf16" in flags}


def write_results(path: Path | str, result: dict) -> Path:
    """Write ``result`` as JSON (creating the folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return out


def missing_bench_extra(exc: BaseException) -> str | None:
    """The one-line hint when ``exc`` is a missing module of the ``bench`` extra, else None."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    top = (exc.name or "").split(".")[0]
    if top not in BENCH_EXTRA_MODULES:
        return None
    return f"this benchmark needs the `bench` extra (no module named {top!r}): {INSTALL_HINT}"


def require_bench_extra(*modules: str) -> None:
    """Fail before any work when one of ``modules`` (of the ``bench`` extra) is not installed."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


@contextmanager
def needs_bench_extra() -> Iterator[None]:
    """Turn a missing ``bench``-extra module into one line on stderr and exit status 1."""
    try:
        yield
    except ModuleNotFoundError as exc:
        hint = missing_bench_extra(exc)
        if hint is None:
            raise
        sys.exit(hint)


def run_main(main: Callable[[], object]) -> None:
    """``if __name__ == "__main__"`` of a benchmark: run ``main`` under ``needs_bench_extra``."""
    with needs_bench_extra():
        rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)


def part_main(
    doc: str,
    run: Callable[..., dict],
    format_table: Callable[[dict], str],
    results: Path,
    quick_help: str,
    argv: list[str] | None = None,
    **run_kwargs,
) -> dict:
    """``python -m benchmarks.<part> [--quick] [--out PATH]``: run, print the table, write JSON."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    add_out_arg(ap, results)
    args = ap.parse_args(argv)
    with needs_bench_extra():
        res = run(quick=args.quick, **run_kwargs)
    print(format_table(res))
    write_results(out_path(args, results), res)
    return res
