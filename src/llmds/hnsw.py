"""HNSW approximate nearest-neighbour index (Malkov & Yashunin, 2018).

The graph lives in flat preallocated numpy arrays (layout in
:mod:`llmds._hnsw_kernels`); insertion and search run in numba kernels, one
kernel call per ``add_items`` batch and per query.  Python only validates,
maps user ids (any int64) to internal node indices and converts results.

Deletion is a tombstone plus a repair: ``mark_deleted`` hides the id from
results and reconnects its neighbours around it (``_k.repair_links``); the
node's slot is reused by a later add (lowest free slot first, so a seeded
index stays deterministic), so memory does not grow under replacement.

Not thread-safe: searches share one epoch-stamped visited array.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds import _hnsw_kernels as _k
from llmds._binfmt import read_checked, write_atomic
from llmds._checks import check_float, check_int
from llmds._hnsw_io import restore
from llmds.errors import CorruptFileError, NotFoundError, ValidationError

__all__ = ["HNSW", "HNSWConfig"]

log = logging.getLogger(__name__)

_METRICS = {"l2": _k.METRIC_L2, "ip": _k.METRIC_IP, "cosine": _k.METRIC_COSINE}
_MAGIC = b"LLMDSHNSW"
_VERSION = 1
_OUT_DTYPE = np.dtype([("id", np.int64), ("d", np.float32)], align=True)  # 16-byte records
_EF_CAP = 1 << 40  # larger ef is clamped (the kernels clamp it to the capacity anyway)


# search_one_g's compiled entry point for the one argument signature search()
# uses.  Calling it directly skips numba's per-call type dispatch (~0.5 us of a
# ~25 us query).  Safe because search() only ever passes these types: a 1-D
# C-contiguous float32 query (a read-only one has the same memory layout), two
# int64-range ints and the index's own Graph (its field types are fixed by
# _k.GRAPH_T, whatever the layouts of the arrays it was built from).
_SEARCH_ONE: list[Any] = [None]


def _bind_search_one() -> Any:
    try:
        from numba import types as nt

        sig = (nt.Array(nt.float32, 1, "C"), nt.int64, nt.int64, _k.GRAPH_T)
        fn = _k.search_one_g.compile(sig)  # loads from the numba cache when present
    except Exception:  # pragma: no cover - numba internals moved: use the dispatcher
        log.warning("HNSW: direct kernel entry unavailable, using numba dispatch", exc_info=True)
        fn = _k.search_one_g
    _SEARCH_ONE[0] = fn
    return fn


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

    __slots__ = (
        "_cfg", "_count", "_data", "_dim", "_ef", "_fdata", "_free", "_graph", "_ids", "_kargs", "_kk",
        "_kreq", "_links0", "_metric", "_next_id", "_nodes", "_out", "_out_d", "_out_ids",
        "_qshape", "_rng", "_rows", "_state", "_upper", "_visited",
    )

    def __init__(self, dim: int, M: int = 16, ef_construction: int = 200, ef_search: int = 50,
                 ml: float | None = None, seed: int | None = None, *, metric: str = "l2",
                 max_elements: int = 1024) -> None:
        cfg = HNSWConfig(dim, M, ef_construction, ef_search, ml, seed, metric, max_elements)
        self._cfg = cfg
        self._ef = cfg.ef_search
        self._metric = _METRICS[metric]
        self._dim = cfg.dim
        self._qshape = (cfg.dim,)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        # Layer-0 row of a node: its vector in columns [0, dim), then its links
        # [count, ids...] in [dim, dim + 2M + 1); the width is padded to a multiple
        # of 16 int32 so every row starts on a 64-byte line.
        cap = cfg.max_elements
        self._set_rows(_aligned_rows(cap, -(-(cfg.dim + 2 * cfg.M + 1) // 16) * 16))
        self._upper = np.zeros((max(16, cap // cfg.M), cfg.M + 1), np.int32)
        self._nodes = np.zeros((cap, 4), np.int64)  # [upper_off, label, deleted, level]
        self._visited = np.zeros(cap, np.uint32)
        self._state = np.zeros(_k.STATE_SIZE, np.int64)
        self._state[[_k.S_ENTRY, _k.S_MAXLEVEL]] = -1
        self._state[_k.S_METRIC] = self._metric
        self._state[_k.S_M] = cfg.M
        self._count = 0  # nodes in the graph, deleted ones included
        self._rows = 0  # rows of _upper in use
        self._ids: dict[int, int] = {}  # live user id -> internal node
        self._next_id = 0  # default id of the next add_items row
        self._free: list[int] = []  # heap of deleted nodes whose slots a later add reuses
        self._set_out(16)
        self._refresh()

    # ------------------------------------------------------------- internals
    def _refresh(self) -> None:
        """Rebuild the kernel arguments after any array change."""
        self._kargs = (self._fdata, self._links0, self._upper, self._nodes, self._visited,
                       self._state, self._out_ids, self._out_d)
        self._graph = _k.Graph(*self._kargs)  # search()'s packed copy of _kargs
        self._kreq = 0  # the node count may have changed: re-size result buffers

    def _set_rows(self, data: np.ndarray) -> None:
        """Adopt ``data`` int32 [cap, W] as the layer-0 storage and make its views."""
        self._data = data
        self._fdata = data.view(np.float32)  # vectors: columns [0, dim)
        self._links0 = data[:, self._dim:self._dim + 2 * self._cfg.M + 1]

    def _reserve(self, nodes: int, rows: int) -> None:
        """Grow (amortised doubling) to hold ``nodes`` nodes and ``rows`` upper rows."""
        cap = self._data.shape[0]
        n = self._count
        if nodes > cap:
            new = max(nodes, 2 * cap)
            data = _aligned_rows(new, self._data.shape[1])
            data[:n] = self._data[:n]
            self._set_rows(data)
            for name in ("_nodes", "_visited"):
                old = getattr(self, name)
                arr = np.zeros((new,) + old.shape[1:], old.dtype)
                arr[:n] = old[:n]
                setattr(self, name, arr)
            log.debug("HNSW grew from %d to %d nodes", cap, new)
        if rows > self._upper.shape[0]:
            arr = np.zeros((max(rows, 2 * self._upper.shape[0]), self._upper.shape[1]), np.int32)
            arr[: self._rows] = self._upper[: self._rows]
            self._upper = arr

    def _as_matrix(self, vectors: Any, what: str) -> np.ndarray:
        """float32 C-contiguous [n, dim] view/copy of ``vectors`` (1-D means one row)."""
        try:
            x = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{what} must be numeric array-like: {exc}") from None
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise ValidationError(
                f"{what} must have shape (n, {self._dim}) or ({self._dim},), got {x.shape}")
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
            labels = np.asarray(ids)
            if labels.ndim == 0:
                labels = labels[None]
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
        reused = self._reuse_slots(x, labels)  # deleted nodes' slots first
        r = len(reused)
        self._ids.update(zip(ids_list[:r], reused))
        self._next_id = max(self._next_id, int(labels.max()) + 1)
        if r == n:
            return
        x, labels, levels, ids_list = x[r:], labels[r:], levels[r:], ids_list[r:]
        n -= r
        start, stop = self._count, self._count + n
        rows = int(levels.sum())
        self._reserve(stop, self._rows + rows)
        self._fdata[start:stop, :self._dim] = x
        self._links0[start:stop, 0] = 0  # empty layer-0 lists
        nd = self._nodes[start:stop]
        nd[:, 0] = self._rows + np.concatenate(([0], np.cumsum(levels[:-1], dtype=np.int64)))
        nd[:, 1] = labels
        nd[:, 2] = 0
        nd[:, 3] = levels
        self._upper[self._rows: self._rows + rows, 0] = 0
        self._rows += rows
        _k.insert_batch(start, stop, self._dim, self._cfg.ef_construction, self._fdata,
                        self._links0, self._upper, self._nodes, self._visited, self._state)
        self._count = stop
        self._ids.update(zip(ids_list, range(start, stop)))
        self._refresh()

    def _reuse_slots(self, x: np.ndarray, labels: np.ndarray) -> list[int]:
        """Insert the first rows of ``x`` into deleted nodes' slots (one kernel call each,
        at the slot's own level); returns those nodes."""
        entry = int(self._state[_k.S_ENTRY])
        nodes: list[int] = []
        held = []
        while self._free and len(nodes) < x.shape[0]:
            v = heapq.heappop(self._free)
            (held if v == entry else nodes).append(v)
        for v in held:
            heapq.heappush(self._free, v)
        for i, v in enumerate(nodes):
            lv, off = int(self._nodes[v, 3]), int(self._nodes[v, 0])
            old0, old_up = self._links0[v].copy(), self._upper[off:off + lv].copy()
            self._fdata[v, :self._dim] = x[i]
            self._links0[v, 0] = 0
            self._upper[off:off + lv, 0] = 0
            self._nodes[v, 1] = labels[i]
            self._nodes[v, 2] = 0
            self._state[_k.S_NDEL] -= 1
            args = (self._fdata, self._links0, self._upper, self._nodes)
            _k.insert_batch(v, v + 1, self._dim, self._cfg.ef_construction, *args,
                            self._visited, self._state)
            _k.keep_old_links(v, old0, old_up, self._dim, *args, self._state)
        return nodes

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
        self._nodes[idx, 2] = 1
        self._state[_k.S_NDEL] += 1
        _k.repair_links(idx, self._dim, self._fdata, self._links0, self._upper, self._nodes,
                        self._state)
        heapq.heappush(self._free, idx)

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
        fn = _SEARCH_ONE[0] or _bind_search_one()
        n = fn(q, kk, ef, self._graph)
        if n == kk:
            return self._out.tolist()
        if n < 0:
            raise ValidationError("query contains NaN or inf (or is zero with metric='cosine')")
        return self._out[:n].tolist()

    def _resize_out(self, k: int) -> None:
        """Size the single-query result buffers to ``k`` (at most the node count)."""
        kk = min(k, max(self._count, 1))
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
        n, st = self._count, self._state
        arrays = (self._data, self._upper, self._nodes, self._visited)
        return {
            "num_vectors": len(self._ids),
            "num_deleted": int(st[_k.S_NDEL]),
            "num_layers": int(st[_k.S_MAXLEVEL]) + 1 if n else 0,
            "entry_point": int(self._nodes[st[_k.S_ENTRY], 1]) if n else None,
            "avg_degree": float(self._links0[:n, 0].mean()) if n else 0.0,
            "memory_bytes": int(sum(a.nbytes for a in arrays)),
            "capacity": int(self._data.shape[0]),
            "dim": self._dim,
            "M": self._cfg.M,
            "ef_construction": self._cfg.ef_construction,
            "ef_search": self._ef,
            "ml": self._cfg.level_mult,
            "metric": self._cfg.metric,
        }

    def graph_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the used part of the graph in the saved (layout-free) format.

        ``vecs`` float32 [n, dim], ``links0`` int32 [n, 2M+1], ``upper`` int32
        [rows, M+1], ``upper_off`` int64 [n], ``levels`` int32 [n], ``labels``
        int64 [n], ``deleted`` uint8 [n].
        """
        n, r = self._count, self._rows
        nd = self._nodes[:n]
        return {"vecs": self._fdata[:n, :self._dim].copy(),
                "links0": self._links0[:n].copy(), "upper": self._upper[:r].copy(),
                "upper_off": nd[:, 0].copy(), "levels": nd[:, 3].astype(np.int32),
                "labels": nd[:, 1].copy(), "deleted": nd[:, 2].astype(np.uint8)}

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
        return self._fdata[nodes, :self._dim].copy()

    # ------------------------------------------------------------ save/load
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The saved form ``(arrays, meta)`` (:meth:`graph_arrays` and the settings)."""
        cfg = self._cfg
        meta = {"dim": cfg.dim, "M": cfg.M, "ef_construction": cfg.ef_construction,
                "ef_search": self._ef, "ml": cfg.ml, "seed": cfg.seed, "metric": cfg.metric,
                "max_elements": cfg.max_elements, "entry": int(self._state[_k.S_ENTRY]),
                "max_level": int(self._state[_k.S_MAXLEVEL]), "next_id": self._next_id,
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
            restore(self, arrays, meta)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, CorruptFileError):
                raise
            raise CorruptFileError(f"{where}: inconsistent HNSW file: {exc}") from None
        return self


def _aligned_rows(rows: int, cols: int) -> np.ndarray:
    """Zeroed int32 [rows, cols] whose first byte is 64-byte aligned."""
    nbytes = rows * cols * 4
    buf = np.zeros(nbytes + 64, np.uint8)
    start = (-buf.ctypes.data) % 64
    return buf[start:start + nbytes].view(np.int32).reshape(rows, cols)
