"""KVStorage: layout, slot arithmetic, writes and views by caller-given block tables, sizing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llmds.engine.kv.storage import KVStorage  # noqa: E402
from llmds.errors import ValidationError  # noqa: E402


def shares(view: torch.Tensor, base: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()


def test_layout_is_layer_major_with_flat_slot_views():
    s = KVStorage(3, 2, 4, num_blocks=5, block_size=4)
    assert s.k_cache.shape == s.v_cache.shape == (3, 5, 4, 2, 4)
    assert s.k_cache[1].is_contiguous() and s.num_slots == 20
    flat = s.k_layer(1)
    assert flat.shape == (20, 2, 4) and shares(flat, s.k_cache)
    flat[2 * 4 + 3] = 7.0  # slot = block * block_size + offset
    assert torch.all(s.k_cache[1, 2, 3] == 7.0) and torch.all(s.k_cache[1].view(-1, 2, 4)[11] == 7.0)
    assert s.nbytes == 2 * 3 * 5 * 4 * 2 * 4 * 4
    assert repr(s).startswith("KVStorage(layers=3, kv_heads=2, head_dim=4, blocks=5x4")


def test_sizing_from_a_memory_budget_in_bfloat16():
    per_block = KVStorage.bytes_per_block(30, 3, 64, 16, torch.bfloat16)
    assert per_block == 2 * 30 * 3 * 64 * 16 * 2
    s = KVStorage.from_memory_budget(per_block * 7 + per_block // 2, 30, 3, 64, 16, torch.bfloat16)
    assert s.num_blocks == 7 and s.dtype is torch.bfloat16 and s.nbytes == 7 * per_block
    for bad in (per_block - 1, 0, -1, 2.5):
        with pytest.raises(ValidationError):
            KVStorage.from_memory_budget(bad, 30, 3, 64, 16, torch.bfloat16)
    k = torch.full((3, 3, 64), 1.5, dtype=torch.bfloat16)
    s.write(29, s.slot_mapping([6, 2], 15, 18), k, -k)  # crosses from block 6 into block 2
    assert torch.equal(s.k_view(29, [6, 2], 18)[15:], k) and torch.equal(s.v_view(29, [6, 2], 18)[15:], -k)


@pytest.mark.parametrize("kwargs", [dict(num_layers=0), dict(num_kv_heads=-1), dict(head_dim=1.5),
                                    dict(num_blocks=0), dict(block_size=True), dict(dtype=torch.int64),
                                    dict(dtype="float32"), dict(device="no-such-device")])
def test_constructor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValidationError):
        KVStorage(**(dict(num_layers=2, num_kv_heads=1, head_dim=2, num_blocks=4, block_size=2) | kwargs))


tables = st.integers(1, 6).flatmap(
    lambda n: st.tuples(st.permutations(range(8)).map(lambda p: list(p[:n])), st.integers(1, n * 3))
)


@settings(max_examples=60, deadline=None)
@given(table_n=tables, data=st.data())
def test_writes_and_views_equal_a_slot_reference(table_n, data):
    """Random tables (runs or not), positions and values against a {slot: value} reference."""
    table, n = table_n
    s = KVStorage(2, 1, 2, num_blocks=8, block_size=3, dtype=torch.float64)
    s.warmup()
    ref: dict[int, tuple] = {}
    for layer in range(2):
        pos = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
        k = torch.tensor([[[layer, float(p)]] for p in pos], dtype=torch.float64)
        slots, m = s.slots(table, torch.tensor(pos), n)
        assert m == len(pos)
        s.write(layer, slots, k, k + 100)
        for p in pos:
            ref[(layer, p)] = (float(layer), float(p))
    run = all(b - a == 1 for a, b in zip(table, table[1:]))
    mapping = s.slot_mapping(table, 0, n).tolist()
    assert mapping == [table[p // 3] * 3 + p % 3 for p in range(n)]
    k_all, v_all = s.kv_views(table, n)
    for layer in range(2):
        for contiguous in (None, run):
            k, v = s.view(layer, table, n, contiguous)
            assert k.shape == v.shape == (n, 1, 2)
            assert shares(k, s.k_cache) == (run or n == 0) and shares(v, s.v_cache) == (run or n == 0)
            for p in range(n):
                want = ref.get((layer, p), (0.0, 0.0))
                assert tuple(k[p, 0].tolist()) == want and tuple((v[p, 0] - (100 if (layer, p) in ref else 0)).tolist()) == want
        assert torch.equal(k_all[layer], s.k_view(layer, table, n)) and torch.equal(v_all[layer], s.v_view(layer, table, n))
    tensor_table = torch.tensor(table)
    assert torch.equal(s.k_view(1, tensor_table, n), s.k_view(1, table, n))


def test_writes_validate_and_change_nothing():
    s = KVStorage(2, 1, 2, num_blocks=4, block_size=2)
    s.warmup()
    k = torch.ones(2, 1, 2)
    cases = [
        (0, [0, 1], k[:, :, :1], "shape"),
        (0, [0, 1], k.double(), "dtype"),
        (0, [0, 1], k.to("meta"), "device"),
        (0, [0, 8], k, r"\[0, 8\)"),
        (0, [-1, 0], k, r"\[0, 8\)"),
        (0, slice(7, 9), k, "slot slice"),
        (0, slice(0, 4, 2), k, "slot slice"),
        (2, [0, 1], k, "layer"),
        (0, [[0, 1]], k, "1-D"),
        (0, torch.tensor([0.0, 1.0]), k, "integer"),
    ]
    for layer, slots, kk, msg in cases:
        with pytest.raises(ValidationError, match=msg):
            s.write(layer, slots, kk, kk)
    assert not s.k_cache.any() and not s.v_cache.any()
    with pytest.raises(ValidationError, match="positions must be in"):
        s.slots([0, 1], [0, 3], 3)
    with pytest.raises(ValidationError, match="distinct"):
        s.slots([3, 1], [1, 0, 1], 3)
    with pytest.raises(ValidationError, match="does not fit"):
        s.k_view(0, [0], 3)
    with pytest.raises(ValidationError):
        s.slot_mapping([0, 1], 2, 5)
    s.write(1, 5, k[:1], k[:1])  # an int slot
    s.write(1, slice(2, 4), k, k)  # a slice
    s.write(1, torch.tensor([4]), k[:1], k[:1])  # a slot tensor
    assert torch.all(s.k_layer(1)[2:6] == 1.0) and not s.k_layer(0).any()


def test_readme_kv_path_example_runs_as_documented():
    from tests.test_seed_docs import doc_python_blocks

    (block,) = doc_python_blocks("The KV path")
    ns: dict = {"__name__": "__readme__"}
    exec(compile(block, "<docs>", "exec"), ns)
    kv, bm = ns["kv"], ns["bm"]
    assert kv.dtype is torch.bfloat16 and kv.nbytes <= 64 << 20 < kv.nbytes + kv.bytes_per_block(30, 3, 64, 16, torch.bfloat16)
    assert ns["slots"].tolist() == list(range(40)) and ns["K"].shape == (40, 3, 64)
    assert shares(ns["K"], kv.k_cache) and bm.num_free_blocks == kv.num_blocks
