"""What every benchmark shares: its results file and the `--quick` entry point of the retrieval parts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(path: Path | str, result: dict) -> Path:
    """Write ``result`` as JSON (creating the folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return out


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
    ap.add_argument("--out", type=Path, default=results, help="JSON output path")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, **run_kwargs)
    print(format_table(res))
    write_results(args.out, res)
    return res
