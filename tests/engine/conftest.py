"""Shared fixtures of the engine tests: the default model loaded once, and transformers' reference.

The reference is transformers' ``LlamaForCausalLM`` loading the same GGUF in float32; its greedy
continuations are computed once per prompt and cached for the session.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

SYSTEM = ("You are a meticulous assistant for a logistics company. Answer in one short paragraph, "
          "cite the relevant policy number when there is one, never invent tracking numbers, and "
          "say so plainly when the answer is not in the policy handbook. ")

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain in two sentences why the sky is blue, for a ten-year-old child who asked at dinner.",
    "Write a haiku about paged attention.",
    "What is 17 times 23?",
    "List the planets of the solar system in order from the sun, with one fact about each of them.",
    "Translate 'good morning' into Spanish and German.",
    "Hi",
]


@pytest.fixture(scope="session")
def model_path():
    from llmds.engine.loader import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def hf(model_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def hf_greedy(hf):
    """``hf_greedy(token_ids, n)``: transformers' greedy continuation (cached)."""
    model, _ = hf
    cache: dict = {}

    def run(ids, n):
        key = (tuple(ids), n)
        if key not in cache:
            with torch.no_grad():
                out = model.generate(torch.tensor([list(ids)]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=2)
            cache[key] = out[0, len(ids):].tolist()
        return cache[key]

    return run


@pytest.fixture(scope="session")
def engine():
    """The float32 engine, default options (tests must leave it idle)."""
    from llmds.engine.engine import LLMEngine

    eng = LLMEngine()
    yield eng
    assert not eng.has_unfinished_requests()


@pytest.fixture(scope="session")
def chat_ids(engine):
    """Token ids of the chat prompts: plain questions, and the same behind a shared system prompt."""
    plain = [engine.encode_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    shared = [engine.encode_prompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
              for q in QUESTIONS]
    return plain, shared
