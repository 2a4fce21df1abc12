"""The connection bounds' timers, on a fake protocol base and a fake loop (no sockets, no waiting):
a client that reads nothing while the server has more to write is dropped after ``send_timeout``
(the app sees a disconnect: its request is aborted), and one that resumes reading is not.  The
same bounds against the live server: ``test_bad_input.py``."""

from __future__ import annotations

from llmds.server.connections import bounded_protocol


class FakeTimer:
    def __init__(self, loop, delay, callback) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[FakeTimer] = []

    def call_later(self, delay, callback):
        t = FakeTimer(self, delay, callback)
        self.timers.append(t)
        return t

    def fire(self, delay) -> int:
        """Run the live timers of ``delay`` seconds; how many ran."""
        due = [t for t in self.timers if t.delay == delay and not t.cancelled]
        for t in due:
            t.cancelled = True
            t.callback()
        return len(due)


class FakeTransport:
    def __init__(self) -> None:
        self.written, self.closed, self.aborted = b"", False, False

    def write(self, data) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


class FakeBase:
    """What the bounds use of uvicorn's protocol classes."""

    connections: set = set()

    def __init__(self, loop) -> None:
        self.loop, self.cycle, self.client = loop, None, ("127.0.0.1", 5)
        self.events: list[str] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)
        self.events.append("lost")

    def data_received(self, data) -> None:
        self.events.append("data")

    def on_response_complete(self) -> None:
        pass

    def pause_writing(self) -> None:
        self.events.append("paused")

    def resume_writing(self) -> None:
        self.events.append("resumed")


def _protocol(rejects, send_timeout=60.0, header_timeout=10.0, max_connections=8):
    cls = bounded_protocol(FakeBase, max_connections, header_timeout, send_timeout, rejects.append)
    loop = FakeLoop()
    p = cls(loop)
    p.connection_made(FakeTransport())
    return p, loop


def test_a_client_that_reads_nothing_is_dropped_after_send_timeout():
    rejects: list[str] = []
    p, loop = _protocol(rejects, send_timeout=7.0)
    p.data_received(b"POST / HTTP/1.1\r\n")
    p.pause_writing()  # the transport's buffer is over its high-water mark: the client is not reading
    p.pause_writing()  # paused again: still one timer
    assert [t.delay for t in loop.timers if not t.cancelled].count(7.0) == 1
    assert loop.fire(7.0) == 1
    assert p.transport.aborted and rejects == ["send_timeout"]
    p.connection_lost(None)
    assert all(t.cancelled for t in loop.timers)


def test_a_client_that_resumes_reading_keeps_its_connection():
    rejects: list[str] = []
    p, loop = _protocol(rejects, send_timeout=7.0)
    p.pause_writing()
    p.resume_writing()
    assert loop.fire(7.0) == 0
    assert not p.transport.aborted and rejects == [] and p.events[-2:] == ["paused", "resumed"]


def test_connections_over_the_limit_get_503_and_are_closed():
    rejects: list[str] = []
    FakeBase.connections = set()
    cls = bounded_protocol(FakeBase, 1, 10.0, 60.0, rejects.append)
    loop = FakeLoop()
    first, second = cls(loop), cls(loop)
    first.connection_made(FakeTransport())
    second.connection_made(FakeTransport())
    second.data_received(b"GET /health HTTP/1.1\r\n\r\n")
    assert second.transport.written.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in second.transport.written
    assert second.transport.closed and "data" not in second.events and rejects == ["connections"]
    first.data_received(b"GET /health HTTP/1.1\r\n\r\n")
    assert first.events == ["data"]
