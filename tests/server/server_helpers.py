"""Constants and helpers of the server tests (a module of its own: ``conftest`` is a name every
test folder has, so tests import these from here)."""

from __future__ import annotations

API_KEY = "test-key"
NUM_BLOCKS = 96  # x 16 tokens: a 1,536-token KV pool
DOCS = {
    "paging.md": "# Paged attention\n\nPaged attention keeps the KV cache in fixed-size blocks, like the pages "
                 "of virtual memory. A block table maps a request's logical blocks to physical blocks, so "
                 "memory is allocated on demand and never fragmented.",
    "prefix.md": "# Prefix caching\n\nRequests that share a prompt prefix share its KV blocks. A full block is "
                 "found by hashing its tokens together with the hash of its parent block.",
    "admission.txt": "Admission control rejects requests with HTTP 429 and a Retry-After header when the "
                     "request rate, the token rate or the waiting queue is over its limit.",
}


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def chat_body(content: str = "What is the capital of France?", **kw):
    return {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, "temperature": 0, **kw}


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text (``name`` includes labels)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
