"""The routing policies ``bench_routing`` compares, each as its authors describe it.

Every policy sees the same load signal (requests in flight per replica, as a router counts
what it sent and what finished) and the request's prompt; only ``oracle`` reads the replicas'
real prefix indexes.  The two published prefix routers keep their own approximate tree of
what was routed where; here the tree is over block chain keys (:func:`prompt_keys`) instead of
characters, which is the same tree cut at block boundaries.

* ``round-robin``; ``power-of-two`` (Ray Serve's default: the less loaded of two random);
* ``ray-prefix``: Ray Serve's ``PrefixCacheAffinityRouter`` (``ray.serve.llm``) with its
  defaults: ``imbalanced_threshold=inf`` (the load check never fires), ``match_rate_threshold
  =0.1``: the replicas holding the longest match if it covers >= 10% of the prompt, else the
  replicas with the smallest trees; the least loaded of those; the whole prompt inserted for
  the chosen replica; no eviction (``do_eviction=False``);
* ``sglang``: SGLang's cache-aware router (sgl-model-gateway defaults: ``cache_threshold=0.3``,
  ``balance_abs_threshold=64``, ``balance_rel_threshold=1.5``): when ``max - min > 64`` and
  ``max > 1.5 * min`` loads, the least loaded replica; else the replica with the longest match
  if it covers more than 30% of the prompt (ties: least loaded), else the smallest tree; the
  prompt inserted for the chosen replica (tree size bound 2^26: never reached here);
* ``llmds``: :mod:`llmds.server.routing` (the Ray Serve router's policy), with each replica's
  prefix index advertised every ``stats_period_s`` seconds and the router's own load book;
* ``oracle``: the same policy with every replica's prefix index known exactly (the real hit
  instead of the advertised one): the bar for how good the advertised knowledge is.
"""

from __future__ import annotations

import math
import random

from llmds.server.routing import LoadBook, PrefixTable, RouterConfig, choose_replica

__all__ = ["POLICIES", "make_policy"]


class Policy:
    name = ""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.rng = random.Random(seed)

    def route(self, req, loads: list[int], now: float, replicas) -> int:
        raise NotImplementedError

    def started(self, replica: int, req) -> None:
        """``req`` got its first token on ``replica`` (the router sees its stream start)."""

    def finished(self, replica: int, req) -> None:
        """``req`` ended on ``replica``."""


class RoundRobin(Policy):
    name = "round-robin"

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(n, seed)
        self.next = 0

    def route(self, req, loads, now, replicas) -> int:
        i = self.next
        self.next = (i + 1) % self.n
        return i


def _two_choices(rng: random.Random, loads: list[int]) -> int:
    n = len(loads)
    if n == 1:
        return 0
    a = rng.randrange(n)
    b = rng.randrange(n - 1)
    b += b >= a
    return a if loads[a] <= loads[b] else b


class PowerOfTwo(Policy):
    name = "power-of-two"

    def route(self, req, loads, now, replicas) -> int:
        return _two_choices(self.rng, loads)


class KeyTree:
    """A multi-tenant prefix tree over chain keys: ``{key: {tenant: last access}}`` (a chain key
    names its whole prefix, so one dict level is the tree) and each tenant's size in tokens."""

    def __init__(self, n: int, block_size: int) -> None:
        self.nodes: dict[int, dict[int, float]] = {}
        self.size = [0] * n
        self.block_size = block_size

    def insert(self, keys: list[int], tenant: int, now: float) -> None:
        for k in keys:
            node = self.nodes.setdefault(k, {})
            if tenant not in node:
                self.size[tenant] += self.block_size
            node[tenant] = now

    def match(self, keys: list[int]) -> tuple[int, list[int]]:
        """``(matched blocks, tenants holding all of them)``."""
        alive: set[int] = set()
        depth = 0
        for k in keys:
            node = self.nodes.get(k)
            if not node:
                break
            now = set(node) if depth == 0 else alive & node.keys()
            if not now:
                break
            alive, depth = now, depth + 1
        return depth, sorted(alive)


