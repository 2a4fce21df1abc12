"""The parts of ``python -m benchmarks.bench_engine``: ``workers`` (each engine in its own
process), ``extras`` (the llmds-only measurements: linear-stack rates, attention variants, hot
prefixes) and ``tables`` (the printed tables)."""
