"""The flat arrays of one HNSW graph: layout, growth, the saved form and its invariants.

:class:`~llmds.retrieval.hnsw.HNSW` maps user ids onto the nodes of an
:class:`HNSWGraph` and runs the search kernels on its arrays; the graph makes
and grows the arrays (layout in :mod:`llmds.retrieval._hnsw_kernels`), keeps the
free list of deleted nodes' slots and runs the kernels that change the graph
(insert, refill a deleted node's slot, delete).
"""

from __future__ import annotations

import heapq
import logging
from typing import Any

import numpy as np

from llmds.errors import CorruptFileError
from llmds.retrieval import _hnsw_kernels as _k

__all__ = ["HNSWGraph"]

log = logging.getLogger(__name__)

# saved array -> (dtype, ndim); see HNSWGraph.export
_SAVED = {"vecs": (np.float32, 2), "links0": (np.int32, 2), "upper": (np.int32, 2),
          "upper_off": (np.int64, 1), "levels": (np.int32, 1), "labels": (np.int64, 1),
          "deleted": (np.uint8, 1)}


class HNSWGraph:
    """Preallocated graph storage; grows by doubling.

    ``data`` int32 [cap, W] holds each node's layer-0 row (``fdata``: its
    vector in columns [0, dim) as float32; ``links0``: ``[count, ids...]`` in
    [dim, dim + 2M + 1)), W padded to a multiple of 16 int32 so every row
    starts on a 64-byte line; ``upper`` int32 [rows, M + 1] the links of layers
    >= 1; ``nodes`` int64 [cap, 4] ``[upper_off, label, deleted, level]``;
    ``visited`` uint32 [cap] epoch stamps; ``state`` int64 (``_k.S_*``).
    ``count`` nodes and ``rows`` upper rows are in use; ``free`` is a heap of
    deleted nodes whose slots :meth:`refill` reuses.
    """

    __slots__ = ("M", "count", "data", "dim", "fdata", "free", "links0", "nodes", "rows", "state",
                 "upper", "visited")

    def __init__(self, dim: int, M: int, metric: int, capacity: int) -> None:
        self.dim, self.M = dim, M
        self._set_rows(_aligned_rows(capacity, -(-(dim + 2 * M + 1) // 16) * 16))
        self.upper = np.zeros((max(16, capacity // M), M + 1), np.int32)
        self.nodes = np.zeros((capacity, 4), np.int64)
        self.visited = np.zeros(capacity, np.uint32)
        self.state = np.zeros(_k.STATE_SIZE, np.int64)
        self.state[[_k.S_ENTRY, _k.S_MAXLEVEL]] = -1
        self.state[_k.S_METRIC] = metric
        self.state[_k.S_M] = M
        self.count = 0
        self.rows = 0
        self.free: list[int] = []  # heap of deleted nodes whose slots a later refill reuses

    def _set_rows(self, data: np.ndarray) -> None:
        """Adopt ``data`` int32 [cap, W] as the layer-0 storage and make its views."""
        self.data = data
        self.fdata = data.view(np.float32)
        self.links0 = data[:, self.dim:self.dim + 2 * self.M + 1]

    def reserve(self, nodes: int, rows: int) -> None:
        """Grow (amortised doubling) to hold ``nodes`` nodes and ``rows`` upper rows.
        Growing replaces arrays: the owner re-binds its kernel arguments after a change."""
        cap = self.data.shape[0]
        n = self.count
        if nodes > cap:
            new = max(nodes, 2 * cap)
            data = _aligned_rows(new, self.data.shape[1])
            data[:n] = self.data[:n]
            self._set_rows(data)
            for name in ("nodes", "visited"):
                old = getattr(self, name)
                arr = np.zeros((new,) + old.shape[1:], old.dtype)
                arr[:n] = old[:n]
                setattr(self, name, arr)
            log.debug("HNSW grew from %d to %d nodes", cap, new)
        if rows > self.upper.shape[0]:
            arr = np.zeros((max(rows, 2 * self.upper.shape[0]), self.upper.shape[1]), np.int32)
            arr[: self.rows] = self.upper[: self.rows]
            self.upper = arr

    def kernel_arrays(self) -> tuple[np.ndarray, ...]:
        """``(fdata, links0, upper, nodes, visited, state)``, the kernels' argument order."""
        return self.fdata, self.links0, self.upper, self.nodes, self.visited, self.state

    @property
    def entry(self) -> int:
        """Entry node (-1 when empty); it is never refilled, so it stays a valid start."""
        return int(self.state[_k.S_ENTRY])

    @property
    def max_level(self) -> int:
        """Level of the entry node (-1 when empty)."""
        return int(self.state[_k.S_MAXLEVEL])

    @property
    def num_deleted(self) -> int:
        return int(self.state[_k.S_NDEL])

    # ------------------------------------------------------------ changes
    def append(self, x: np.ndarray, labels: np.ndarray, levels: np.ndarray,
               ef_construction: int) -> tuple[int, int]:
        """Insert the rows of ``x`` as new nodes (one kernel call); their node range."""
        n = x.shape[0]
        start, stop = self.count, self.count + n
        rows = int(levels.sum())
        self.reserve(stop, self.rows + rows)
        self.fdata[start:stop, :self.dim] = x
        self.links0[start:stop, 0] = 0  # empty layer-0 lists
        nd = self.nodes[start:stop]
        nd[:, 0] = self.rows + np.concatenate(([0], np.cumsum(levels[:-1], dtype=np.int64)))
        nd[:, 1] = labels
        nd[:, 2] = 0
        nd[:, 3] = levels
        self.upper[self.rows: self.rows + rows, 0] = 0
        self.rows += rows
        _k.insert_batch(start, stop, self.dim, ef_construction, self.fdata, self.links0,
                        self.upper, self.nodes, self.visited, self.state)
        self.count = stop
        return start, stop

    def refill(self, x: np.ndarray, labels: np.ndarray, ef_construction: int) -> list[int]:
        """Insert the first rows of ``x`` into deleted nodes' slots (lowest slot first, so a
        seeded index stays deterministic; never the entry point's); returns those nodes."""
        entry = self.entry
        nodes: list[int] = []
        held = []
        while self.free and len(nodes) < x.shape[0]:
            v = heapq.heappop(self.free)
            (held if v == entry else nodes).append(v)
        for v in held:
            heapq.heappush(self.free, v)
        for i, v in enumerate(nodes):
            self._refill(v, x[i], int(labels[i]), ef_construction)
        return nodes

    def _refill(self, v: int, x: np.ndarray, label: int, ef_construction: int) -> None:
        """Insert ``x`` into deleted node ``v``'s slot at the slot's own level (one kernel
        call), keeping the old links the new ones leave room for."""
        lv, off = int(self.nodes[v, 3]), int(self.nodes[v, 0])
        old0, old_up = self.links0[v].copy(), self.upper[off:off + lv].copy()
        self.fdata[v, :self.dim] = x
        self.links0[v, 0] = 0
        self.upper[off:off + lv, 0] = 0
        self.nodes[v, 1] = label
        self.nodes[v, 2] = 0
        self.state[_k.S_NDEL] -= 1
        args = (self.fdata, self.links0, self.upper, self.nodes)
        _k.insert_batch(v, v + 1, self.dim, ef_construction, *args, self.visited, self.state)
        _k.keep_old_links(v, old0, old_up, self.dim, *args, self.state)

    def delete(self, v: int) -> None:
        """Tombstone node ``v`` and reconnect its neighbours around it; a later
        :meth:`refill` reuses its slot."""
        self.nodes[v, 2] = 1
        self.state[_k.S_NDEL] += 1
        _k.repair_links(v, self.dim, self.fdata, self.links0, self.upper, self.nodes, self.state)
        heapq.heappush(self.free, v)

    # ------------------------------------------------------------ saved form
    def export(self) -> dict[str, np.ndarray]:
        """Copies of the used part in the saved (layout-free) format: ``vecs`` float32
        [n, dim], ``links0`` int32 [n, 2M+1], ``upper`` int32 [rows, M+1], ``upper_off``
        int64 [n], ``levels`` int32 [n], ``labels`` int64 [n], ``deleted`` uint8 [n]."""
        n, r = self.count, self.rows
        nd = self.nodes[:n]
        return {"vecs": self.fdata[:n, :self.dim].copy(),
                "links0": self.links0[:n].copy(), "upper": self.upper[:r].copy(),
                "upper_off": nd[:, 0].copy(), "levels": nd[:, 3].astype(np.int32),
                "labels": nd[:, 1].copy(), "deleted": nd[:, 2].astype(np.uint8)}

    @classmethod
    def restore(cls, dim: int, M: int, metric: int, capacity: int, a: dict[str, np.ndarray],
                meta: dict[str, Any]) -> HNSWGraph:
        """A graph from :meth:`export`'s arrays and ``meta["entry"]`` / ``meta["max_level"]``,
        checking every graph invariant (``CorruptFileError``)."""
        _check(a, meta, dim, M)
        n, r = a["vecs"].shape[0], a["upper"].shape[0]
        g = cls(dim, M, metric, capacity)
        g.reserve(n, r)
        lv = a["levels"]
        g.fdata[:n, :dim] = a["vecs"]
        g.links0[:n] = a["links0"]
        g.upper[:r] = a["upper"]
        g.nodes[:n] = np.stack([a["upper_off"], a["labels"], a["deleted"].astype(np.int64),
                                lv.astype(np.int64)], 1)
        g.state[[_k.S_ENTRY, _k.S_MAXLEVEL]] = (int(meta["entry"]), int(meta["max_level"]))
        g.state[_k.S_NDEL] = int(np.count_nonzero(a["deleted"]))
        g.count, g.rows = n, r
        g.free = np.flatnonzero(a["deleted"]).tolist()  # ascending: already a heap
        return g


def _check(a: dict[str, np.ndarray], meta: dict[str, Any], dim: int, M: int) -> None:
    """Raise ``CorruptFileError`` unless the saved arrays form a valid graph."""
    for name, (dt, nd) in _SAVED.items():
        if a[name].dtype != dt or a[name].ndim != nd:
            raise CorruptFileError(f"array {name} has dtype {a[name].dtype}/{a[name].ndim}-D")
    n, r = a["vecs"].shape[0], a["upper"].shape[0]
    shapes_ok = (a["vecs"].shape[1] == dim and a["links0"].shape == (n, 2 * M + 1)
                 and a["upper"].shape[1] == M + 1
                 and all(a[x].shape == (n,) for x in ("upper_off", "levels", "labels", "deleted")))
    if not shapes_ok:
        raise CorruptFileError("array shapes do not match dim/M")
    lv, off = a["levels"], a["upper_off"]
    c0, cu = a["links0"][:, 0], a["upper"][:, 0]
    ok = (np.isfinite(a["vecs"]).all() and (lv >= 0).all()
          and (a["deleted"] <= 1).all() and int(lv.sum()) == r
          and np.array_equal(off, np.concatenate(([0], np.cumsum(lv[:-1], dtype=np.int64)))[:n])
          and ((c0 >= 0) & (c0 <= 2 * M)).all() and ((cu >= 0) & (cu <= M)).all())
    if ok and n:
        cols0 = np.arange(2 * M)[None, :] < c0[:, None]
        colsu = np.arange(M)[None, :] < cu[:, None]
        l0, lu = a["links0"][:, 1:][cols0], a["upper"][:, 1:][colsu]
        ok = ((l0 >= 0) & (l0 < n)).all() and ((lu >= 0) & (lu < n)).all()
        if ok and r:  # a layer-l link must point at a node that has layer l
            row_lv = np.arange(r) - off[np.repeat(np.arange(n), lv)] + 1
            ok = bool((lv[lu] >= np.repeat(row_lv, cu)).all())
    entry, max_level = int(meta["entry"]), int(meta["max_level"])
    if n:
        ok = ok and 0 <= entry < n and max_level == int(lv.max()) == int(lv[entry])
    else:
        ok = ok and entry == -1 and max_level == -1
    live = a["labels"][a["deleted"] == 0]
    ok = ok and np.unique(live).shape[0] == live.shape[0]
    if not ok:
        raise CorruptFileError("graph arrays violate HNSW invariants")


def _aligned_rows(rows: int, cols: int) -> np.ndarray:
    """Zeroed int32 [rows, cols] whose first byte is 64-byte aligned."""
    nbytes = rows * cols * 4
    buf = np.zeros(nbytes + 64, np.uint8)
    start = (-buf.ctypes.data) % 64
    return buf[start:start + nbytes].view(np.int32).reshape(rows, cols)
