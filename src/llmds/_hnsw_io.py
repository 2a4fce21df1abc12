"""Restoring an :class:`~llmds.hnsw.HNSW` from its saved arrays, checking every invariant."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from llmds import _hnsw_kernels as _k
from llmds._checks import check_int
from llmds.errors import CorruptFileError

if TYPE_CHECKING:
    from llmds.hnsw import HNSW

__all__ = ["restore"]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def restore(h: HNSW, a: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Fill a fresh index from saved arrays, checking every graph invariant."""
    M, dim = h._cfg.M, h._dim
    expect = {"vecs": (np.float32, 2), "links0": (np.int32, 2), "upper": (np.int32, 2),
              "upper_off": (np.int64, 1), "levels": (np.int32, 1), "labels": (np.int64, 1),
              "deleted": (np.uint8, 1)}
    for name, (dt, nd) in expect.items():
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
    h._reserve(n, r)
    h._fdata[:n, :dim] = a["vecs"]
    h._links0[:n] = a["links0"]
    h._upper[:r] = a["upper"]
    h._nodes[:n] = np.stack([off, a["labels"], a["deleted"].astype(np.int64), lv.astype(np.int64)], 1)
    h._state[[_k.S_ENTRY, _k.S_MAXLEVEL]] = (entry, max_level)
    h._count, h._rows = n, r
    alive = np.flatnonzero(a["deleted"] == 0)
    h._ids = dict(zip(a["labels"][alive].tolist(), alive.tolist()))
    h._state[_k.S_NDEL] = n - alive.shape[0]
    h._free = np.flatnonzero(a["deleted"]).tolist()  # ascending: already a heap
    h._next_id = check_int("next_id", meta["next_id"], _I64_MIN, _I64_MAX + 1)
    h._rng.bit_generator.state = meta["rng"]
    h._refresh()
