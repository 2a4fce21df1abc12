"""The newcomer's bad-input table: hostile and mistaken requests, group by group, against the live
server.  Every one gets a 4xx with the OpenAI error body (``param`` naming the field, the message
stating the limit that was crossed), none a 5xx, and the server is healthy after each group (it
answers ``/health`` and a real chat request, and every KV block is free again).  The only 5xx by
design is a 503 with ``Retry-After`` (too many connections).

Below the table, what no JSON body can do: stalled headers and bodies, too many connections,
a client that stops reading.
"""

from __future__ import annotations

import json
import socket
from contextlib import contextmanager

import httpx
import pytest
from server_helpers import API_KEY, chat_body

MSG = [{"role": "user", "content": "hi"}]
S = "a\ud800b"  # an unpaired UTF-16 surrogate: valid JSON ("a\\ud800b"), not valid Unicode
SURROGATE = "unpaired UTF-16 surrogate"


def _chat(**kw):
    return {"messages": MSG, "max_tokens": 4, **kw}


def _msg(**kw):
    return {"messages": [{"role": "user", "content": "hi", **kw}], "max_tokens": 4}


# (route, raw JSON body or a Python value to send as JSON, expected status, expected param or None,
#  words the message must hold or None)
GROUPS: dict[str, list] = {
    "json": [
        ("/v1/chat/completions", b"{", 400, None, "not valid JSON"),
        ("/v1/chat/completions", b"", 400, None, None),
        ("/v1/chat/completions", b"\xff\xfe", 400, None, None),
        ("/v1/chat/completions", b'{"messages": NaN}', 400, "messages", None),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
         "temperature", None),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', 400,
         "top_p", None),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', 400,
         "messages.0.content", SURROGATE),  # the escape as a client writes it
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udc00"}], "stream": true}', 400,
         "messages.0.content", SURROGATE),
        ("/v1/chat/completions", [], 400, None, None),
        ("/v1/chat/completions", "text", 400, None, None),
        ("/v1/chat/completions", 5, 400, None, None),
        ("/v1/completions", b"null", 400, None, None),
        ("/v1/embeddings", b"[1, 2", 400, None, "not valid JSON"),
        ("/tokenize", b"{}}", 400, None, None),
    ],
    "chat": [
        ("/v1/chat/completions", {}, 400, "messages", "required"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages", "at least 1 items allowed, got 0"),
        ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", None),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", None),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content",
         "a string or a list of text parts"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                                              "image_url": {"url": "x"}}]}]}, 400,
         None, None),
        ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages.0.role", "required"),
        ("/v1/chat/completions", _chat(temperature="hot"), 400, "temperature", None),
        ("/v1/chat/completions", _chat(temperature=-1), 400, "temperature", None),
        ("/v1/chat/completions", _chat(temperature=1e308), 400, "temperature", None),
        ("/v1/chat/completions", _chat(top_p=0), 400, "top_p", None),
        ("/v1/chat/completions", _chat(n=0), 400, "n", None),
        ("/v1/chat/completions", _chat(n=129), 400, "n", None),
        ("/v1/chat/completions", _chat(n=5), 400, "n", "max_num_seqs=4"),  # more than run at once
        ("/v1/chat/completions", _chat(max_tokens=0), 400, "max_tokens", None),
        ("/v1/chat/completions", _chat(max_tokens=-5), 400, "max_tokens", None),
        ("/v1/chat/completions", _chat(max_tokens=True), 400, "max_tokens", None),
        ("/v1/chat/completions", _chat(max_tokens=2.5), 400, "max_tokens", None),
        ("/v1/chat/completions", _chat(max_tokens="8"), 400, "max_tokens", None),
        ("/v1/chat/completions", _chat(max_tokens=8192), 400, "max_tokens", "maximum context length is 8192"),
        ("/v1/chat/completions", _chat(max_tokens=10**20), 400, "max_tokens", "in the completion"),
        ("/v1/chat/completions", _chat(max_completion_tokens=9000), 400, "max_tokens", "9000 in the completion"),
        ("/v1/chat/completions", _chat(max_tokens=2000), 400, "max_tokens", "the KV cache holds 1536 tokens"),
        ("/v1/chat/completions", _chat(seed=2**80), 400, "seed", None),
        ("/v1/chat/completions", _chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
        ("/v1/chat/completions", _chat(top_logprobs=2), 400, "top_logprobs", "needs logprobs"),
        ("/v1/chat/completions", _chat(presence_penalty=5), 400, "presence_penalty", None),
        ("/v1/chat/completions", _chat(frequency_penalty=-3), 400, "frequency_penalty", None),
        ("/v1/chat/completions", _chat(logit_bias={"x": 5}), 400, "logit_bias.x", None),
        ("/v1/chat/completions", _chat(logit_bias={"1": 101}), 400, "logit_bias.1", None),
        ("/v1/chat/completions", _chat(logit_bias={"99999999": 1}), 400, "logit_bias", "vocabulary"),
        ("/v1/chat/completions", _chat(logit_bias={str(i): 1 for i in range(1025)}), 400, "logit_bias",
         "at most 1024 items allowed, got 1025"),
        ("/v1/chat/completions", _chat(logit_bias=[1]), 400, "logit_bias", None),
        ("/v1/chat/completions", _chat(top_k=0), 400, "top_k", None),
        ("/v1/chat/completions", _chat(repetition_penalty=0), 400, "repetition_penalty", None),
        ("/v1/chat/completions", _chat(stop_token_ids=[-1]), 400, "stop_token_ids.0", None),
        ("/v1/chat/completions", _chat(stop_token_ids=list(range(17))), 400, "stop_token_ids",
         "at most 16 items allowed, got 17"),
        ("/v1/chat/completions", _chat(priority=2**40), 400, "priority", None),
        ("/v1/chat/completions", _chat(stream="yes"), 400, "stream", None),
        ("/v1/chat/completions", _chat(stream_options={"include_usage": 1}), 400, "stream_options.include_usage",
         None),
        ("/v1/chat/completions", _chat(rag={"top_k": 0}), 400, "rag.top_k", None),
        ("/v1/chat/completions", _chat(rag={"top_k": 2, "query": ""}), 400, "rag.query", None),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "be brief"}], "rag": {}}, 400,
         "rag.query", None),
        ("/v1/chat/completions", _chat(model="gpt-4o"), 404, "model", "does not exist"),
    ],
    "stop lists": [
        ("/v1/chat/completions", _chat(stop=[""]), 400, "stop.0", "at least 1 character"),
        ("/v1/chat/completions", _chat(stop=["x"] * 17), 400, "stop", "at most 16 items allowed, got 17"),
        ("/v1/chat/completions", _chat(stop=["x"] * 100), 400, "stop", "at most 16 items allowed, got 100"),
        ("/v1/chat/completions", _chat(stop=5), 400, "stop", "a string or a list of at most 16 non-empty strings"),
        ("/v1/chat/completions", _chat(stop=[5]), 400, "stop", "a string or a list"),
        ("/v1/completions", {"prompt": "hi", "stop": ["x"] * 100}, 400, "stop", "at most 16 items allowed"),
    ],
    "completions": [
        ("/v1/completions", {}, 400, "prompt", "required"),
        ("/v1/completions", {"prompt": ""}, 400, "prompt", "empty"),
        ("/v1/completions", {"prompt": []}, 400, "prompt", "at least 1 items allowed, got 0"),
        ("/v1/completions", {"prompt": [[]]}, 400, "prompt.0", "at least 1 items allowed, got 0"),
        ("/v1/completions", {"prompt": [10**9]}, 400, "prompt", "vocabulary"),
        ("/v1/completions", {"prompt": [-1]}, 400, "prompt.0", None),
        ("/v1/completions", {"prompt": [1, "a"]}, 400, "prompt.1", None),
        ("/v1/completions", {"prompt": {"text": "hi"}}, 400, "prompt", "a string, a list of at most 64"),
        ("/v1/completions", {"prompt": ["a"] * 65}, 400, "prompt", "at most 64 items allowed, got 65"),
        ("/v1/completions", {"prompt": [[1]] * 65}, 400, "prompt", "at most 64 items allowed, got 65"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens", None),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 8192}, 400, "max_tokens",
         "maximum context length is 8192"),
        ("/v1/completions", {"prompt": [100] * 8192, "max_tokens": 1}, 400, "prompt", "context"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs", None),
        ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo", None),
        ("/v1/completions", {"prompt": "hi", "suffix": "x"}, 400, "suffix", None),
        ("/v1/completions", {"prompt": "hi", "best_of": 3}, 400, "best_of", None),
        ("/v1/completions", {"prompt": "hi", "n": 5}, 400, "n", "max_num_seqs"),
        ("/v1/completions", {"prompt": "hi", "model": "davinci"}, 404, "model", None),
    ],
    "embeddings and retrieval": [
        ("/v1/embeddings", {}, 400, "input", "required"),
        ("/v1/embeddings", {"input": []}, 400, "input", "at least 1 items allowed, got 0"),
        ("/v1/embeddings", {"input": 5}, 400, "input", "a string, a list of at most 2048 strings"),
        ("/v1/embeddings", {"input": ["x"] * 10_000}, 400, "input", "at most 2048 items allowed, got 10000"),
        ("/v1/embeddings", {"input": [[1, 2]] * 2049}, 400, "input", "at most 2048 items allowed, got 2049"),
        ("/v1/embeddings", {"input": [30522]}, 400, "input", "vocabulary"),
        ("/v1/embeddings", {"input": [[]]}, 400, "input.0", None),
        ("/v1/embeddings", {"input": [-1]}, 400, "input.0", None),
        ("/v1/embeddings", {"input": [1, "a"]}, 400, "input.1", None),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format", None),
        ("/v1/embeddings", {"input": "x", "dimensions": 100}, 400, "dimensions", None),
        ("/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"}, 404, "model", None),
        ("/v1/retrieve", {}, 400, "query", None),
        ("/v1/retrieve", {"query": ""}, 400, "query", None),
        ("/v1/retrieve", {"query": "x", "top_k": 0}, 400, "top_k", None),
        ("/v1/retrieve", {"query": "x", "top_k": 10**6}, 400, "top_k", None),
        ("/v1/retrieve", {"query": ["x"]}, 400, "query", None),
    ],
    "tokenize": [
        ("/tokenize", {}, 400, "prompt", "exactly one"),
        ("/tokenize", {"prompt": "hi", "messages": MSG}, 400, "prompt", "exactly one"),
        ("/tokenize", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", None),
        ("/tokenize", {"prompt": "hi", "model": "gpt-4o"}, 404, "model", None),
        ("/tokenize", {"messages": MSG, "model": "all-MiniLM-L6-v2"}, 400, "messages", "chat template"),
        ("/tokenize", {"prompt": 5}, 400, "prompt", None),
        ("/detokenize", {}, 400, "tokens", "required"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens.0", None),
        ("/detokenize", {"tokens": [10**9]}, 400, "tokens", "vocabulary"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens", None),
        ("/detokenize", {"tokens": [10**9], "model": "all-MiniLM-L6-v2"}, 400, "tokens", "vocabulary"),
    ],
}

# an unpaired surrogate in every text field of every route, whole and streamed
SURROGATE_FIELDS = [
    ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": S}]), "messages.0.content"),
    ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": [{"type": "text", "text": S}]}]),
     "messages.0.content.0.text"),
    ("/v1/chat/completions", _msg(name=S), "messages.0.name"),
    ("/v1/chat/completions", _chat(stop=S), "stop"),
    ("/v1/chat/completions", _chat(stop=["ok", S]), "stop.1"),
    ("/v1/chat/completions", _chat(model=S), "model"),
    ("/v1/chat/completions", _chat(user=S), "user"),
    ("/v1/chat/completions", _chat(rag={"query": S}), "rag.query"),
    ("/v1/completions", {"prompt": S}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", S]}, "prompt.1"),
    ("/v1/completions", {"prompt": "hi", "stop": S}, "stop"),
    ("/v1/completions", {"prompt": "hi", "suffix": S}, "suffix"),
    ("/v1/completions", {"prompt": "hi", "model": S}, "model"),
    ("/v1/completions", {"prompt": "hi", "user": S}, "user"),
    ("/v1/embeddings", {"input": S}, "input"),
    ("/v1/embeddings", {"input": ["ok", S]}, "input.1"),
    ("/v1/embeddings", {"input": "ok", "model": S}, "model"),
    ("/v1/embeddings", {"input": "ok", "user": S}, "user"),
    ("/v1/retrieve", {"query": S}, "query"),
    ("/tokenize", {"prompt": S}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": S}]}, "messages.0.content"),
    ("/tokenize", {"prompt": "ok", "model": S}, "model"),
    ("/detokenize", {"tokens": [1], "model": S}, "model"),
]
GROUPS["surrogates"] = [(route, body, 400, param, SURROGATE) for route, body, param in SURROGATE_FIELDS] + [
    (route, {**body, "stream": True}, 400, param, SURROGATE) for route, body, param in SURROGATE_FIELDS
    if route in ("/v1/chat/completions", "/v1/completions")]


def send(http, route: str, body) -> httpx.Response:
    """POST ``body`` (raw bytes, or a value as JSON with non-ASCII escaped, so surrogates go as ``\\udXXX``)."""
    raw_body = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(route, content=raw_body, headers={"content-type": "application/json"})


def assert_healthy(http, live) -> None:
    """``/health`` answers, a real request is served, and (once idle) every KV block is free."""
    assert http.get("/health").json()["status"] == "ok"
    r = http.post("/v1/chat/completions", json=chat_body(max_tokens=2))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    live.settle()
    assert live.state.engine.block_manager.num_free_blocks == live.idle_free_blocks


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_bad_input_gets_a_4xx_naming_the_field_and_the_server_stays_healthy(http, live, group):
    wrong = []
    for route, body, status, param, words in GROUPS[group]:
        r = send(http, route, body)
        assert r.status_code < 500, (route, body, r.status_code, r.text)
        err = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
        ok = (r.status_code == status and err is not None and set(err) == {"message", "type", "param", "code"}
              and err["message"] and (param is None or err["param"] == param)
              and (words is None or words in err["message"]))
        if not ok:
            wrong.append((route, str(body)[:80], r.status_code, r.text[:300]))
    assert wrong == []
    assert_healthy(http, live)


def test_methods_auth_and_request_ids(http, live):
    assert http.put("/v1/chat/completions", json=_chat()).status_code == 405
    assert http.get("/tokenize").status_code == 405
    assert http.get("/v1/nothing").status_code == 404
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": "Basic x"}):
        r = httpx.post(live.url + "/v1/chat/completions", json=_chat(), headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for rid in (b"x" * 129, b"has space", "é".encode(), b"", b"\xff"):  # not a plain token: the server makes its own
        r = http.post("/v1/chat/completions", json=chat_body(max_tokens=1), headers={"X-Request-Id": rid})
        assert r.status_code == 200 and r.headers["x-request-id"].encode() != rid
        assert len(r.headers["x-request-id"]) == 32
    assert_healthy(http, live)


# ------------------------------------------------------------------------- below the JSON body
@contextmanager
def raw(live, timeout: float = 30.0):
    host, port = live.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        yield s
    finally:
        s.close()


def read_response(s) -> tuple[int, dict, bytes]:
    """Status, headers and body of one response, read until the server closes the connection."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@contextmanager
def bounds(live, **values):
    """Set the live server's connection bounds (``header_timeout``, ``send_timeout``,
    ``max_connections``: its protocol class) and body timeout (its Guard) for a while."""
    proto, guard = live.server.config.http, live.server.config.app
    saved = {k: getattr(proto, k) for k in ("header_timeout", "send_timeout", "max_connections")}
    saved_body = guard.body_timeout
    for k, v in values.items():
        setattr(guard if k == "body_timeout" else proto, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(proto, k, v)
        guard.body_timeout = saved_body


def test_a_stalled_body_gets_408_and_its_connection_closes(http, live):
    before = live.state.gate.rejections["body_timeout"]
    with bounds(live, body_timeout=0.5), raw(live) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\": ")
        status, headers, body = read_response(s)  # the server answers and closes; the client never finished
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert live.state.gate.rejections["body_timeout"] == before + 1
    assert_healthy(http, live)


def test_stalled_headers_get_408_and_a_silent_connection_is_closed(http, live):
    before = live.state.gate.rejections["header_timeout"]
    with bounds(live, header_timeout=0.5):
        with raw(live) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-")
            status, headers, body = read_response(s)
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
        with raw(live) as s:  # connects, sends nothing
            assert s.recv(100) == b""  # closed by the server
    assert live.state.gate.rejections["header_timeout"] == before + 1
    assert_healthy(http, live)


def test_connections_over_the_limit_get_503_with_retry_after(http, live):
    request = (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    before = live.state.gate.rejections["connections"]
    with bounds(live, max_connections=2), raw(live) as a, raw(live) as b:
        for s in (a, b):  # two connections: within the limit (one may be http's own pooled connection)
            s.sendall(request)
            assert s.recv(100).startswith(b"HTTP/1.1 ")
        with raw(live) as c:
            c.sendall(request)
            status, headers, body = read_response(c)
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "too_many_connections"
    assert live.state.gate.rejections["connections"] >= before + 1
    assert_healthy(http, live)


def test_a_reader_that_stops_reading_holds_nothing_once_gone(http, live):
    """A streaming client that reads nothing: others are served meanwhile; once it goes, its request
    is aborted and its blocks freed (a client that stays, silent, is dropped after ``send_timeout``:
    ``test_connections.py``)."""
    with raw(live) as s:
        body = json.dumps(chat_body("Tell me a long story.", max_tokens=300, stream=True, ignore_eos=True)).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        r = http.post("/v1/chat/completions", json=chat_body(max_tokens=2))  # served beside it
        assert r.status_code == 200
        assert live.state.metrics.in_flight >= 1
    assert_healthy(http, live)  # settles: the silent reader's request was aborted, its blocks freed
