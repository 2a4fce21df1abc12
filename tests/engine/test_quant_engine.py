"""The quantized engine on a Q4_K_M file made from the embedded model (llama.cpp's most common mix,
with its fallbacks for rows of 576 values): what runs int4, what is read from Q8_0 and what runs
dequantized, and its next-token distribution against transformers reading the same file
(dequantized, float32)."""

from __future__ import annotations

import os

import pytest
import torch
from tests.engine.gguf_fixture import q4_k_m as Q4_K_M
from tests.engine.gguf_fixture import write_gguf

from llmds.engine.config import SamplingParams
from llmds.engine.engine import LLMEngine


@pytest.fixture(scope="module")
def q4_k_m(model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("q4km")
    dest = write_gguf(model_path, folder / "SmolLM2-135M-Instruct.Q4_K_M.gguf", Q4_K_M)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # transformers reads the GGUF's own tokenizer
        assert not (folder / name).exists()
    return dest


@pytest.fixture(scope="module")
def quant_engine(q4_k_m, tmp_path_factory):
    os.environ["LLMDS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return LLMEngine(model=str(q4_k_m), dtype="bfloat16", quantization="gguf", max_num_seqs=4,
                         num_blocks=64)
    finally:
        del os.environ["LLMDS_CACHE_DIR"]


def test_q4_k_m_runs_its_q4_k_weights_as_int4_and_the_rest_dequantized(quant_engine):
    report = quant_engine.quantization_report
    layers = quant_engine.model_config.num_layers
    q4_k = [i for i in range(layers) if Q4_K_M(f"blk.{i}.ffn_down.weight", layers) == "Q4_K"]
    assert 0 < len(q4_k) < layers
    assert sorted(report["int4"]) == sorted(f"{i}.down" for i in q4_k)
    assert report["q8_0"] == ["embed"]  # Q6_K's fallback for rows of 576
    expect = {f"{i}.{p}" for i in range(layers) for p in ("qkv", "o", "gate_up")}
    expect |= {f"{i}.down" for i in range(layers) if i not in q4_k} | {"lm_head"}
    assert set(report["dequantized"]) == expect
    assert report["dequantized"]["0.down"] == "Q6_K" and report["dequantized"]["0.o"] == "Q5_0"
    assert report["dequantized"]["lm_head"] == "Q8_0"


def test_next_token_distribution_matches_transformers_on_the_same_file(quant_engine, q4_k_m, chat_ids):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(q4_k_m.parent), gguf_file=q4_k_m.name,
                                                              dtype=torch.float32)
    plain, _ = chat_ids
    agree = 0
    for ids in plain[:4]:
        out = quant_engine.generate([ids], SamplingParams(temperature=0.0, max_tokens=1, logprobs=5))[0]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        got = out.output_logprobs[0]
        top = dict(got.top)
        ref_top = torch.topk(ref, 2)
        agree += got.token_id == int(ref_top.indices[0])
        # bfloat16 activations against float32: the engine's top token is transformers' best or
        # within bfloat16's noise of it, and every listed logprob is close to transformers'
        assert float(ref[got.token_id]) >= float(ref_top.values[0]) - 0.3
        for tok, lp in top.items():
            assert abs(lp - float(ref[tok])) < 0.3, (tok, lp, float(ref[tok]))
    assert agree >= 3
