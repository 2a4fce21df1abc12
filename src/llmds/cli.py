"""`llmds` command line: ``llmds serve | version``.

The OpenAI-compatible server lands with the server issue; until then
``llmds serve`` says so and exits cleanly.
"""

from __future__ import annotations

import argparse
import sys

import llmds


def _serve(args: argparse.Namespace) -> int:
    sys.stdout.write(
        "llmds serve: the OpenAI-compatible server is not there yet (it lands with the "
        "engine and server issues).\n"
        f"llmds {llmds.__version__}: the data structures are importable now, e.g.\n"
        "  python -c 'from llmds import KVCache, HNSW, InvertedIndex'\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the OpenAI-compatible server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=_serve)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda a: sys.stdout.write(llmds.__version__ + "\n") and 0)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
