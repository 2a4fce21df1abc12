"""The serving examples of the README (its first request) and of docs/serving.md (curl, the openai
client plain, streaming and with RAG) run as written against the live server (only its address
and key are substituted)."""

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

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SERVING = ROOT / "docs" / "serving.md"


def _blocks(path: Path, lang: str, section: str | None = None) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if section is not None:
        text = text.split(section, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _local(code: str, live) -> str:
    return code.replace("http://127.0.0.1:8000", live.url).replace('api_key="unused"', f'api_key="{API_KEY}"')


def _run_python(code: str, live) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_local(code, live), "<docs>", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


def _run_curl(code: str, live) -> dict:
    cmd = _local(code, live).replace("curl -s ", f"curl -s -H 'Authorization: Bearer {API_KEY}' ", 1)
    cmd = cmd.replace('"max_tokens": 32', '"max_tokens": 4')
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_readme_first_request_python_runs(live):
    code = _blocks(README, "python", "## First request")[0]  # all of them: test_readme_examples.py
    out = _run_python(code, live)
    assert "prompt_tokens" in out and "cached_tokens" in out  # the plain and the RAG request printed


def test_serving_python_examples_run(live):
    blocks = _blocks(SERVING, "python")
    assert len(blocks) == 2
    outs = [_run_python(code, live) for code in blocks]
    assert all(o.strip() for o in outs)
    assert "cached prompt tokens:" in outs[-1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_examples_run(live):
    (readme,) = _blocks(README, "bash", "## First request")
    serving, _engine = _blocks(SERVING, "bash")
    for code in (readme, serving):
        assert _run_curl(code, live)["object"] == "chat.completion"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_engine_view_curl_examples_run(live):
    _chat, engine = _blocks(SERVING, "bash")
    state, events = (line.split("#")[0] for line in engine.splitlines())
    key = f"-H 'Authorization: Bearer {API_KEY}' "
    r = subprocess.run(["bash", "-c", _local(state, live).replace("curl -s ", "curl -s " + key, 1)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and '"num_blocks":' in r.stdout, r.stderr
    # the event stream never ends: read it for a second
    cmd = _local(events, live).replace("curl -sN ", "curl -sN --max-time 1 " + key, 1)
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("event: state\ndata: {"), (r.returncode, r.stdout[:200])
