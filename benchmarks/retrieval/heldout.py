"""Held-out collections for the fusion benchmark: made at run time, seeded, never tuned on.

The fusion default is chosen without any collection's judgments; these
collections check that what holds on the three shared ones holds elsewhere.
Each is a :class:`Collection` (texts, vectors, judgments), derived from the shared
MS MARCO subset (:func:`derived`) or drawn from scratch:

* ``msmarco-randq`` / ``msmarco-shufq``: MS MARCO with random query vectors /
  each query with the next query's vector (a query embedded by another model; a
  dense side that is confidently wrong).
* ``msmarco-typo``: half of each query's words of 4+ letters misspelt (one swap,
  drop or substitution of a letter, seeded), the queries embedded again: BM25
  loses those terms, the embedder mostly reads through them.
* ``msmarco-cipher`` ("a language the embedder never saw"): a sample of 2,000
  passages with every word replaced by a made-up word of random
  Latin syllables (one per word, seeded), embedded again with all-MiniLM-L6-v2.
  BM25 ranks as on the plain passages (the mapping is one to one); the embedder
  sees nonsense word pieces, which still match between a query and its passage
  (unlike arcd's Arabic script).
* ``msmarco-mixed``: the same passages with half the queries (and their judged
  passages plus half the others) ciphered: whether the dense side is useful
  changes from query to query within one index.
* :func:`scattered`: drawn documents without topics (adversarial: two informative
  sides hardly agree beyond the target, so a noisy side looks like a weak one),
  ``both`` / ``dense-noise`` / ``lexical-noise``.
* :func:`topical`: drawn documents with topics, ``both`` / ``dense-blind`` (an
  embedder that cannot read the texts) / ``dense-random`` (random query vectors) /
  ``lexical-noise`` (queries of background words).

The ciphered and misspelt sets need the ``embed`` extra (MiniLM runs for a minute
or two on two cores); without it they are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["Collection", "cipher", "derived", "misspell", "qrels_by_index", "scattered", "topical"]

_WORD = re.compile(r"\w+")
_SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]


@dataclass
class Collection:
    """A retrieval test collection: doc ``i`` is ``texts[i]`` / ``X[i]``; query ``j`` is
    ``queries[j]`` / ``Q[j]``; ``qrels[j]`` maps doc index -> grade (> 0 relevant)."""

    name: str
    texts: list[str]
    X: np.ndarray
    queries: list[str]
    Q: np.ndarray
    qrels: list[dict[int, int]]
    note: str = ""


def cipher(texts: list[str], seed: int) -> dict[str, str]:
    """One made-up word per distinct lowercased word of ``texts`` (injective, seeded)."""
    rng = np.random.default_rng(seed)
    vocab = sorted({w.lower() for t in texts for w in _WORD.findall(t)})
    out: dict[str, str] = {}
    used: set[str] = set()
    for w in vocab:
        n = max(1, min(4, (len(w) + 1) // 3))
        while True:
            made = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), n))
            if made not in used:
                break
            n += 1
        used.add(made)
        out[w] = made
    return out


def _apply(text: str, table: dict[str, str]) -> str:
    return _WORD.sub(lambda m: table[m.group(0).lower()], text)


def misspell(query: str, rng: np.random.Generator, share: float = 0.5) -> str:
    """``query`` with ``share`` of its words of 4+ letters changed by one letter edit."""
    def edit(m: re.Match) -> str:
        w = m.group(0)
        if len(w) < 4 or not w.isalpha() or rng.random() >= share:
            return w
        i = int(rng.integers(1, len(w) - 1))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        if kind == 1:
            return w[:i] + w[i + 1:]
        return w[:i] + "qxzjkvw"[int(rng.integers(0, 7))] + w[i + 1:]
    return _WORD.sub(edit, query)


def qrels_by_index(doc_ids, qids, qrels) -> tuple[list[int], list[dict[int, int]]]:
    pos = {d: i for i, d in enumerate(doc_ids)}
    keep, out = [], []
    for j, q in enumerate(qids):
        rel = {pos[d]: g for d, g in qrels.get(q, {}).items() if d in pos and g > 0}
        if rel:
            keep.append(j)
            out.append(rel)
    return keep, out


def derived(ir, embed, seed: int = 0, n_sub: int = 2000) -> list[Collection]:
    """The MS MARCO variants: ``embed(list[str]) -> [n, 384]`` is all-MiniLM-L6-v2 (None:
    only those that need no embedding).  The ciphered ones use a seeded sample of ``n_sub``
    passages (and the queries with a judged passage among them): embedding them takes two
    minutes or so."""
    doc_ids, texts, qids, qtexts, qrels = ir.load_collection("msmarco")
    X, Q = ir.load_embeddings("msmarco")
    keep, rels = qrels_by_index(doc_ids, qids, qrels)
    queries, Q = [qtexts[j] for j in keep], Q[keep]
    rng = np.random.default_rng(seed)
    out = [
        Collection("msmarco-randq", list(texts), X, queries,
                   _unit(rng.standard_normal(Q.shape)).astype(np.float32), rels,
                   "MS MARCO with random query vectors"),
        Collection("msmarco-shufq", list(texts), X, queries, np.roll(Q, 1, axis=0), rels,
                   "MS MARCO, each query with the next query's vector"),
    ]
    if embed is None:
        return out
    typo = [misspell(q, rng) for q in queries]
    out.append(Collection("msmarco-typo", list(texts), X, typo, embed(typo), rels,
                          "MS MARCO, half the query words misspelt"))
    sub = np.sort(rng.choice(len(texts), min(n_sub, len(texts)), replace=False))
    pos = {int(d): i for i, d in enumerate(sub)}
    rels = [{pos[d]: g for d, g in r.items() if d in pos} for r in rels]
    asked = [j for j, r in enumerate(rels) if r]  # queries with a judged passage left
    rels, queries, Q = [rels[j] for j in asked], [queries[j] for j in asked], Q[asked]
    texts = [texts[d] for d in sub]
    X = X[sub]
    table = cipher(texts + queries, seed)
    c_texts = [_apply(t, table) for t in texts]
    c_queries = [_apply(q, table) for q in queries]
    Xc, Qc = embed(c_texts), embed(c_queries)
    out.append(Collection("msmarco-cipher", c_texts, Xc, c_queries, Qc, rels,
                          f"{n_sub} MS MARCO passages in made-up words, embedded again"))
    # mixed: half the queries ciphered, with their judged passages and half the others
    half = set(rng.permutation(len(queries))[: len(queries) // 2].tolist())
    plain = {d for j, r in enumerate(rels) if j not in half for d in r}
    coded = {d for j in half for d in rels[j]} - plain
    others = [d for d in range(len(texts)) if d not in plain and d not in coded]
    coded |= set(rng.permutation(others)[: len(others) // 2].tolist())
    idx = sorted(coded)
    Xm, Qm = X.copy(), Q.copy()
    Xm[idx] = Xc[idx]
    Qm[sorted(half)] = Qc[sorted(half)]
    out.append(Collection(
        "msmarco-mixed", [c_texts[i] if i in coded else t for i, t in enumerate(texts)], Xm,
        [c_queries[j] if j in half else q for j, q in enumerate(queries)], Qm, rels,
        f"{n_sub} MS MARCO passages, half the queries and their passages in made-up words"))
    return out


def scattered(kind: str, n_docs: int = 2000, n_queries: int = 100, dim: int = 64,
              seed: int = 0) -> Collection:
    """A drawn collection without topics; ``kind`` in {"both", "dense-noise", "lexical-noise"}.

    Vocabulary: 2,000 content words drawn Zipf(1.0) and 100 background words.  A
    document holds 10 content words and 20-60 background words; its vector is a
    random unit vector.  A query for document ``d`` holds 3 of ``d``'s content
    words, each replaced by a random content word with probability 0.4, and the
    vector ``normalize(v_d + 2.5 * g / sqrt(dim))`` (``g`` standard normal).
    Judged: ``d``.  "dense-noise": random query vectors; "lexical-noise": the
    query words are background words.  Adversarial: nothing but the target ties a
    query to a document, so two informative sides hardly agree beyond it, and a
    noisy side looks like a weak one.
    """
    rng = np.random.default_rng(seed)
    n_content, n_bg = 2000, 100
    pc = _zipf(n_content)
    pb = _zipf(n_bg)
    words = rng.choice(n_content, (n_docs, 10), p=pc)
    texts = []
    for i in range(n_docs):
        toks = [f"c{w}" for w in words[i]]
        toks += [f"b{b}" for b in rng.choice(n_bg, int(rng.integers(20, 61)), p=pb)]
        texts.append(" ".join(rng.permutation(toks).tolist()))
    V = _unit(rng.standard_normal((n_docs, dim)))
    targets = rng.choice(n_docs, n_queries, replace=False)
    queries, Q = [], np.zeros((n_queries, dim))
    for j, d in enumerate(targets):
        if kind == "lexical-noise":
            q = [f"b{b}" for b in rng.choice(n_bg, 3, p=pb)]
        else:
            q = [f"c{w}" if rng.random() >= 0.4 else f"c{rng.choice(n_content, p=pc)}"
                 for w in rng.choice(words[d], 3, replace=False)]
        queries.append(" ".join(q))
        g = rng.standard_normal(dim)
        Q[j] = g if kind == "dense-noise" else V[d] + 2.5 * g / np.sqrt(dim)
    return Collection(f"scattered-{kind}", texts, V.astype(np.float32), queries,
                      _unit(Q).astype(np.float32), [{int(d): 1} for d in targets],
                      f"drawn without topics: {n_docs} documents, {n_queries} queries")


def topical(kind: str, n_docs: int = 2000, n_queries: int = 100, dim: int = 64,
            n_topics: int = 40, seed: int = 0) -> Collection:
    """A drawn collection with topics; ``kind`` in {"both", "dense-blind", "dense-random",
    "lexical-noise"}.

    Each topic has 100 words (Zipf) and a unit centroid ``t``; there are 60
    background words.  A document of topic ``k`` holds 8 words of ``k``, 4 random
    words of any topic and 15-40 background words; its vector is
    ``normalize(t_k + 0.9 e_d)`` (``e_d`` a random unit vector).  A query for
    document ``d`` holds 3 of ``d``'s topic words, each replaced by another word of
    the topic with probability 0.3, and the vector ``normalize(t_k + 0.9 e_d + 2.2 g /
    sqrt(dim))``.  Judged: ``d``.  Noise: "dense-blind" (an embedder that cannot
    read the texts: every vector, document or query, is one common direction plus
    a small random part), "dense-random" (query vectors random: a query embedded by
    another model), "lexical-noise" (queries of background words only).
    """
    rng = np.random.default_rng(seed)
    per, n_bg = 100, 60
    T = _unit(rng.standard_normal((n_topics, dim)))
    topic = rng.integers(0, n_topics, n_docs)
    pz, pb = _zipf(per), _zipf(n_bg)
    own = topic[:, None] * per + rng.choice(per, (n_docs, 8), p=pz)
    texts = []
    for i in range(n_docs):
        toks = [f"w{w}" for w in own[i]] + [f"w{w}" for w in rng.integers(0, n_topics * per, 4)]
        toks += [f"s{b}" for b in rng.choice(n_bg, int(rng.integers(15, 41)), p=pb)]
        texts.append(" ".join(rng.permutation(toks).tolist()))
    E = _unit(rng.standard_normal((n_docs, dim)))
    V = _unit(T[topic] + 0.9 * E)
    c = _unit(rng.standard_normal(dim))
    if kind == "dense-blind":
        V = _unit(c + 0.25 * rng.standard_normal((n_docs, dim)) / np.sqrt(dim))
    targets = rng.choice(n_docs, n_queries, replace=False)
    queries, Q = [], np.zeros((n_queries, dim))
    for j, d in enumerate(targets):
        if kind == "lexical-noise":
            q = [f"s{b}" for b in rng.choice(n_bg, 3, p=pb)]
        else:
            q = [f"w{w}" if rng.random() >= 0.3 else f"w{topic[d] * per + rng.choice(per, p=pz)}"
                 for w in rng.choice(own[d], 3, replace=False)]
        queries.append(" ".join(q))
        g = rng.standard_normal(dim)
        if kind == "dense-blind":
            Q[j] = c + 0.25 * g / np.sqrt(dim)
        elif kind == "dense-random":
            Q[j] = g
        else:
            Q[j] = T[topic[d]] + 0.9 * E[d] + 2.2 * g / np.sqrt(dim)
    return Collection(f"topical-{kind}", texts, V.astype(np.float32), queries,
                      _unit(Q).astype(np.float32), [{int(d): 1} for d in targets],
                      f"drawn with {n_topics} topics: {n_docs} documents, {n_queries} queries")


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
