"""The ``llmds`` command line: help everywhere, one-line user errors, and the commands' output
checked against the engine and the retrieval index they drive."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from llmds import cli

COMMANDS = ["serve", "generate", "chat", "index", "search", "bench", "version"]


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(([command] if command else []) + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmds") and (command is None or command in out)


@pytest.mark.parametrize("argv,words", [
    (["generate", "hi", "--max-tokens", "-3"], "max_tokens"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["serve", "--docs", "a", "--index", "b"], "not both"),
    (["serve", "--docs", "/no/such/folder"], "no such file"),
    (["search", "/no/such/index.npz", "query"], "no such index"),
    (["index", "/no/such/folder", "--out", "/tmp/x.npz"], "no such document"),
    (["bench", "everything"], "unknown benchmark"),
    (["serve", "--replicas", "0"], "--replicas"),
])
def test_a_user_error_is_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llmds: error: ") and words in err
    assert "Traceback" not in err


def test_bad_option_type_is_argparse_one_liner():
    r = subprocess.run([sys.executable, "-m", "llmds.cli", "serve", "--port", "eighty"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "invalid int value" in r.stderr and "Traceback" not in r.stderr


def test_the_single_process_server_never_imports_ray():
    code = ("import sys; from llmds import cli; import llmds.server.app, llmds.server.run, llmds.server.routing; "
            "cli.build_parser().parse_args(['serve']); assert not [m for m in sys.modules if m.split('.')[0] == 'ray']")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("torch")
    from llmds.engine.engine import LLMEngine

    return LLMEngine(num_blocks=64, max_num_seqs=2, hot_prefix_threshold=0)


@pytest.fixture
def use_engine(engine, monkeypatch):
    monkeypatch.setattr(cli, "_load_engine", lambda a: engine)
    return engine


GREEDY = ["--temperature", "0", "--max-tokens", "8"]


def test_generate_streams_the_engines_output(use_engine, capsys):
    from llmds.engine.config import SamplingParams

    assert cli.main(["generate", "What is the capital of France?", *GREEDY]) == 0
    want = use_engine.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                               SamplingParams(max_tokens=8, temperature=0))[0].output_text
    assert capsys.readouterr().out == want + "\n"
    assert cli.main(["generate", "The capital of France is", "--raw", *GREEDY]) == 0
    want = use_engine.generate("The capital of France is", SamplingParams(max_tokens=8, temperature=0))[0].output_text
    assert capsys.readouterr().out == want + "\n"


def test_chat_keeps_the_history(use_engine, capsys, monkeypatch):
    from llmds.engine.config import SamplingParams

    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a fruit.\n\nAnd a colour?\n/reset\nHi\n/exit\n"))
    assert cli.main(["chat", "--system", "Be brief.", *GREEDY]) == 0
    replies = capsys.readouterr().out.split("\n")[:3]
    greedy = SamplingParams(max_tokens=8, temperature=0)
    sys_msg = {"role": "system", "content": "Be brief."}
    first = [sys_msg, {"role": "user", "content": "Name a fruit."}]
    a1 = use_engine.generate([first], greedy)[0].output_text
    second = first + [{"role": "assistant", "content": a1}, {"role": "user", "content": "And a colour?"}]
    a2 = use_engine.generate([second], greedy)[0].output_text
    a3 = use_engine.generate([[sys_msg, {"role": "user", "content": "Hi"}]], greedy)[0].output_text  # after /reset
    assert replies == [a1, a2, a3]


def test_index_then_search(tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "paging.md").write_text("Paged attention stores the KV cache in fixed-size blocks.\n")
    (docs / "admission.txt").write_text("Admission control answers 429 with a Retry-After header.\n")
    (docs / "ignored.bin").write_bytes(b"\x00\x01")
    out = tmp_path / "docs.npz"
    assert cli.main(["index", str(docs), "--out", str(out)]) == 0
    assert "indexed 2 chunks of 2 documents" in capsys.readouterr().out
    assert cli.main(["search", str(out), "which header says when to retry", "--top-k", "1"]) == 0
    shown = capsys.readouterr().out
    assert "admission.txt" in shown and "paging.md" not in shown


def test_omp_wait_env_bounded_spin_unless_the_user_chose():
    from llmds.cli import OMP_WAIT_ENV, omp_wait_env

    assert omp_wait_env({"PATH": "/bin"}) == {"PATH": "/bin", **OMP_WAIT_ENV}
    assert omp_wait_env({"OMP_WAIT_POLICY": "PASSIVE"}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert omp_wait_env({"GOMP_SPINCOUNT": "5"}) == {"GOMP_SPINCOUNT": "5"}
    assert OMP_WAIT_ENV["OMP_WAIT_POLICY"] == "ACTIVE" and int(OMP_WAIT_ENV["GOMP_SPINCOUNT"]) > 0


@pytest.mark.parametrize("argv,words", [
    (["serve", "--port", "99999"], "99999 is not a TCP port"),
    (["serve", "--port", "-1"], "is not a TCP port"),
    (["serve", "--max-connections", "0"], "must be > 0"),
    (["serve", "--body-timeout", "nan-ish"], "invalid float value"),
])
def test_bad_serve_options_fail_before_anything_loads(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys, monkeypatch):
    import socket

    monkeypatch.setattr(cli, "_load_engine", lambda a: pytest.fail("the model must not load"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port), "--no-rag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_chat_template_from_a_file_or_inline(tmp_path, capsys):
    a = cli.build_parser().parse_args(["generate", "hi", "--chat-template", "{{ messages[0]['content'] }}!"])
    assert cli._engine_config(a).chat_template == "{{ messages[0]['content'] }}!"
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    a = cli.build_parser().parse_args(["chat", "--chat-template", str(f)])
    assert cli._engine_config(a).chat_template == f.read_text()
    assert cli.main(["generate", "hi", "--chat-template", str(tmp_path / "none.jinja")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["generate", "hi", "--chat-template", "{% for %}"]) == 2
    assert "does not compile" in capsys.readouterr().err


def test_chat_says_when_the_conversation_is_cleared(use_engine, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n/reset\n/exit\n"))
    assert cli.main(["chat", *GREEDY]) == 0
    assert "conversation cleared" in capsys.readouterr().err


def test_a_chat_reply_stops_on_ctrl_c_and_the_chat_goes_on(use_engine, monkeypatch, capsys):
    """On a terminal, SIGINT during a reply stops that reply (its request aborted), not the chat."""
    import os
    import signal

    from llmds import terminal

    lines = iter(["Count from one to a hundred.\n", "Hi\n", ""])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(terminal, "terminal_input", lambda: lambda: next(lines))
    real_stream = use_engine.stream
    seen = []

    def stream(prompt, params):
        for i, o in enumerate(real_stream(prompt, params)):
            seen.append(o)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during the first reply
            yield o

    monkeypatch.setattr(use_engine, "stream", stream)
    long = ["--temperature", "0", "--max-tokens", "60"]
    assert cli.main(["chat", *long]) == 0
    err = capsys.readouterr().err
    assert err.count("reply stopped") == 1
    assert not use_engine.has_unfinished_requests()
    assert use_engine.block_manager.num_free_blocks == use_engine.num_blocks
