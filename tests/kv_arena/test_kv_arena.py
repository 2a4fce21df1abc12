"""TensorKVCache (the CortexStream KV arena): placement, caps, views, dumps, policies."""

from __future__ import annotations

import io
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

from tests.engine.kv.test_block_manager import check_placement_stats, room_blocks  # noqa: E402

from llmds.kv_arena._report import stats_text  # noqa: E402
from llmds.kv_arena.arena import TensorKVCache  # noqa: E402
from llmds.kv_arena.policies import AllocationPolicy, allocate_with_policy  # noqa: E402
from llmds.errors import NotFoundError, StateError, ValidationError  # noqa: E402
from llmds.memory.paged_allocator import PagedAllocator  # noqa: E402


def arena(blocks=16, bs=4, layers=2, heads=2, head_dim=3, **kw) -> TensorKVCache:
    return TensorKVCache(layers, heads, head_dim, blocks * bs, block_size=bs, **kw)


def rand(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c.num_kv_heads, c.head_dim, generator=g)


# ---------------------------------------------------------------- construction and sizing
def test_shapes_bytes_and_guide_formula():
    c = TensorKVCache(3, 2, 8, 50, block_size=16)
    assert c.num_blocks == 4  # ceil(50 / 16)
    assert c.k_cache.shape == c.v_cache.shape == (3, 4, 16, 2, 8)
    total = c.k_cache.nbytes + c.v_cache.nbytes
    assert TensorKVCache.memory_bytes_needed(3, 2, 8, 50, 16) == total
    assert c.total_free_bytes == total and c.total_allocated_bytes == 0
    assert c.allocator.max_pages == 4 and c.allocator.page_size == 16
    # the guide's LLaMA-7B example: 2048 blocks * 32,768 elements * 32 layers * 2 (K, V)
    # = 4,294,967,296 elements
    assert TensorKVCache.memory_bytes_needed(32, 32, 64, 32768, 16) == 4_294_967_296 * 4
    assert (
        TensorKVCache.memory_bytes_needed(32, 32, 64, 32768, 16, torch.float16) == 4_294_967_296 * 2
    )
    c.warmup()
    assert not c.k_cache.any() and not c.v_cache.any()
    with pytest.raises(ValidationError, match="dtype"):
        TensorKVCache.memory_bytes_needed(3, 2, 8, 50, 16, "float32")
    assert repr(c).startswith("TensorKVCache(layers=3, kv_heads=2, head_dim=8, blocks=4x16")


def test_from_memory_budget_rounds_down_to_whole_blocks():
    per_block = TensorKVCache.memory_bytes_needed(2, 2, 4, 8, 8)
    c = TensorKVCache.from_memory_budget(per_block * 10 + per_block // 2, 2, 2, 4, block_size=8)
    assert c.num_blocks == 10 and c.max_total_tokens == 80
    for bad in (per_block - 1, 0, -5):
        with pytest.raises(ValidationError):
            TensorKVCache.from_memory_budget(bad, 2, 2, 4, block_size=8)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=0),
        dict(num_kv_heads=-1),
        dict(head_dim=1.5),
        dict(max_total_tokens=0),
        dict(block_size=0),
        dict(num_layers=True),
        dict(dtype=torch.int32),
        dict(dtype="float32"),
        dict(device="no-such-device"),
        dict(allocator=PagedAllocator(8, 8)),
        dict(allocator=PagedAllocator(4, 9)),
        dict(allocator=object()),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs):
    args = (
        dict(num_layers=2, num_kv_heads=2, head_dim=4, max_total_tokens=32, block_size=4) | kwargs
    )
    with pytest.raises(ValidationError):
        TensorKVCache(**args)


