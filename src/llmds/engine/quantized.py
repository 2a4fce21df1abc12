"""Load a GGUF model with its quantized weights kept as they are (``quantization="gguf"``).

Each linear weight whose format maps exactly onto torch's int4 kernel (Q4_0, Q4_1, Q4_K; see
:mod:`llmds.engine.models.quant`) becomes an :class:`~llmds.engine.models.quant.Int4Linear`;
the fused projections (q/k/v, gate/up) stack their GGUF tensors' rows, llama.cpp's q/k row
interleaving undone on the nibbles and scales alike.  A Q8_0 embedding table is looked up row by
row from the file's bytes (:class:`~llmds.engine.models.linear.Q8Embedding`).  Any other tensor
(Q8_0 or Q6_K output layer, Q5_*, ...) runs dequantized in the activation dtype, and the log
says which did.

Repacking takes about a second (the GGUF's metadata, the nibble shuffles), so the packed tensors
are written once beside the float model's cache entry (``quant-<dtype>-v1.safetensors``) and
later loads read only that file; config and tokenizer come from the same entry.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmds.engine.loader import LayerWeights, LoadedModel, ModelWeights, load_model, unpermute_rows
from llmds.engine.models.linear import Q8Embedding
from llmds.engine.models.quant import GROUP, INT4_MAX_ROWS, Int4Linear, gguf_int4
from llmds.errors import ValidationError

__all__ = ["load_for_engine", "load_quantized"]

log = logging.getLogger(__name__)

_VERSION = 2
_PARTS = {"qkv": ("attn_q", "attn_k", "attn_v"), "o": ("attn_output",), "gate_up": ("ffn_gate", "ffn_up"),
          "down": ("ffn_down",)}


def load_for_engine(model, dtype: torch.dtype, quantization: str | None) -> tuple[LoadedModel, dict | None]:
    """The engine's load: dequantized weights (``quantization=None``, :func:`load_model`), or the
    GGUF's 4-bit weights as they are (``"gguf"``) with the report of :func:`load_quantized`."""
    if quantization is None:
        return load_model(model), None
    return load_quantized(model, dtype, INT4_MAX_ROWS)


def load_quantized(model: str | os.PathLike | None, dtype: torch.dtype, max_rows: int) -> tuple[LoadedModel, dict]:
    """The model with its GGUF weights as they are, and a report ``{"int4": [...], "q8_0": [...],
    "dequantized": {name: format}}`` of what became what."""
    t0 = time.perf_counter()
    meta = load_model(model, weights=False)
    path = Path(meta.source)
    if path.suffix.lower() != ".gguf":
        raise ValidationError(f"quantization='gguf' needs a .gguf model, got {path}")
    scratch: dict = {}
    name = f"quant-{str(dtype).removeprefix('torch.')}-v{_VERSION}.safetensors"
    cached = meta.cache_entry / name if meta.cache_entry is not None else None
    if cached is not None and cached.is_file():
        try:
            flat, report = _load_flat(cached)
            weights = _from_flat(flat, meta.config.num_layers, dtype, max_rows, scratch)
            meta.weights, meta.load_seconds = weights, time.perf_counter() - t0
            _log_report(path, report, dtype)
            return meta, report
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry: rebuild it
            log.warning("quantized cache %s unreadable (%s); rebuilding", cached, exc)
    flat, report = _pack_gguf(path, meta.config, dtype)
    if cached is not None:
        _save_flat(flat, report, cached)
    weights = _from_flat(flat, meta.config.num_layers, dtype, max_rows, scratch)
    _log_report(path, report, dtype)
    meta.weights, meta.load_seconds, meta.from_cache = weights, time.perf_counter() - t0, False
    return meta, report


def _log_report(path: Path, report: dict, dtype: torch.dtype) -> None:
    log.info("%s: %d weights run int4, %d rows-from-Q8_0", path.name, len(report["int4"]), len(report["q8_0"]))
    if report["dequantized"]:
        log.info("%s: no exact int4 kernel for %s; these run dequantized in %s", path.name,
                 ", ".join(f"{k} ({v})" for k, v in report["dequantized"].items()), str(dtype).removeprefix("torch."))


