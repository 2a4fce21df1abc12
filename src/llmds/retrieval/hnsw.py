"""HNSW approximate nearest-neighbour index (Malkov & Yashunin, 2018).

The graph lives in flat preallocated numpy arrays (:mod:`llmds.retrieval._hnsw_graph`,
layout in :mod:`llmds.retrieval._hnsw_kernels`); insertion and search run in numba
kernels, one kernel call per ``add_items`` batch and per query.  Python only validates,
maps user ids (any int64) to internal node indices and converts results.

Deletion is a tombstone plus a repair: ``mark_deleted`` hides the id from
results and reconnects its neighbours around it (``HNSWGraph.delete``); the
node's slot is reused by a later add (lowest free slot first, so a seeded
index stays deterministic), so memory does not grow under replacement.

Not thread-safe: searches share one epoch-stamped visited array.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds._checks import check_float, check_int
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.retrieval import _hnsw_kernels as _k
from llmds.retrieval._binfmt import read_checked, write_atomic
from llmds.retrieval._hnsw_graph import HNSWGraph
from llmds.retrieval._hnsw_kernels import SEARCH_ONE, bind_search_one

__all__ = ["HNSW", "HNSWConfig"]

_METRICS = {"l2": _k.METRIC_L2, "ip": _k.METRIC_IP, "cosine": _k.METRIC_COSINE}
_MAGIC = b"LLMDSHNSW"
_VERSION = 1
_OUT_DTYPE = np.dtype([("id", np.int64), ("d", np.float32)], align=True)  # 16-byte records
_EF_CAP = 1 << 40  # larger ef is clamped (the kernels clamp it to the capacity anyway)

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class HNSWConfig:
    """Construction parameters, validated once.

    ``M`` links per node on layers >= 1 and ``2*M`` on layer 0 (M >= 2);
    ``ef_construction`` >= 1 candidates while inserting; ``ef_search`` >= 1
    default candidates while searching; ``ml`` >= 0 level multiplier
    (``None`` means ``1/ln(M)``); ``metric`` one of ``l2``, ``ip``, ``cosine``;
    ``max_elements`` >= 1 initial capacity (grows by doubling).
    """

    dim: int
    M: int = 16
    ef_construction: int = 200
    ef_search: int = 50
    ml: float | None = None
    seed: int | None = None
    metric: str = "l2"
    max_elements: int = 1024

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1)
        check_int("M", self.M, 2)
        check_int("ef_construction", self.ef_construction, 1)
        check_int("ef_search", self.ef_search, 1)
        check_int("max_elements", self.max_elements, 1)
        if self.seed is not None:
            check_int("seed", self.seed, 0)
        if self.metric not in _METRICS:
            raise ValidationError(f"metric must be one of {sorted(_METRICS)}, got {self.metric!r}")
        if self.ml is not None:
            check_float("ml", self.ml, 0.0)

    @property
    def level_mult(self) -> float:
        return 1.0 / math.log(self.M) if self.ml is None else float(self.ml)


class HNSW:
    """Hierarchical Navigable Small World graph for k-NN search.

    Parameters
    ----------
    dim : int
        Vector dimension.
    M : int, default 16
        Links per node on upper layers; layer 0 keeps up to ``2*M``.
    ef_construction : int, default 200
        Candidate-list size while inserting (quality vs build time).
    ef_search : int, default 50
        Default candidate-list size while searching (``max(ef, k)`` is used).
    ml : float, optional
        Level multiplier: level = floor(-ln(U) * ml); default ``1/ln(M)``.
    seed : int, optional
        Seeds level assignment; with a seed the graph is identical run to run.
    metric : {"l2", "ip", "cosine"}, default "l2"
        Distance returned: Euclidean distance, ``1 - dot``, or ``1 - cos``
        (cosine vectors are normalised on insert).
    max_elements : int, default 1024
        Initial capacity; doubled whenever exceeded.
    """

    __slots__ = ("_cfg", "_ef", "_g", "_graph", "_ids", "_kargs", "_kk", "_kreq", "_metric",
                 "_next_id", "_out", "_out_d", "_out_ids", "_qshape", "_rng")

    def __init__(self, dim: int, M: int = 16, ef_construction: int = 200, ef_search: int = 50,
                 ml: float | None = None, seed: int | None = None, *, metric: str = "l2",
                 max_elements: int = 1024) -> None:
        cfg = HNSWConfig(dim, M, ef_construction, ef_search, ml, seed, metric, max_elements)
        self._cfg = cfg
        self._ef = cfg.ef_search
        self._metric = _METRICS[metric]
        self._qshape = (cfg.dim,)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._g = HNSWGraph(cfg.dim, cfg.M, self._metric, cfg.max_elements)
        self._ids: dict[int, int] = {}  # live user id -> internal node
        self._next_id = 0  # default id of the next add_items row
        self._set_out(16)
        self._refresh()

    # ------------------------------------------------------------- internals
    def _refresh(self) -> None:
        """Rebuild the kernel arguments after any array change."""
        self._kargs = (*self._g.kernel_arrays(), self._out_ids, self._out_d)
        self._graph = _k.Graph(*self._kargs)  # search()'s packed copy of _kargs
        self._kreq = 0  # the node count may have changed: re-size result buffers

    def _as_matrix(self, vectors: Any, what: str) -> np.ndarray:
        """float32 C-contiguous [n, dim] view/copy of ``vectors`` (1-D means one row)."""
        try:
            x = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{what} must be numeric array-like: {exc}") from None
        if x.ndim == 1:
            x = x[None, :]
        dim = self._cfg.dim
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValidationError(f"{what} must have shape (n, {dim}) or ({dim},), got {x.shape}")
        return np.ascontiguousarray(x)

    # ------------------------------------------------------------ insertion
    def add(self, vec: Any, vec_id: int) -> None:
        """Insert one vector under the id ``vec_id`` (any int64).

        Raises
        ------
        ValidationError
            Wrong dimension, NaN/inf (or zero vector for cosine), bad or
            duplicate id.  The index is unchanged.
        """
        x = self._as_matrix(vec, "vec")
        if x.shape[0] != 1:
            raise ValidationError(f"add takes one vector; use add_items for {x.shape[0]}")
        self.add_items(x, [vec_id])

    def add_items(self, vectors: Any, ids: Any = None) -> None:
        """Insert rows of ``vectors`` [n, dim], in order, in one kernel call.

        ``ids`` (any int64) default to consecutive integers starting after the
        largest id used so far.  An id that was ``mark_deleted`` may be added
        again.  New vectors take the slots of deleted nodes first (lowest slot
        first; never the entry point's), then new slots.  Validation happens
        before any change.

        Raises
        ------
        ValidationError
            Wrong shape, NaN/inf (or a zero vector for cosine), ids not int64
            integers, repeated, or already in the index.
        """
        x = self._as_matrix(vectors, "vectors")
        n = x.shape[0]
        if ids is None:
            if self._next_id + n - 1 > _I64_MAX:
                raise ValidationError("default ids would pass 2**63 - 1; pass ids explicitly")
            labels = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            labels = np.atleast_1d(np.asarray(ids))
            if labels.dtype.kind not in "iu" or labels.ndim != 1:
                raise ValidationError(f"ids must be a 1-D sequence of ints, got dtype {labels.dtype}")
            if labels.shape[0] != n:
                raise ValidationError(f"got {n} vectors but {labels.shape[0]} ids")
            if n and labels.dtype.kind == "u" and labels.max() > _I64_MAX:
                raise ValidationError("ids must be int64 values")
            labels = labels.astype(np.int64)
            if np.unique(labels).shape[0] != n:
                raise ValidationError("ids contain duplicates")
        if n == 0:
            return
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValidationError(
                f"vector row {int(np.argmax(bad))} contains NaN or inf (or overflows float32)")
        if self._metric == _k.METRIC_COSINE:
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            if (norms == 0).any():
                raise ValidationError(
                    f"vector row {int(np.argmax(norms == 0))} is zero; cosine needs a direction")
            x = (x / norms[:, None]).astype(np.float32)
        ids_list = labels.tolist()
        for i in ids_list:
            if i in self._ids:
                raise ValidationError(f"id {i} is already in the index; mark_deleted it first")

        # Valid: from here on nothing raises (except MemoryError).
        levels = np.floor(-np.log1p(-self._rng.random(n)) * self._cfg.level_mult)
        levels = levels.astype(np.int32)
        reused = self._g.refill(x, labels, self._cfg.ef_construction)  # deleted nodes' slots first
        r = len(reused)
        self._ids.update(zip(ids_list[:r], reused))
        self._next_id = max(self._next_id, int(labels.max()) + 1)
        if r == n:
            return
        start, stop = self._g.append(x[r:], labels[r:], levels[r:], self._cfg.ef_construction)
        self._ids.update(zip(ids_list[r:], range(start, stop)))
        self._refresh()

    def mark_deleted(self, vec_id: int) -> None:
        """Hide ``vec_id`` from results and reconnect its neighbours around it.

        The node keeps routing searches that reach it until a later add
        reuses its slot.

        Raises
        ------
        ValidationError
            ``vec_id`` is not an int.
        NotFoundError
            ``vec_id`` is not in the index (never added or already deleted).
        """
        if type(vec_id) is not int or not _I64_MIN <= vec_id <= _I64_MAX:
            vec_id = check_int("vec_id", vec_id, _I64_MIN, _I64_MAX)
        idx = self._ids.pop(vec_id, None)
        if idx is None:
            raise NotFoundError(f"id {vec_id!r} is not in the index (never added or already deleted)")
        self._g.delete(idx)

    # --------------------------------------------------------------- search
    def search(self, query: Any, k: int, ef: int | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest live vectors as ``[(id, distance), ...]``, closest first.

        ``ef`` (default ``ef_search``) is the candidate-list size; ``max(ef, k)``
        is used.  An empty index returns ``[]``.

        Raises
        ------
        ValidationError
            ``k`` or ``ef`` not a positive int, wrong dimension, NaN/inf query
            (or a zero query for cosine).
        """
        # Hot path: a few cheap checks, one compiled call, one conversion.
        if type(k) is not int or k <= 0:
            k = check_int("k", k, 1)
        if ef is None:
            ef = self._ef
        elif type(ef) is not int or not 0 < ef < _EF_CAP:
            ef = min(check_int("ef", ef, 1), _EF_CAP)
        try:
            q = np.ascontiguousarray(query, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"query must be a numeric vector: {exc}") from None
        if q.shape != self._qshape:
            q = self._as_matrix(query, "query")
            if q.shape[0] != 1:
                raise ValidationError(f"search takes one query; use search_batch for {q.shape[0]}")
            q = q[0]
        if k != self._kreq:
            self._resize_out(k)
        kk = self._kk
        fn = SEARCH_ONE[0] or bind_search_one()
        n = fn(q, kk, ef, self._graph)
        if n == kk:
            return self._out.tolist()
        if n < 0:
            raise ValidationError("query contains NaN or inf (or is zero with metric='cosine')")
        return self._out[:n].tolist()

    def _resize_out(self, k: int) -> None:
        """Size the single-query result buffers to ``k`` (at most the node count)."""
        kk = min(k, max(self._g.count, 1))
        self._set_out(kk)
        self._refresh()
        self._kreq = k

    def _set_out(self, kk: int) -> None:
        """Single-query result buffer: records (id int64, distance float32), so
        one ``tolist()`` yields the ``[(id, distance), ...]`` result (~0.15 us
        less than zipping two lists); the kernel writes the two field views."""
        self._out = np.empty(kk, _OUT_DTYPE)
        self._out_ids = self._out["id"]
        self._out_d = self._out["d"]
        self._kk = kk

    def search_batch(self, queries: Any, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Search every row of ``queries`` [n, dim].

        Returns
        -------
        (ids, distances) : (int64 [n, k], float32 [n, k])
            Row i equals ``search(queries[i], k, ef)``; missing results are
            padded with id -1 and distance inf.
        """
        k = check_int("k", k, 1)
        ef = self._ef if ef is None else min(check_int("ef", ef, 1), _EF_CAP)
        Q = self._as_matrix(queries, "queries")
        ids = np.full((Q.shape[0], k), -1, np.int64)
        dist = np.full((Q.shape[0], k), np.inf, np.float32)
        rc = _k.search_batch(Q, k, ef, *self._kargs[:6], ids, dist)
        if rc < 0:
            raise ValidationError(
                f"query row {-1 - rc} contains NaN or inf (or is zero with metric='cosine')")
        return ids, dist

    # ----------------------------------------------------------- inspection
    @property
    def ef_search(self) -> int:
        """Default candidate-list size of ``search`` (settable, >= 1)."""
        return self._ef

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef = check_int("ef_search", value, 1)

    @property
    def config(self) -> HNSWConfig:
        return self._cfg

    def __len__(self) -> int:
        """Number of live (not deleted) vectors."""
        return len(self._ids)

    def __contains__(self, vec_id: object) -> bool:
        return vec_id in self._ids

    def stats(self) -> dict[str, Any]:
        """Index statistics.

        ``num_vectors`` counts live vectors, ``num_deleted`` deleted nodes still
        in the graph; ``avg_degree`` is the mean layer-0 out-degree;
        ``memory_bytes`` the allocated array bytes (capacity, not just use).
        """
        g = self._g
        n = g.count
        arrays = (g.data, g.upper, g.nodes, g.visited)
        return {
            "num_vectors": len(self._ids),
            "num_deleted": g.num_deleted,
            "num_layers": g.max_level + 1 if n else 0,
            "entry_point": int(g.nodes[g.entry, 1]) if n else None,
            "avg_degree": float(g.links0[:n, 0].mean()) if n else 0.0,
            "memory_bytes": int(sum(a.nbytes for a in arrays)),
            "capacity": int(g.data.shape[0]),
            "dim": self._cfg.dim,
            "M": self._cfg.M,
            "ef_construction": self._cfg.ef_construction,
            "ef_search": self._ef,
            "ml": self._cfg.level_mult,
            "metric": self._cfg.metric,
        }

    def graph_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the used part of the graph in the saved (layout-free) format
        (:meth:`HNSWGraph.export <llmds.retrieval._hnsw_graph.HNSWGraph.export>`)."""
        return self._g.export()

    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors (float32 [n, dim]; unit norm for cosine) of live ``ids``.

        Raises
        ------
        NotFoundError
            An id is not in the index.
        """
        nodes = []
        for i in ids:
            node = self._ids.get(i)
            if node is None:
                raise NotFoundError(f"id {i!r} is not in the index")
            nodes.append(node)
        return self._g.fdata[nodes, :self._cfg.dim].copy()

    # ------------------------------------------------------------ save/load
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The saved form ``(arrays, meta)`` (:meth:`graph_arrays` and the settings)."""
        cfg = self._cfg
        meta = {"dim": cfg.dim, "M": cfg.M, "ef_construction": cfg.ef_construction,
                "ef_search": self._ef, "ml": cfg.ml, "seed": cfg.seed, "metric": cfg.metric,
                "max_elements": cfg.max_elements, "entry": self._g.entry,
                "max_level": self._g.max_level, "next_id": self._next_id,
                "rng": self._rng.bit_generator.state}
        return self.graph_arrays(), meta

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically (versioned, checksummed, no pickle)."""
        arrays, meta = self.to_arrays()
        write_atomic(path, _MAGIC, _VERSION, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HNSW:
        """Read an index written by :meth:`save`.

        Raises
        ------
        CorruptFileError
            Truncated, corrupted, foreign or inconsistent file.
        """
        _, arrays, meta = read_checked(path, _MAGIC, (_VERSION,))
        return cls.from_arrays(arrays, meta, os.fspath(path))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                    where: str = "HNSW") -> HNSW:
        """Inverse of :meth:`to_arrays`; ``CorruptFileError`` on any broken invariant."""
        try:
            self = cls(meta["dim"], meta["M"], meta["ef_construction"], meta["ef_search"],
                       meta["ml"], meta["seed"], metric=meta["metric"],
                       max_elements=meta["max_elements"])
            self._restore(arrays, meta)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, CorruptFileError):
                raise
            raise CorruptFileError(f"{where}: inconsistent HNSW file: {exc}") from None
        return self

    def _restore(self, a: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Adopt saved arrays (checked by ``HNSWGraph.restore``) into this fresh index."""
        cfg = self._cfg
        self._g = HNSWGraph.restore(cfg.dim, cfg.M, self._metric, cfg.max_elements, a, meta)
        alive = np.flatnonzero(a["deleted"] == 0)
        self._ids = dict(zip(a["labels"][alive].tolist(), alive.tolist()))
        self._next_id = check_int("next_id", meta["next_id"], _I64_MIN, _I64_MAX + 1)
        self._rng.bit_generator.state = meta["rng"]
        self._refresh()