def test_engine_package_does_not_import_torch():
    code = (
        "import sys, llmds, llmds.engine, llmds.kv_arena.policies, llmds.engine.sched.planner,"
        " llmds.engine.kv.block_manager\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- allocation semantics
def test_exact_placement_growth_rooms_and_caps():
    c = arena(blocks=16, bs=4)
    assert c.allocate_for("a", 5, max_tokens=16)  # 2 prompt blocks, room for 2 more
    assert c.allocate_for("b", 3)  # fixed maximum: cap = one block = 4 tokens
    assert c.allocate_for("c", 4, max_tokens=8)
    assert c.block_table("a") == [0, 1] and c.block_table("b") == [4] and c.block_table("c") == [5]
    assert c.stats().reserved_blocks == 2 + 0 + 1
    assert (
        c.append_tokens("a", 11) and c.block_table("a") == [0, 1, 2, 3] and c.used_tokens("a") == 16
    )
    assert not c.append_token("a") and c.used_tokens("a") == 16  # max_tokens is a hard cap
    assert c.append_token("b") and not c.append_token("b") and c.used_tokens("b") == 4
    assert c.append_tokens("c", 4) and c.block_table("c") == [5, 6]
    assert all(c.view_is_contiguous(r) for r in "abc")
    assert c.stats().reserved_blocks == 0
    assert c.max_tokens("a") == 16 and c.max_tokens("b") == 4
    assert not c.allocate_for("d", 1, max_tokens=65)  # cap larger than the whole arena never fits
    assert c.append_tokens("c", 0) and c.used_tokens("c") == 8
    assert c.block_table_tensor("c").tolist() == [5, 6]


def test_reservation_admission_and_optimistic_growth():
    c = arena(blocks=16, bs=4)
    assert c.allocate_for("x", 4, max_tokens=40)  # reserves 10 blocks, takes 1
    assert c.available_blocks() == 15 - 9
    free_before = c.allocator.num_free
    assert not c.allocate_for("y", 4, max_tokens=32)  # 8 > 6 unpromised blocks
    assert "y" not in c and c.allocator.num_free == free_before
    assert c.allocate_for("y", 4, max_tokens=32, reserve=False)  # only the prompt block is needed
    assert c.block_table("y") == [10]  # placed after x's growth room [1, 10)
    assert c.append_tokens("y", 20) and c.block_table("y") == list(range(10, 16))
    assert c.is_full() and c.available_blocks() == 0
    assert not c.append_token("y") and c.used_tokens("y") == 24  # optimistic growth ran out
    assert c.append_tokens("x", 36) and c.block_table("x") == list(range(10))  # the promise holds
    assert c.allocator.num_free == 0 and not c.allocate_for("z", 1)
    assert c.fragmentation() == 0.0


def test_append_is_all_or_nothing_and_room_theft_falls_back():
    c = arena(blocks=4, bs=4)
    assert c.allocate_for("a", 4, max_tokens=16, reserve=False)  # [0], room [1, 4)
    assert c.allocate_for("b", 8)  # no run outside a's room: alloc_contiguous takes [1, 2]
    assert c.block_table("b") == [1, 2]
    free_before = c.allocator.num_free
    assert not c.append_tokens("a", 12)  # needs 3 blocks, 1 is free
    assert (
        c.used_tokens("a") == 4
        and c.block_table("a") == [0]
        and c.allocator.num_free == free_before
    )
    assert c.append_tokens("a", 4) and c.block_table("a") == [0, 3]
    assert not c.view_is_contiguous("a")


def test_rooms_are_released_newest_first_and_growth_falls_back():
    pool = PagedAllocator(2, 8)
    c = TensorKVCache(1, 1, 2, 16, block_size=2, allocator=pool)
    assert c.allocate_for("a", 2, max_tokens=8, reserve=False)  # [0], room [1, 4) held
    assert c.allocate_for("b", 2, max_tokens=8, reserve=False)  # [4], room [5, 8) held
    assert pool.num_free == 0 and c.available_blocks() == 6 and c.stats().free_blocks == 6
    assert c.allocate_for("c", 4)  # 2 blocks: b's room (the newest) is given back first
    assert c.block_table("c") == [5, 6]
    assert c.append_tokens("b", 2) and c.block_table("b") == [4, 7] and not c.view_is_contiguous("b")
    assert c.append_tokens("a", 6) and c.block_table("a") == [0, 1, 2, 3] and c.view_is_contiguous("a")
    assert c.is_full() and c.stats().contiguous_sequences == 2


def test_free_for_is_idempotent_and_blocks_are_reused():
    c = arena(blocks=8, bs=2)
    assert c.allocate_for(7, 6)
    gen = c.free_generation
    assert c.free_for(7) is True and c.free_for(7) is False
    assert c.free_generation == gen + 1 and 7 not in c and len(c) == 0
    assert c.allocator.num_free == 8 and c.total_allocated_bytes == 0
    assert c.allocate_for(7, 6) and c.block_table(7) == [0, 1, 2]
    assert c.free_for("never-allocated") is False


def test_typed_errors_leave_state_unchanged():
    c = arena()
    assert c.allocate_for("a", 3)
    with pytest.raises(StateError, match="already has KV blocks"):
        c.allocate_for("a", 5)
    assert c.used_tokens("a") == 3 and c.block_table("a") == [0]
    for call in (
        lambda: c.used_tokens("zz"),
        lambda: c.block_table("zz"),
        lambda: c.k_view("zz", 0),
        lambda: c.append_token("zz"),
        lambda: c.view_is_contiguous("zz"),
        lambda: c.write("zz", 0, [0], rand(1, c), rand(1, c)),
    ):
        with pytest.raises(NotFoundError, match="allocate_for"):
            call()
    for bad in (
        lambda: c.allocate_for("b", 0),
        lambda: c.allocate_for("b", -3),
        lambda: c.allocate_for("b", 5, max_tokens=4),
        lambda: c.allocate_for("b", 5, max_tokens=0),
        lambda: c.allocate_for(["unhashable"], 5),
        lambda: c.append_tokens("a", -1),
        lambda: c.k_view("a", 2),
        lambda: c.v_view("a", -1),
        lambda: c.dump_block_map(width=0),
    ):
        with pytest.raises(ValidationError):
            bad()
    assert "b" not in c and c.allocator.num_free == 15


def test_write_validates_shapes_dtypes_devices_and_positions():
    c = arena()
    c.warmup()  # torch.empty memory may hold NaN, which torch.equal would never match
    assert c.allocate_for("a", 5)
    k = rand(2, c)
    cases = [
        ([0, 1], rand(2, c)[:, :1], k, "shape"),
        ([0, 1], k.double(), k, "dtype"),
        ([0, 1], k, k.to("meta"), "device"),
        ([0, 5], k, k, "used_tokens"),
        ([-1, 0], k, k, "used_tokens"),
        ([1, 1], k, k, "distinct"),
        ([0.0, 1.0], k, k, "ints"),
        (torch.tensor([0.0, 1.0]), k, k, "integer"),
        ([[0, 1]], k, k, "1-D"),
        ([0, 1], k.numpy(), k, "torch.Tensor"),
    ]
    before = c.k_cache.clone()
    for pos, kk, vv, msg in cases:
        with pytest.raises(ValidationError, match=msg):
            c.write("a", 0, pos, kk, vv)
    assert torch.equal(c.k_cache, before)
    c.write("a", 1, 4, rand(1, c, 3), rand(1, c, 4))  # a single int position is accepted
    assert torch.equal(c.k_view("a", 1)[4], rand(1, c, 3)[0])


# ---------------------------------------------------------------- views
def test_zero_copy_views_write_through_to_the_arena():
    c = arena(blocks=8, bs=4)
    assert c.allocate_for("x", 3) and c.allocate_for("a", 6, max_tokens=16)
    assert c.view_is_contiguous("a") and c.block_table("a") == [1, 2]
    kv, vv = c.k_view("a", 1), c.v_view("a", 1)
    assert kv.shape == (6, 2, 3)
    assert kv.untyped_storage().data_ptr() == c.k_cache.untyped_storage().data_ptr()
    new_k, new_v = rand(6, c, 1), rand(6, c, 2)
    kv.copy_(new_k)
    vv.copy_(new_v)
    flat_k = c.k_cache[1, 1:3].reshape(8, 2, 3)
    assert torch.equal(flat_k[:6], new_k) and torch.equal(
        c.v_cache[1, 1:3].reshape(8, 2, 3)[:6], new_v
    )
    # grow within the room: the view stays zero-copy and covers the new token
    assert c.append_tokens("a", 4) and c.view_is_contiguous("a") and c.block_table("a") == [1, 2, 3]
    c.write("a", 1, [9], rand(1, c, 5), rand(1, c, 6))
    assert torch.equal(c.k_view("a", 1)[:6], new_k) and torch.equal(
        c.k_view("a", 1)[9], rand(1, c, 5)[0]
    )


def test_gathered_copy_when_blocks_are_scattered():
    c = arena(blocks=4, bs=2)
    for r in "ABCD":
        assert c.allocate_for(r, 2)
    c.free_for("A")
    c.free_for("C")  # free list: 2, 0 (freed pages go to the head)
    assert c.fragmentation() == pytest.approx(0.5)
    assert c.allocate_for("E", 4)  # no free run of 2: falls back to alloc
    assert c.block_table("E") == [2, 0] and not c.view_is_contiguous("E")
    k, v = rand(4, c, 1), rand(4, c, 2)
    c.write("E", 0, torch.arange(4), k, v)
    assert torch.equal(c.k_cache[0, 2], k[:2]) and torch.equal(c.k_cache[0, 0], k[2:])
    view = c.k_view("E", 0)
    assert torch.equal(view, k) and torch.equal(c.v_view("E", 0), v)
    view.zero_()  # a copy: the arena is unchanged
    assert torch.equal(c.k_view("E", 0), k)
    k3, v3 = rand(1, c, 7), rand(1, c, 8)
    c.write("E", 1, 3, k3, v3)  # one int position in the second block (page 0, offset 1)
    assert torch.equal(c.k_cache[1, 0, 1], k3[0]) and torch.equal(c.v_view("E", 1)[3], v3[0])
    c.write("E", 1, torch.tensor([2, 1]), k[:2], v[:2])  # unsorted, across blocks
    assert torch.equal(c.k_cache[1, 0, 0], k[0]) and torch.equal(c.k_cache[1, 2, 1], k[1])
    assert c.stats().contiguous_sequences == 2


def test_all_layer_views_equal_per_layer_views():
    c = arena(blocks=4, bs=2)
    for r in "ABCD":
        assert c.allocate_for(r, 2)
    c.free_for("A")
    c.free_for("C")
    assert c.allocate_for("E", 3) and not c.view_is_contiguous("E")  # scattered: gathered copy
    assert c.view_is_contiguous("B")
    for r in ("B", "E"):
        n = c.used_tokens(r)
        for layer in range(c.num_layers):
            c.write(r, layer, range(n), rand(n, c, 10 * layer + 1), rand(n, c, 10 * layer + 2))
        k_all, v_all = c.kv_views(r)
        assert k_all.shape == (c.num_layers, n, c.num_kv_heads, c.head_dim)
        for layer in range(c.num_layers):
            assert torch.equal(k_all[layer], c.k_view(r, layer))
            assert torch.equal(v_all[layer], c.v_view(r, layer))
    k_all, _ = c.kv_views("B")  # zero-copy: writing through it changes the arena
    k_all[1, 0].fill_(7.0)
    assert torch.all(c.k_view("B", 1)[0] == 7.0)
    k_all, _ = c.kv_views("E")  # a copy: the arena is unchanged
    k_all.fill_(9.0)
    assert not torch.any(c.k_view("E", 0) == 9.0)
    with pytest.raises(NotFoundError):
        c.kv_views("nobody")


def test_shared_allocator_cached_pages_are_left_to_their_owner():
    reclaimed: list[int] = []
    pool = PagedAllocator(2, 8, on_reclaim=reclaimed.append)
    c = TensorKVCache(1, 1, 2, 16, block_size=2, allocator=pool)
    owner = pool.alloc(2)  # a prefix cache keeps page 1's content after freeing it
    pool.mark_cached(owner[1])
    pool.free(owner)
    assert c.allocate_for("a", 2, max_tokens=4)
    assert c.block_table("a") == [2]  # run [0, 1) is too short for the cap; page 1 is cached
    pool.mark_cached(0)  # the free-list head becomes a cached prefix block too
    assert c.append_token("a") and c.append_token("a")
    assert c.block_table("a") == [2, 3] and reclaimed == []  # grown inside its room
    assert c.allocate_for("big", 8)  # 4 uncached blocks are free: no reclaim
    assert sorted(c.block_table("big")) == [4, 5, 6, 7] and reclaimed == []
    c.free_for("big")
    assert c.allocate_for("bigger", 12)  # 6 blocks: only possible by reclaiming the cached pages
    assert sorted(reclaimed) == [0, 1] and sorted(c.block_table("bigger")) == [0, 1, 4, 5, 6, 7]
    assert c.is_full()


# ---------------------------------------------------------------- dumps
GUIDE_STATS = """\
=== KVCache Statistics ===
Configuration:
  Layers: 32, Heads: 32, HeadDim: 64
  BlockSize: 16, TotalBlocks: 2048
Allocation State:
  Allocated sequences: 5
  Total allocated: 1024.00 MB
  Total free: 7168.00 MB
  Fragmentation: 0.05
Sequences:
  req_001: 512/512 tokens, blocks [0, +32]
  req_002: 256/512 tokens, blocks [32, +32]
"""


def test_stats_text_reproduces_the_guide_example():
    class Stub:
        num_layers, num_kv_heads, head_dim, block_size, num_blocks = 32, 32, 64, 16, 2048
        total_allocated_bytes, total_free_bytes = 1024 * 2**20, 7168 * 2**20

        def fragmentation(self):
            return 0.05

    seqs = [("req_001", 512, 512, list(range(32))), ("req_002", 256, 512, list(range(32, 64)))]
    # the guide lists 5 sequences and elides three with "..."; we print the two it shows
    text = stats_text(Stub(), seqs)
    assert text.replace("Allocated sequences: 2", "Allocated sequences: 5") == GUIDE_STATS


def test_dump_stats_and_block_map_exact():
    c = TensorKVCache(4, 8, 64, 1024, block_size=16)  # 64 blocks of 0.25 MB (K and V, 4 layers)
    assert c.allocate_for("req_001", 512, max_tokens=512)
    assert c.allocate_for("req_002", 256, max_tokens=512)
    out = io.StringIO()
    text = c.dump_stats(out)
    assert (
        out.getvalue()
        == text
        == (
            "=== KVCache Statistics ===\nConfiguration:\n  Layers: 4, Heads: 8, HeadDim: 64\n"
            "  BlockSize: 16, TotalBlocks: 64\nAllocation State:\n  Allocated sequences: 2\n"
            "  Total allocated: 12.00 MB\n  Total free: 4.00 MB\n  Fragmentation: 0.00\n"
            "Sequences:\n  req_001: 512/512 tokens, blocks [0, +32]\n"
            "  req_002: 256/512 tokens, blocks [32, +16]\n"
        )
    )
    out = io.StringIO()
    c.free_for("req_001")
    assert c.allocate_for("s", 16) and c.allocate_for(
        "t", 16, max_tokens=32
    )  # [0] and [1], room [2]
    c.free_for("s")
    text = c.dump_block_map(out, width=32)
    assert (
        out.getvalue()
        == text
        == (
            "KVBlockAllocator State:\n  Total blocks: 64\n  Used: 17 Free: 47\n"
            "  Fragmentation: 0.36\n"
            "  Block map (. = free, X = used):\n"
            "    .X..............................\n    XXXXXXXXXXXXXXXX................\n"
        )
    )
    assert c.fragmentation() == pytest.approx(1 - 30 / 47)


def test_block_map_header_matches_the_guide_example():
    c = TensorKVCache(1, 1, 1, 2048 * 16, block_size=16)
    assert c.allocate_for("r", 128 * 16)
    lines = c.dump_block_map(io.StringIO()).splitlines()
    assert lines[:5] == [
        "KVBlockAllocator State:",
        "  Total blocks: 2048",
        "  Used: 128 Free: 1920",
        "  Fragmentation: 0.00",
        "  Block map (. = free, X = used):",
    ]
    assert lines[5] == "    " + "X" * 64 and lines[7] == "    " + "." * 64 and len(lines) == 5 + 32


# ---------------------------------------------------------------- OOM policies
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_reject_policy():
    c = arena(blocks=4, bs=4)
    assert allocate_with_policy(c, "a", 8, 16, "reject")
    g = allocate_with_policy(c, "b", 8, 16, AllocationPolicy.REJECT)
    assert not g and g.attempts == 1 and "b" not in c


def test_reduce_policy_halves_max_tokens_down_to_the_prompt():
    c = arena(blocks=16, bs=4)
    assert c.allocate_for("hog", 4, max_tokens=32)  # 8 blocks promised
    g = allocate_with_policy(c, "r", 10, 200, AllocationPolicy.SHRINK)  # 200, 100, 50 fail; 25 fits
    assert (
        g.granted and g.max_tokens == 25 and g.attempts == 4 and g.policy is AllocationPolicy.REDUCE
    )
    assert c.max_tokens("r") == 25 and c.used_tokens("r") == 10
    c.free_for("r")
    assert c.allocate_for("hog2", 4, max_tokens=24)  # 2 unpromised blocks left
    g = allocate_with_policy(c, "s", 10, 40, "shrink")  # 40, 20, 10 (3 blocks) all fail
    assert not g and g.attempts == 3 and g.max_tokens == 40 and "s" not in c
    c.free_for("hog2")
    assert c.allocate_for("hog3", 4, max_tokens=20)  # 3 unpromised blocks left
    g = allocate_with_policy(c, "s", 10, 30, "reduce")  # 30, 15, then the prompt's 10 (not 7)
    assert g.granted and g.max_tokens == 10 and g.attempts == 3
    c.free_for("s")
    g = allocate_with_policy(c, "s", 13, None, "reduce")
    assert not g and g.attempts == 1
    with pytest.raises(ValidationError, match="policy"):
        allocate_with_policy(c, "s", 1, None, "evict")


def test_wait_policy_retries_after_frees_on_an_injected_clock():
    c = arena(blocks=4, bs=4)
    assert c.allocate_for("blocker", 12)
    clock, seen = FakeClock(), []

    def wait_fn(remaining):
        seen.append(remaining)
        clock.now += 1.0
        if len(seen) == 3:
            c.free_for("blocker")

    g = allocate_with_policy(c, "w", 8, None, "wait", timeout=10, clock=clock, wait_fn=wait_fn)
    assert g.granted and g.attempts == 4 and g.waited == 3.0 and seen == [10.0, 9.0, 8.0]
    assert c.block_table("w") == [0, 1]


def test_wait_policy_times_out_and_validates():
    c = arena(blocks=4, bs=4)
    assert c.allocate_for("blocker", 12)
    clock = FakeClock()

    def wait_fn(remaining):
        clock.now += 4.0

    g = allocate_with_policy(c, "w", 8, None, "wait", timeout=10, clock=clock, wait_fn=wait_fn)
    assert not g and g.attempts == 4 and g.waited == 12.0 and "w" not in c
    g = allocate_with_policy(c, "w", 8, None, "wait", timeout=0, clock=clock, wait_fn=wait_fn)
    assert not g and g.attempts == 1
    g = allocate_with_policy(c, "w", 8, 100, "wait", timeout=10, clock=clock, wait_fn=wait_fn)
    assert not g and g.attempts == 0  # larger than the whole arena: no point waiting
    for bad in (None, -1, float("inf"), "5"):
        with pytest.raises(ValidationError, match="timeout"):
            allocate_with_policy(c, "w", 8, None, "wait", timeout=bad, clock=clock, wait_fn=wait_fn)


def test_wait_policy_default_wait_uses_the_generation_read_before_the_attempt(monkeypatch):
    c = arena(blocks=4, bs=4)
    assert c.allocate_for("blocker", 12)
    assert c.allocate_for("x", 4)
    c.free_for("x")  # free_generation is now 1
    assert c.allocate_for("blocker2", 4)
    clock, calls = FakeClock(), []

    def fake_wait(generation, timeout):
        calls.append((generation, timeout))
        clock.now += 5.0
        return False

    monkeypatch.setattr(c, "wait_for_free", fake_wait)
    g = allocate_with_policy(c, "w", 8, None, "wait", timeout=8, clock=clock)
    assert not g and calls == [(1, 8.0), (1, 3.0)]


def test_wait_policy_wakes_on_free_from_another_thread():
    c = arena(blocks=4, bs=4)
    assert c.allocate_for("blocker", 12)
    result = {}
    t = threading.Thread(
        target=lambda: result.update(g=allocate_with_policy(c, "w", 8, None, "wait", timeout=120))
    )
    t.start()
    c.free_for(
        "blocker"
    )  # before or after the waiter blocks: the generation counter loses no wake-up
    t.join(timeout=120)
    assert not t.is_alive() and result["g"].granted and "w" in c
    gen = c.free_generation
    c.free_for("w")
    assert c.wait_for_free(gen, timeout=120) is True  # a free already happened: returns at once


# ---------------------------------------------------------------- invariants under random ops
class ArenaMachine(RuleBasedStateMachine):
    """Random allocate/append/free/write/view against a dict-of-tensors reference model,
    on a pool shared with an outside user that takes, frees and caches pages."""

    IDS = st.integers(0, 5)

    def __init__(self):
        super().__init__()
        self.pool = PagedAllocator(2, 12)
        self.c = TensorKVCache(2, 2, 3, 24, block_size=2, allocator=self.pool)
        self.ref: dict[
            int, dict
        ] = {}  # rid -> used, cap, reserved, k/v [layers, cap, H, D], known mask
        self.outside: list[int] = []  # pages held by the other pool user
        self.seed = 0

    def _blocks(self, tokens):
        return -(-tokens // 2)

    @rule(
        rid=IDS,
        prompt=st.integers(1, 12),
        extra=st.none() | st.integers(0, 16),
        reserve=st.booleans(),
    )
    def allocate(self, rid, prompt, extra, reserve):
        if rid in self.ref:
            with pytest.raises(StateError):
                self.c.allocate_for(
                    rid, prompt, None if extra is None else prompt + extra, reserve=reserve
                )
            return
        cap = self._blocks(prompt) * 2 if extra is None else prompt + extra
        need = self._blocks(cap) if reserve else self._blocks(prompt)
        expected = self._blocks(cap) <= 12 and need <= self.c.available_blocks()
        got = self.c.allocate_for(rid, prompt, None if extra is None else cap, reserve=reserve)
        assert got == expected
        if got:
            shape = (2, cap, 2, 3)
            self.ref[rid] = dict(
                used=prompt,
                cap=cap,
                reserved=reserve,
                k=torch.zeros(shape),
                v=torch.zeros(shape),
                known=torch.zeros(2, cap, dtype=torch.bool),
            )

    @rule(rid=IDS, n=st.integers(0, 5))
    def append(self, rid, n):
        if rid not in self.ref:
            with pytest.raises(NotFoundError):
                self.c.append_tokens(rid, n)
            return
        r = self.ref[rid]
        bm = self.c.block_manager
        before = (self.c.block_table(rid), bm.num_free_blocks)
        k = self._blocks(r["used"] + n) - self._blocks(r["used"])
        room = bm.num_free_blocks if r["reserved"] else self.c.available_blocks()
        expected = r["used"] + n <= r["cap"] and k <= room
        assert self.c.append_tokens(rid, n) == expected
        if expected:
            r["used"] += n
        else:
            assert (self.c.block_table(rid), bm.num_free_blocks) == before
        assert self.c.used_tokens(rid) == r["used"]

    @rule(rid=IDS)
    def free(self, rid):
        assert self.c.free_for(rid) == (rid in self.ref)
        self.ref.pop(rid, None)
        assert self.c.free_for(rid) is False

    @precondition(lambda self: self.ref)
    @rule(data=st.data(), layer=st.integers(0, 1))
    def write(self, data, layer):
        rid = data.draw(st.sampled_from(sorted(self.ref)))
        r = self.ref[rid]
        pos = data.draw(
            st.lists(st.integers(0, r["used"] - 1), min_size=1, max_size=r["used"], unique=True)
        )
        self.seed += 1
        k, v = rand(len(pos), self.c, self.seed), rand(len(pos), self.c, -self.seed)
        self.c.write(rid, layer, torch.tensor(pos), k, v)
        r["k"][layer, pos], r["v"][layer, pos], r["known"][layer, pos] = k, v, True

    @precondition(lambda self: self.ref)
    @rule(data=st.data(), layer=st.integers(0, 1))
    def read_views(self, data, layer):
        rid = data.draw(st.sampled_from(sorted(self.ref)))
        r = self.ref[rid]
        kv, vv = self.c.k_view(rid, layer), self.c.v_view(rid, layer)
        assert kv.shape == vv.shape == (r["used"], 2, 3)
        known = r["known"][layer, : r["used"]]
        assert torch.equal(kv[known], r["k"][layer, : r["used"]][known])
        assert torch.equal(vv[known], r["v"][layer, : r["used"]][known])
        shares = kv.untyped_storage().data_ptr() == self.c.k_cache.untyped_storage().data_ptr()
        assert shares == self.c.view_is_contiguous(rid)

    @precondition(lambda self: self.pool.num_free)
    @rule(cache_it=st.booleans())
    def outside_takes_a_page(self, cache_it):
        p = self.pool.alloc(1)[0]
        if cache_it:  # the outside user's prefix index keeps the content after the free
            self.pool.mark_cached(p)
            self.pool.free([p])
        else:
            self.outside.append(p)

    @precondition(lambda self: self.outside)
    @rule()
    def outside_frees_a_page(self):
        self.pool.free([self.outside.pop()])

    @invariant()
    def every_block_accounted_once(self):
        c, pool, bs = self.c, self.pool, 2
        tables = {rid: c.block_table(rid) for rid in self.ref}
        assert set(tables) == {rid for rid in range(6) if rid in c} and len(c) == len(self.ref)
        rooms = room_blocks(c.block_manager, [e.seq for e in c._seqs.values()])  # held for growth: in no table
        owned = [b for t in tables.values() for b in t] + self.outside + rooms
        assert len(owned) == len(set(owned)) == pool.num_allocated
        assert pool.num_free + pool.num_allocated == c.num_blocks == 12
        assert all(pool.refcount(b) == 1 and not pool.is_cached(b) for b in owned)
        assert c.block_manager.num_free_blocks == pool.num_free + len(rooms) == c.stats().free_blocks
        assert c.total_allocated_bytes + c.total_free_bytes == c.k_cache.nbytes + c.v_cache.nbytes
        reserved = 0
        for rid, t in tables.items():
            r = self.ref[rid]
            assert len(t) == -(-r["used"] // bs) and c.used_tokens(rid) == r["used"]
            assert c.view_is_contiguous(rid) == all(b == a + 1 for a, b in zip(t, t[1:], strict=False))
            if r["reserved"]:
                reserved += -(-r["cap"] // bs) - len(t)
        assert c.stats().reserved_blocks == reserved
        assert c.stats().contiguous_sequences == sum(c.view_is_contiguous(rid) for rid in tables)
        check_placement_stats(c.block_manager, [e.seq for e in c._seqs.values()])
        assert 0.0 <= c.fragmentation() < 1.0

    def teardown(self):
        for rid in list(self.ref):
            assert self.c.free_for(rid)
        assert len(self.c) == 0 and self.c.stats().reserved_blocks == 0
        assert self.c.block_manager.stats()["room_blocks"] == 0
        assert self.pool.num_free == 12 - len(self.outside)


TestArenaMachine = ArenaMachine.TestCase
TestArenaMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
