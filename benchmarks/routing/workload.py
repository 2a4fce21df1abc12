"""The multi-tenant trace of ``bench_routing``: token ids and arrival times, fixed by a seed.

Three kinds of request, all sharing prefixes the way real traffic does:

* **chat** turns: a session picks one of ``num_system`` system prompts (Zipf popularity) and
  sends 1-8 turns; each turn resends the whole history (system, every user message and every
  reply so far) plus a new user message, ``think`` seconds after the previous turn;
* **rag**: the RAG header, ``top_k`` chunks of a shared pool (Zipf popularity, sorted by
  chunk id and put first, as ``llmds.server.rag`` does) and a question;
* **single**: a system prompt and one user message.

Session starts and the other kinds arrive as Poisson processes whose rates add up to ``rate``
requests/s (turns included).  Replies are fixed in the trace (the simulated engine "samples"
them), so a later turn's history holds exactly the tokens an earlier reply wrote into the KV
cache.  Token ids are random, drawn from the model's vocabulary range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmds.server.routing import prompt_keys

__all__ = ["TraceRequest", "WorkloadConfig", "make_trace"]


@dataclass(slots=True)
class TraceRequest:
    rid: int
    arrival: float
    kind: str  # "chat", "rag" or "single"
    prompt: list[int]
    reply: list[int]
    keys: list[int]  # prompt_keys(prompt, block_size): the routing key


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    rate: float  # requests per second, all kinds and turns together
    duration: float = 60.0  # seconds of arrivals
    num_system: int = 200
    system_len: tuple[int, int] = (256, 1024)
    zipf_s: float = 1.1
    num_chunks: int = 1000
    chunk_len: int = 128
    chunk_zipf_s: float = 1.0
    top_k: int = 4
    user_len: tuple[int, int] = (16, 96)
    reply_len: tuple[int, int] = (16, 128)
    max_turns: int = 8
    turn_p: float = 0.35  # a session ends after each turn with this probability
    think: tuple[float, float] = (2.0, 6.0)  # a turn follows the last one after min + Exp(mean)
    mix: tuple[float, float, float] = (0.5, 0.3, 0.2)  # chat turns, rag, single
    block_size: int = 16
    seed: int = 0


def _zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def make_trace(cfg: WorkloadConfig) -> list[TraceRequest]:
    """The trace, sorted by arrival (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    vocab = (1000, 49000)

    def tokens(n: int) -> list[int]:
        return rng.integers(*vocab, size=int(n)).tolist()

    def length(lo_hi: tuple[int, int]) -> int:
        return int(rng.integers(lo_hi[0], lo_hi[1] + 1))

    systems = [tokens(length(cfg.system_len)) for _ in range(cfg.num_system)]
    chunks = [tokens(cfg.chunk_len) for _ in range(cfg.num_chunks)]
    rag_header = tokens(32)
    p_sys = _zipf_weights(cfg.num_system, cfg.zipf_s)
    p_chunk = _zipf_weights(cfg.num_chunks, cfg.chunk_zipf_s)
    mean_turns = sum((1 - cfg.turn_p) ** t for t in range(cfg.max_turns))  # E[min(Geom, max_turns)]
    chat, rag, single = (m * cfg.rate for m in cfg.mix)
    out: list[tuple[float, str, list[int], list[int]]] = []

    def poisson(rate: float) -> np.ndarray:
        n = rng.poisson(rate * cfg.duration)
        return np.sort(rng.uniform(0, cfg.duration, n))

    for t0 in poisson(chat / mean_turns):
        history = list(systems[rng.choice(cfg.num_system, p=p_sys)])
        t = float(t0)
        for _ in range(cfg.max_turns):
            history += tokens(length(cfg.user_len))
            reply = tokens(length(cfg.reply_len))
            if t < cfg.duration:
                out.append((t, "chat", list(history), reply))
            history += reply
            if rng.random() < cfg.turn_p:
                break
            t += cfg.think[0] + rng.exponential(cfg.think[1])
    for t in poisson(rag):
        picked = np.sort(rng.choice(cfg.num_chunks, size=cfg.top_k, replace=False, p=p_chunk))
        prompt = list(rag_header)
        for c in picked:
            prompt += chunks[c]
        out.append((float(t), "rag", prompt + tokens(length((16, 48))), tokens(length(cfg.reply_len))))
    for t in poisson(single):
        prompt = systems[rng.choice(cfg.num_system, p=p_sys)] + tokens(length(cfg.user_len))
        out.append((float(t), "single", prompt, tokens(length(cfg.reply_len))))
    out.sort(key=lambda r: r[0])
    return [TraceRequest(i, t, kind, prompt, reply, prompt_keys(prompt, cfg.block_size))
            for i, (t, kind, prompt, reply) in enumerate(out)]
