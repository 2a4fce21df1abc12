"""The documentation: README is the front door (short, the set-up commands first), docs/ builds
with ``mkdocs build --strict`` (so every link and anchor resolves), every page is in the nav, and
the RAG index ``llmds serve`` builds by default covers both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    first_block = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands[:2] == ["make serve", "make test"]


def test_docs_build_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "architecture" / "index.html").is_file()


def test_every_docs_page_is_in_the_nav():
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M))
    assert nav == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_readme_links_to_docs_resolve():
    for target in re.findall(r"\]\((docs/[^)#]+)", README.read_text(encoding="utf-8")):
        assert (ROOT / target).is_file(), target


def test_the_default_rag_documents_are_the_readme_and_docs():
    from llmds.server.rag import default_docs

    assert default_docs() == [README, ROOT / "docs"]
