"""IR collections and metrics shared by the retrieval benchmarks (and the embedding test).

Data: the BEIR-layout collections under ``<data>/ir/`` (``msmarco``,
``business-reports``, ``arcd``; see ``shared/data/README.md``), read in place, where
``<data>`` is ``$LLMDS_DATA_DIR`` if set, else ``../shared/data`` next to the
repository root (:func:`data_dir`).  Metrics follow the TREC / BEIR
(pytrec_eval) conventions:

* nDCG@k: gain = the graded relevance itself (linear gain, as pytrec_eval and
  BEIR), discount ``1 / log2(rank + 1)`` with rank starting at 1, ideal DCG
  from the query's qrels sorted by grade.
* Recall@k: relevant = grade > 0; (# relevant in top k) / (# relevant).
* :func:`evaluate` averages over the queries that have at least one relevant
  document in the qrels (43 of the 50 MS MARCO queries here); queries without
  judgments have an undefined ideal DCG and are skipped, as pytrec_eval does.
  A judged query missing from the run counts as 0.  Judgments of queries that
  ``queries.jsonl`` does not hold are dropped on loading (arcd's qrels judge
  702 questions, its query file holds 50 of them).

Importing this module has no side effects; data is read on first call and cached.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

__all__ = [
    "COLLECTIONS",
    "DATA_DIR",
    "MSMARCO_DIR",
    "collection_dir",
    "data_dir",
    "evaluate",
    "load_collection",
    "load_embeddings",
    "load_msmarco",
    "load_msmarco_embeddings",
    "MissingData",
    "ndcg_at_k",
    "require",
    "skip_without_data",
    "recall_at_k",
]

COLLECTIONS = ("msmarco", "business-reports", "arcd")
DATA_ENV = "LLMDS_DATA_DIR"


def data_dir() -> Path:
    """``$LLMDS_DATA_DIR`` if set, else ``../shared/data`` beside the repository root.

    The path need not exist (callers that read from it raise ``FileNotFoundError``,
    :func:`collection_dir` with a message naming the variable).
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


class MissingData(FileNotFoundError):
    """An IR collection is not where the benchmarks look: the parts that need it are skipped."""


def require(d: Path, name: str | None = None) -> Path:
    """``d`` if it holds a collection (``corpus.jsonl``), else :class:`MissingData` saying where it looked."""
    if not (d / "corpus.jsonl").exists():
        raise MissingData(
            f"IR collection {name or d.name!r} not found at {d}: set {DATA_ENV} to the folder holding "
            "ir/<collection>/ (default ../shared/data beside the repository; see docs/benchmarks.md#data)")
    return d


def skip_without_data(fn, *args, **kwargs) -> dict:
    """``fn(*args, **kwargs)``, or ``{"skipped": why}`` when its collection is missing."""
    try:
        return fn(*args, **kwargs)
    except MissingData as exc:
        return {"skipped": str(exc)}


def collection_dir(name: str) -> Path:
    """``<data>/ir/<name>``; :class:`MissingData` saying where it looked when it is missing."""
    return require(data_dir() / "ir" / name, name)


DATA_DIR = data_dir()
MSMARCO_DIR = DATA_DIR / "ir" / "msmarco"

Qrels = dict[str, dict[str, int]]


