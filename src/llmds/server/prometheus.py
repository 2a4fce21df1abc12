"""``/metrics``: the engine's own counters, gauges and histograms in Prometheus text, with
vLLM's metric names under the ``llmds:`` prefix, plus what only the server sees.

A custom collector reads :class:`~llmds.engine.metrics.EngineMetrics` at scrape time
(histograms through their locked ``snapshot()``) and the server's
:class:`~llmds.server.metrics.ServerMetrics` (retrieval latency in the same
:class:`~llmds.engine.metrics.Histogram` type, requests in flight) and admission gate
(rejections, waiting requests).  The registry also carries prometheus-client's process
collector (``process_resident_memory_bytes``, ...).
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from llmds.engine.metrics import Histogram

__all__ = ["make_registry"]


# (name, documentation, attribute of EngineMetrics)
_COUNTERS = (
    ("prompt_tokens", "Prompt tokens computed (prefill, recomputation included)", "prompt_tokens"),
    ("generation_tokens", "Tokens generated", "generation_tokens"),
    ("num_preemptions", "Requests preempted (KV blocks ran out; recomputed later)", "num_preemptions"),
    ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache", "prefix_cache_queries"),
    ("prefix_cache_hits", "Prompt tokens found in the prefix cache", "prefix_cache_hits"),
    ("engine_step_seconds", "Seconds spent in engine steps", "step_seconds"),
    ("engine_forward_seconds", "Seconds spent in the model's forward passes", "forward_seconds"),
)
_GAUGES = (
    ("num_requests_running", "Requests in the running batch", "num_requests_running"),
    ("num_requests_waiting", "Requests waiting in the engine's queue", "num_requests_waiting"),
    ("kv_cache_usage_perc", "Fraction of KV blocks in use (0..1)", "kv_cache_usage_perc"),
    ("num_pinned_blocks", "KV blocks pinned for hot prefixes", "num_pinned_blocks"),
)
_HISTOGRAMS = {
    "time_to_first_token_seconds": "Time to first token (arrival to first token)",
    "inter_token_latency_seconds": "Time between consecutive tokens of a request",
    "e2e_request_latency_seconds": "Arrival to finish",
    "request_queue_time_seconds": "Arrival to first scheduled",
}


def engine_families(engine) -> list:
    """One engine's metric families (a replica's, labelled by the caller with ``replica``)."""
    m = engine.metrics
    out = [CounterMetricFamily(f"llmds:{name}", doc, value=getattr(m, attr)) for name, doc, attr in _COUNTERS]
    out += [GaugeMetricFamily(f"llmds:{name}", doc, value=getattr(m, attr)) for name, doc, attr in _GAUGES]
    out += [_histogram(f"llmds:{h.name}", _HISTOGRAMS[h.name], h) for h in m.histograms()]
    done = CounterMetricFamily("llmds:request_success", "Finished requests by finish reason",
                               labels=["finished_reason"])
    for reason, n in sorted(dict(m.requests_finished).items()):
        done.add_metric([reason], n)
    bm = engine.block_manager
    out += [done, GaugeMetricFamily("llmds:kv_cache_free_blocks", "Free KV blocks (cached ones included)",
                                    value=bm.num_free_blocks),
            GaugeMetricFamily("llmds:kv_cache_num_blocks", "KV blocks in the pool", value=engine.num_blocks)]
    return out


class _Collector:
    """The server's series at scrape time; the engine's were fetched by the route just before
    (``engine_families``: one engine in process, or every replica's)."""

    def __init__(self, state) -> None:
        self.state = state
        self.engine_families: list = []

    def collect(self) -> Iterator:
        st = self.state
        yield from self.engine_families
        gate = st.gate
        rej = CounterMetricFamily("llmds:admission_rejections", "Requests refused at the front door",
                                  labels=["reason"])
        for reason, n in gate.rejections.items():
            rej.add_metric([reason], n)
        yield rej
        yield GaugeMetricFamily("llmds:admission_waiting_requests", "Admitted requests without a first token",
                                value=gate.waiting_requests)
        yield GaugeMetricFamily("llmds:admission_waiting_tokens", "Prompt tokens of those requests",
                                value=gate.waiting_tokens)
        yield GaugeMetricFamily("llmds:requests_in_flight", "Admitted requests not yet finished",
                                value=st.metrics.in_flight)
        yield _histogram("llmds:retrieval_latency_seconds", "Hybrid search latency (embedding included)",
                         st.metrics.retrieval_latency_seconds)
        rag = st.rag
        yield GaugeMetricFamily("llmds:retrieval_chunks", "Chunks in the retrieval index",
                                value=len(rag) if rag is not None else 0)
        yield GaugeMetricFamily(
            "llmds:retrieval_hot_documents",
            f"Chunks retrieved at least {st.config.hot_threshold} times (Count-Min estimate)",
            value=len(rag.hot_chunks(st.config.hot_threshold)) if rag is not None else 0)


def _histogram(name: str, doc: str, h: Histogram):
    snap = h.snapshot()
    buckets = [(_le(b), c) for b, c in zip(snap.buckets, snap.cumulative)]
    buckets.append(("+Inf", snap.cumulative[-1]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=snap.sum)


def _le(bound: float) -> str:
    return repr(float(bound))


def make_registry(state) -> _Collector:
    """The llmds collector, in a registry (``.registry``) with the process collector (RSS, CPU,
    open files); set its ``engine_families`` before each scrape."""
    reg = CollectorRegistry(auto_describe=False)
    col = _Collector(state)
    reg.register(col)
    ProcessCollector(registry=reg)
    col.registry = reg
    return col


def label_families(by_replica: dict[str, list]) -> list:
    """Several engines' families merged by name, each sample labelled ``replica``."""
    from prometheus_client import Metric

    merged: dict[str, Metric] = {}
    for replica, families in sorted(by_replica.items()):
        for fam in families:
            out = merged.get(fam.name)
            if out is None:
                out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            out.samples += [s._replace(labels={"replica": replica, **s.labels}) for s in fam.samples]
    return list(merged.values())
