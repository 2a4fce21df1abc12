"""The serving engine: only what ``LLMEngine`` runs.

One ``LLMEngine.step()`` is schedule → run → update (nano-vllm, vLLM v1)::

    engine.py        LLMEngine: add_request, step, generate, stream
    async_engine.py  AsyncLLMEngine: the engine on its own thread, for the server
    config.py        EngineConfig, SamplingParams
    request.py       RequestState (scheduling state), RequestOutput (a step's result)
    sched/           the step planner: which requests get how many tokens this step
    kv/              the block manager (THE owner of block tables) and the KV block tensors
    runner.py        a step plan -> the model's flat batch (token ids, positions, KV slots)
    models/          the Llama forward pass and its attention kernels
    sampling.py      greedy / temperature / top-k / top-p sampling, logprobs
    structured.py    structured outputs: grammar specs, compile cache, batched token masks (llguidance)
    sequence.py      the engine's state of one sequence (detokenizer, timings, grammar matcher)
    text.py          tokenizer, chat template, incremental detokenizer with stop strings
    loader.py        GGUF / safetensors weights, dequantized and cached
    metrics.py       the engine's counters and histograms (vLLM's metric names)

Importing this package imports nothing; torch loads with ``engine``, ``kv.storage``,
``runner``, ``models`` and ``sampling``.
"""
