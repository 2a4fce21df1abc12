"""The built-in cb_lab plugins: logging, metrics, KV cache compression, attention heat maps."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from cb_lab.exceptions import ValidationError
from llmds._checks import check_float, check_int
from cb_lab.monitoring.metrics import MetricsCollector
from cb_lab.plugins.base import AttentionPlugin, AttentionRecord, CachePlugin, SchedulerPlugin

__all__ = ["LoggingPlugin", "MetricsPlugin", "CacheCompressionPlugin", "AttentionVisualizationPlugin"]

class LoggingPlugin(SchedulerPlugin):
    """Logs scheduler events through :mod:`logging` (logger ``cb_lab.scheduler``).

    Parameters
    ----------
    log_level : str
        Level of the messages: ``"DEBUG"``, ``"INFO"``, ``"WARNING"``, ...
    """

    def __init__(self, log_level: str = "INFO", logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("cb_lab.scheduler")
        self.log_level = log_level

    @property
    def log_level(self) -> str:
        return self._level_name

    @log_level.setter
    def log_level(self, name: str) -> None:
        level = logging.getLevelName(name.upper()) if isinstance(name, str) else None
        if not isinstance(level, int):
            raise ValidationError(
                f"log_level must be a logging level name like 'INFO', got {name!r}"
            )
        self._level_name, self._level = name.upper(), level

    def before_step(self, scheduler) -> None:
        self.logger.log(
            self._level, "step %d: %d active requests", scheduler.step_id, len(scheduler.active)
        )

    def after_step(self, scheduler, s: dict[str, Any]) -> None:
        self.logger.log(
            self._level,
            "step %d %s: decode=%d prefill=%d active=%d finished=%s (%.6fs)",
            s["step_id"],
            s["status"],
            s["decode_tokens"],
            s["prefill_tokens"],
            s["active_requests"],
            list(s["finished_request_ids"]),
            s["step_duration"],
        )

    def on_request_added(self, scheduler, request) -> None:
        self.logger.log(
            self._level,
            "request %r added: prompt=%d max_new_tokens=%d",
            request.req_id,
            request.num_prompt_tokens,
            request.max_new_tokens,
        )

    def on_request_finished(self, scheduler, request) -> None:
        self.logger.log(
            self._level,
            "request %r finished (%s): %d tokens generated",
            request.req_id,
            request.status.name,
            len(request.generated_tokens),
        )


class MetricsPlugin(SchedulerPlugin):
    """Feeds a :class:`~cb_lab.monitoring.metrics.MetricsCollector` from the scheduler hooks.

    Every added request is tracked (expected tokens = prompt + max_new_tokens);
    every step is recorded with ``record_step(**stats)``, which marks finished
    requests completed; aborted requests are finished as ``"aborted"``.
    """

    def __init__(self, collector: MetricsCollector | None = None) -> None:
        self.collector = (
            collector if collector is not None else MetricsCollector(enable_memory_profiling=False)
        )

    def on_request_added(self, scheduler, request) -> None:
        self.collector.start_request_tracking(
            request.req_id, request.num_prompt_tokens + request.max_new_tokens
        )

    def on_request_finished(self, scheduler, request) -> None:
        self.collector.update_request_progress(
            request.req_id,
            prefill_tokens=request.num_prompt_tokens,
            decode_tokens=request.num_output_tokens,
            status=request.status.name.lower(),
        )
        if request.status.name == "FINISHED_ABORTED":
            self.collector.finish_request(request.req_id, "aborted")

    def after_step(self, scheduler, step_stats: dict[str, Any]) -> None:
        self.collector.record_step(**step_stats)

    def get_performance_summary(self) -> dict[str, Any]:
        return self.collector.get_step_summary()


class CacheCompressionPlugin(CachePlugin):
    """Shrinks each KV cache to ``compression_ratio`` of the tokens it has seen.

    StreamingLLM-style: after an append, a cache that has received ``n`` rows
    in total keeps at most ``target = max(min_tokens, ceil(ratio * n))`` rows:
    the first ``num_sink_tokens`` (attention sinks) and the most recent
    ``target - num_sink_tokens``.  Ratio 1.0 never drops anything.

    Parameters
    ----------
    compression_ratio : float
        Fraction of seen tokens kept, in (0, 1].
    num_sink_tokens : int
        Leading tokens always kept.
    min_tokens : int
        Never compress below this many rows.
    """

    def __init__(
        self, compression_ratio: float = 0.5, num_sink_tokens: int = 2, min_tokens: int = 4
    ) -> None:
        compression_ratio = check_float("compression_ratio", compression_ratio, 0.0, 1.0, low_open=True)
        num_sink_tokens = check_int("num_sink_tokens", num_sink_tokens, 0)
        min_tokens = check_int("min_tokens", min_tokens, 0)
        self.compression_ratio = float(compression_ratio)
        self.num_sink_tokens = num_sink_tokens
        self.min_tokens = max(1, min_tokens)
        self.compressions = 0
        self.tokens_dropped = 0
        self.tokens_appended = 0

    def after_append(self, cache, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        self.tokens_appended += k_new.size(0)
        n, seen = len(cache), cache.num_appended
        target = max(self.min_tokens, math.ceil(self.compression_ratio * seen - 1e-9))
        if n <= target:
            return
        sink = min(self.num_sink_tokens, target)
        keep = torch.cat((torch.arange(sink), torch.arange(n - (target - sink), n)))
        cache.retain(keep)
        self.compressions += 1
        self.tokens_dropped += n - target

    def get_compression_stats(self) -> dict[str, Any]:
        seen = self.tokens_appended
        return {
            "compression_ratio": self.compression_ratio,
            "compressions": self.compressions,
            "tokens_appended": seen,
            "tokens_dropped": self.tokens_dropped,
            "space_saved_percent": 100.0 * self.tokens_dropped / seen if seen else 0.0,
        }


class AttentionVisualizationPlugin(AttentionPlugin):
    """Writes each forward pass's attention (mean over heads) as a PNG heat map.

    Columns are regrouped by request (cached keys first), so a ragged batch
    shows as causal blocks on the diagonal and zeros across requests.  Files
    are ``<save_dir>/step_<step_id>.png``; matplotlib (Agg, no pyplot) is
    imported on the first image.
    """

    def __init__(
        self, save_dir: str = "attention_viz", every_n_steps: int = 1, max_images: int | None = None
    ) -> None:
        self.save_dir = os.fspath(save_dir)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.max_images = None if max_images is None else check_int("max_images", max_images, 0)
        self.saved_files: list[str] = []
        self.attention_patterns: list[dict[str, Any]] = []

    def on_attention(self, scheduler, record: AttentionRecord) -> None:
        w = record.weights.float().mean(0)  # [N, M]
        self.attention_patterns.append(
            {
                "step_id": record.step_id,
                "shape": tuple(w.shape),
                "sparsity": float((w == 0).float().mean()),
                "max_attention": float(w.max()),
            }
        )
        if record.step_id % self.every_n_steps or (
            self.max_images is not None and len(self.saved_files) >= self.max_images
        ):
            return
        # order columns by (request, position): cached keys (-1) then the new ones
        order = torch.argsort(record.k_seq * (1 << 32) + (record.k_pos + 1), stable=True)
        self.saved_files.append(self._save(w[:, order].cpu().numpy(), record))

    def _save(self, w, record: AttentionRecord) -> str:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        os.makedirs(self.save_dir, exist_ok=True)
        fig = Figure(figsize=(max(3.0, 0.25 * w.shape[1] + 1.5), max(2.5, 0.25 * w.shape[0] + 1.0)))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        im = ax.imshow(
            w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
        )
        fig.colorbar(im, ax=ax)
        ax.set_title(f"step {record.step_id}: {', '.join(map(str, record.req_ids))}", fontsize=8)
        ax.set_xlabel("keys (by request: cached, then new)")
        ax.set_ylabel("query tokens")
        path = os.path.join(self.save_dir, f"step_{record.step_id:05d}.png")
        fig.savefig(path, dpi=80)
        return path

    def get_attention_statistics(self) -> dict[str, Any]:
        pats = self.attention_patterns
        if not pats:
            return {}
        return {
            "total_computations": len(pats),
            "images_saved": len(self.saved_files),
            "average_sparsity": sum(p["sparsity"] for p in pats) / len(pats),
            "average_max_attention": sum(p["max_attention"] for p in pats) / len(pats),
        }