class RayPrefixAffinity(Policy):
    name = "ray-prefix"

    def __init__(self, n: int, seed: int, block_size: int, imbalanced_threshold: float = math.inf,
                 match_rate_threshold: float = 0.1) -> None:
        super().__init__(n, seed)
        self.tree = KeyTree(n, block_size)
        self.imbalanced_threshold, self.match_rate_threshold = imbalanced_threshold, match_rate_threshold

    def route(self, req, loads, now, replicas) -> int:
        chosen: list[int] = []
        if max(loads) - min(loads) <= self.imbalanced_threshold:
            depth, tenants = self.tree.match(req.keys)
            rate = depth * self.tree.block_size / len(req.prompt)
            if rate < self.match_rate_threshold:
                small = min(self.tree.size)
                chosen = [i for i, s in enumerate(self.tree.size) if s == small]
            else:
                chosen = tenants
        if not chosen:  # the power-of-two fallback
            i = _two_choices(self.rng, loads)
        else:  # Ray probes the candidates' queues and takes the shortest
            low = min(loads[i] for i in chosen)
            i = self.rng.choice([i for i in chosen if loads[i] == low])
        self.tree.insert(req.keys, i, now)
        return i


class SGLangCacheAware(Policy):
    name = "sglang"

    def __init__(self, n: int, seed: int, block_size: int, cache_threshold: float = 0.3,
                 balance_abs_threshold: int = 64, balance_rel_threshold: float = 1.5) -> None:
        super().__init__(n, seed)
        self.tree = KeyTree(n, block_size)
        self.cache_threshold = cache_threshold
        self.abs, self.rel = balance_abs_threshold, balance_rel_threshold

    def route(self, req, loads, now, replicas) -> int:
        hi, lo = max(loads), min(loads)
        if hi - lo > self.abs and hi > lo * self.rel:
            i = loads.index(lo)
        else:
            depth, tenants = self.tree.match(req.keys)
            if tenants and depth * self.tree.block_size / len(req.prompt) > self.cache_threshold:
                i = min(tenants, key=lambda t: (loads[t], t))
            else:
                i = min(range(self.n), key=lambda t: (self.tree.size[t], t))
        self.tree.insert(req.keys, i, now)
        return i


class Llmds(Policy):
    name = "llmds"

    def __init__(self, n: int, seed: int, config: RouterConfig) -> None:
        super().__init__(n, seed)
        self.config = config
        self.now = 0.0
        self.table = PrefixTable(config.max_routed, clock=lambda: self.now)
        self.book = LoadBook(config.waiting_weight)
        self.next_report = [0.0] * n

    def matches(self, req, now: float, replicas) -> list[int]:
        self.now = now
        period = self.config.stats_period_s
        for r, rep in enumerate(replicas):  # each replica reports on its own period (staggered)
            if now >= self.next_report[r]:
                self.table.advertise(r, rep.bm.cached_keys())
                self.next_report[r] = now + period * (1.0 + 0.1 * self.rng.random())
        return self.table.matches(req.keys, list(range(self.n)))

    def route(self, req, loads, now, replicas) -> int:
        weighted = [self.book.load(r) for r in range(self.n)]
        i, _ = choose_replica(self.matches(req, now, replicas), weighted, self.config.max_queue_gap, self.rng)
        self.table.routed(i, req.keys)
        self.book.sent(i)
        return i

    def started(self, replica: int, req) -> None:
        self.book.first_token(replica)

    def finished(self, replica: int, req) -> None:
        self.book.finished(replica, True)


class Oracle(Llmds):
    """llmds's policy with exact knowledge of every replica's prefix index."""

    name = "oracle"

    def matches(self, req, now: float, replicas) -> list[int]:
        out = []
        for rep in replicas:
            index, hit = rep.bm.prefix_cache, 0
            for k in req.keys:
                if k not in index:
                    break
                hit += 1
            out.append(hit)
        return out

    def route(self, req, loads, now, replicas) -> int:
        weighted = [self.book.load(r) for r in range(self.n)]
        i, _ = choose_replica(self.matches(req, now, replicas), weighted, self.config.max_queue_gap, self.rng)
        self.book.sent(i)
        return i


POLICIES = ("round-robin", "power-of-two", "ray-prefix", "sglang", "llmds", "oracle")


def make_policy(name: str, n: int, seed: int, config: RouterConfig) -> Policy:
    if name == "round-robin":
        return RoundRobin(n, seed)
    if name == "power-of-two":
        return PowerOfTwo(n, seed)
    if name == "ray-prefix":
        return RayPrefixAffinity(n, seed, config.block_size)
    if name == "sglang":
        return SGLangCacheAware(n, seed, config.block_size)
    if name == "llmds":
        return Llmds(n, seed, config)
    if name == "oracle":
        return Oracle(n, seed, config)
    raise ValueError(f"unknown policy {name!r}; choose from {POLICIES}")