@lru_cache(maxsize=1)
def _load(
    root: str,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], str]:
    base = Path(root)
    doc_ids: list[str] = []
    texts: list[str] = []
    with open(base / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            doc_ids.append(str(obj["_id"]))
            title = obj.get("title") or ""
            texts.append(f"{title} {obj.get('text') or ''}")  # README: index title + " " + text
    query_ids: list[str] = []
    query_texts: list[str] = []
    with open(base / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            query_ids.append(str(obj["_id"]))
            query_texts.append(obj["text"])
    asked = set(query_ids)  # judgments of queries not in queries.jsonl are dropped
    qrels: Qrels = {}
    with open(base / "qrels" / "test.tsv", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0] in ("query-id", "query_id"):
                continue  # tolerate a header line
            if parts[0] in asked:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return tuple(doc_ids), tuple(texts), tuple(query_ids), tuple(query_texts), json.dumps(qrels)


def load_msmarco(
    root: str | os.PathLike | None = None,
) -> tuple[list[str], list[str], list[str], list[str], Qrels]:
    """Load the MS MARCO subset.

    Returns
    -------
    doc_ids : list[str]
        Corpus ids in file order (row i of ``corpus.minilm.npy``).
    texts : list[str]
        ``title + " " + text`` per document.
    query_ids, query_texts : list[str]
        Queries in file order (row i of ``queries.minilm.npy``).
    qrels : dict[qid, dict[docid, grade]]
        Graded judgments (a fresh copy each call; mutate freely).
    """
    d, t, qi, qt, qr = _load(str(require(Path(root or MSMARCO_DIR))))
    return list(d), list(t), list(qi), list(qt), json.loads(qr)


def load_msmarco_embeddings(root: str | os.PathLike | None = None):
    """``(corpus [5000, 384] float32, queries [50, 384] float32)``, L2-normalised rows."""
    import numpy as np

    base = require(Path(root or MSMARCO_DIR))
    return np.load(base / "corpus.minilm.npy"), np.load(base / "queries.minilm.npy")


def load_collection(name: str) -> tuple[list[str], list[str], list[str], list[str], Qrels]:
    """:func:`load_msmarco` for any collection of :data:`COLLECTIONS` (by name)."""
    return load_msmarco(collection_dir(name))


def load_embeddings(name: str):
    """Precomputed all-MiniLM-L6-v2 rows ``(corpus, queries)`` of a collection."""
    return load_msmarco_embeddings(collection_dir(name))


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g)


def ndcg_at_k(
    ranked_doc_ids: Sequence[str], qrel_for_query: Mapping[str, int], k: int = 10
) -> float:
    """nDCG@k of one ranking (linear graded gain, log2 discount).

    Duplicated doc ids in the ranking count once (the first occurrence).
    Returns 0.0 when the query has no relevant document.
    """
    ideal = sorted((g for g in qrel_for_query.values() if g > 0), reverse=True)[:k]
    idcg = _dcg(ideal)
    if idcg <= 0:
        return 0.0
    seen: set[str] = set()
    gains = []
    for d in ranked_doc_ids:
        if len(gains) == k:
            break
        if d in seen:
            continue
        seen.add(d)
        g = qrel_for_query.get(d, 0)
        gains.append(max(0, g))
    return _dcg(gains) / idcg


def recall_at_k(
    ranked_doc_ids: Sequence[str], qrel_for_query: Mapping[str, int], k: int = 100
) -> float:
    """Fraction of the relevant (grade > 0) documents found in the top k; 0.0 if none exist."""
    relevant = {d for d, g in qrel_for_query.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked_doc_ids[:k])) / len(relevant)


def evaluate(
    run: Mapping[str, Sequence[str]],
    qrels: Qrels | None = None,
    k_ndcg: int = 10,
    k_recall: int = 100,
) -> dict[str, float]:
    """Mean nDCG@k_ndcg and Recall@k_recall of ``run`` ({qid: ranked doc ids, best first}).

    Averages over the queries of ``qrels`` (default: the MS MARCO qrels) that have
    a relevant document; a judged query absent from ``run`` scores 0.

    Returns
    -------
    dict
        ``{"ndcg@10": float, "recall@100": float, "num_queries": int}`` (keys follow k).
    """
    if qrels is None:
        qrels = load_msmarco()[4]
    judged = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    if not judged:
        raise ValueError("qrels hold no relevant document; nothing to evaluate")
    nd = sum(ndcg_at_k(list(run.get(q, ())), qrels[q], k_ndcg) for q in judged) / len(judged)
    rc = sum(recall_at_k(list(run.get(q, ())), qrels[q], k_recall) for q in judged) / len(judged)
    return {f"ndcg@{k_ndcg}": nd, f"recall@{k_recall}": rc, "num_queries": len(judged)}
