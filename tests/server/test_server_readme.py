"""The README's serving examples (curl, the openai client plain, streaming and with RAG) run as
written against the live server (only its address and key are substituted)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from server_helpers import API_KEY

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    body = text.split("## Serving: `llmds serve`", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)


def _local(code: str, live) -> str:
    return code.replace("http://127.0.0.1:8000", live.url).replace('api_key="unused"', f'api_key="{API_KEY}"')


def test_readme_python_examples_run(live):
    blocks = _section("python")
    assert len(blocks) == 2
    for code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(_local(code, live), str(README), "exec"), {"__name__": "__readme__"})
        assert out.getvalue().strip()
    assert "cached prompt tokens:" in out.getvalue()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_curl_example_runs(live):
    (code,) = _section("bash")
    cmd = _local(code, live).replace("curl -s ", f"curl -s -H 'Authorization: Bearer {API_KEY}' ", 1)
    cmd = cmd.replace('"max_tokens": 32', '"max_tokens": 4')
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["object"] == "chat.completion"