# ------------------------------------------------------------------ GGUF -> flat tensors
def _pack_gguf(path: Path, config, dtype: torch.dtype) -> tuple[dict, dict]:
    """The flat tensors and the report, keyed by the engine's names (``"3.qkv"``, ``"embed"``, ...):
    ``{"int4": [...], "q8_0": [...], "dequantized": {name: "Q4_K/Q4_K/Q6_K"}}`` (the GGUF formats
    of the tensors a dequantized weight came from)."""
    from gguf import GGUFReader  # here: only a cache miss reads the GGUF itself
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    report: dict = {"int4": [], "q8_0": [], "dequantized": {}}
    flat: dict[str, torch.Tensor] = {}
    heads = {"attn_q": config.num_heads, "attn_k": config.num_kv_heads}

    def shape(t):
        return tuple(int(d) for d in reversed(t.shape))  # [rows, cols]

    def dense(gname):
        t = tensors[gname]
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).reshape(shape(t))
        part = gname.split(".")[-2]
        return unpermute_rows(w, heads[part]) if part in heads else w

    def linear(key, gnames):
        parts = []
        for g in gnames:
            t = tensors[g]
            n, k = shape(t)
            got = gguf_int4(np.asarray(t.data).reshape(-1), t.tensor_type.name, n, k)
            if got is None or n % 64:
                parts = None
                break
            part = g.split(".")[-2]
            parts.append(tuple(unpermute_rows(a, heads[part]) for a in got) if part in heads else got)
        if parts is None:  # one part has no exact int4 form: the whole projection runs dense
            report["dequantized"][key] = "/".join(tensors[g].tensor_type.name for g in gnames)
            flat[f"{key}.dense"] = torch.from_numpy(np.concatenate([dense(g) for g in gnames])).to(dtype)
            return
        q, scale, zero = (np.concatenate(a) for a in zip(*parts))
        lin = Int4Linear(q, scale, zero, dtype, 0, {})
        flat[f"{key}.packed"], flat[f"{key}.sz"] = lin.packed, lin.sz
        report["int4"].append(key)

    for i in range(config.num_layers):
        for ours, theirs in _PARTS.items():
            linear(f"{i}.{ours}", [f"blk.{i}.{p}.weight" for p in theirs])
        for norm in ("attn_norm", "ffn_norm"):
            flat[f"{i}.{norm}"] = torch.from_numpy(dense(f"blk.{i}.{norm}.weight").copy())
    flat["norm"] = torch.from_numpy(dense("output_norm.weight").copy())
    emb = tensors["token_embd.weight"]
    if emb.tensor_type.name == "Q8_0":
        n, k = shape(emb)
        blocks = np.asarray(emb.data).reshape(n, k // 32, 34)
        flat["embed.values"] = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8))
        flat["embed.scales"] = torch.from_numpy(np.ascontiguousarray(blocks[:, :, :2]).view(np.float16)[..., 0]
                                                .astype(np.float32))
        report["q8_0"].append("embed")
    else:
        report["dequantized"]["embed"] = emb.tensor_type.name
        flat["embed.dense"] = torch.from_numpy(dense(emb.name)).to(dtype)
    linear("lm_head", ["output.weight" if "output.weight" in tensors else emb.name])
    if "lm_head.dense" in flat and "embed.dense" in flat and "output.weight" not in tensors:
        del flat["lm_head.dense"]  # tied and both dense: one table serves both
    return flat, report


# ------------------------------------------------------------------ flat tensors -> weights
def _from_flat(flat: dict, num_layers: int, dtype: torch.dtype, max_rows: int, scratch: dict) -> ModelWeights:
    def linear(key):
        if f"{key}.packed" in flat:
            return Int4Linear.from_packed(flat[f"{key}.packed"], flat[f"{key}.sz"].to(dtype), max_rows, scratch)
        return flat[f"{key}.dense"]

    layers = [LayerWeights(attn_norm=flat[f"{i}.attn_norm"], qkv=linear(f"{i}.qkv"), o=linear(f"{i}.o"),
                           ffn_norm=flat[f"{i}.ffn_norm"], gate_up=linear(f"{i}.gate_up"), down=linear(f"{i}.down"))
              for i in range(num_layers)]
    if "embed.values" in flat:
        values, scales = flat["embed.values"].numpy(), flat["embed.scales"].numpy()
        embed = Q8Embedding(values.reshape(values.shape[0], -1, GROUP), scales, dtype)
    else:
        embed = flat["embed.dense"]
    lm_head = linear("lm_head") if ("lm_head.packed" in flat or "lm_head.dense" in flat) else flat["embed.dense"]
    return ModelWeights(embed=embed, layers=layers, norm=flat["norm"], lm_head=lm_head)


def _save_flat(flat: dict, report: dict, dest: Path) -> None:
    from safetensors.torch import save_file  # here, as in the loader

    try:
        fd, tmp = tempfile.mkstemp(prefix=dest.name, dir=dest.parent)
        os.close(fd)
        save_file({k: v.contiguous() for k, v in flat.items()}, tmp, metadata={"report": json.dumps(report)})
        os.replace(tmp, dest)
    except OSError as exc:  # a read-only cache: serve without it
        log.warning("could not write the quantized cache %s (%s)", dest, exc)


def _load_flat(src: Path) -> tuple[dict, dict]:
    from safetensors import safe_open  # here, as in the loader

    with safe_open(str(src), framework="pt") as f:
        report = json.loads((f.metadata() or {})["report"])
        return {k: f.get_tensor(k) for k in f.keys()}, report
