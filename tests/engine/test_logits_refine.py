"""refine_top_logits: the logits a bfloat16 lm_head rounds onto one grid step of the best are
recomputed in float32, so greedy picks the token whose unrounded logit is highest."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.models.llama import refine_top_logits


def _exact(x, rows):
    return x.double() @ rows.double().T


def _tie(seed: int, R: int = 3, H: int = 64, V: int = 500):
    """Rows whose best two tokens' exact logits (~25) differ by less than bfloat16's step there (0.125)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(R, H, generator=g) + 0.5).bfloat16()
    rows = (torch.randn(V, H, generator=g) * 0.05).bfloat16()
    for r in range(R):
        a, b = 2 * r, 2 * r + 1
        base = x[r].float() * (25.0 / float(x[r].float().square().sum()))
        rows[a] = base.bfloat16()
        rows[b] = rows[a]
        j = int(torch.randint(H, (1,), generator=g))
        rows[b, j] = (rows[b, j].float() + 0.04 / float(x[r, j])).bfloat16()  # ~ +0.04 on row b's logit
    return x, rows


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_greedy_follows_the_unrounded_logits(seed):
    x, rows = _tie(seed)
    logits = (x @ rows.T).float()  # what a bfloat16 linear returns
    exact = _exact(x, rows)
    best = exact.argmax(1)
    refined = logits.clone()
    refine_top_logits(refined, x, rows)
    assert torch.equal(refined.argmax(1), best)
    near = logits >= logits.amax(1, keepdim=True) - logits.amax(1, keepdim=True).abs() * 2.0**-7
    assert torch.allclose(refined[near].double(), exact[near], rtol=1e-6, atol=1e-5)
    assert torch.equal(refined[~near], logits[~near])  # the rest is untouched


def test_rounding_alone_loses_the_order():
    """Without the refinement the bfloat16 logits of the pairs above tie or swap (so the test above
    checks something)."""
    wrong = 0
    for seed in range(30):
        x, rows = _tie(seed)
        logits = (x @ rows.T).float()
        top2 = logits[torch.arange(3), :6].view(3, 3, 2)[torch.arange(3), torch.arange(3)]
        wrong += int((top2[:, 1] <= top2[:, 0]).sum())
    assert wrong > 0


def test_flat_rows_are_left_alone():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, generator=g).bfloat16()
    rows = torch.randn(100, 32, generator=g).bfloat16()
    logits = (x @ rows.T).float()
    logits[1] = 10.0  # 100 candidates tie in row 1: more than max_per_row
    before = logits.clone()
    refine_top_logits(logits, x, rows, max_per_row=16)
    assert torch.equal(logits[1], before[1])
    assert int(logits[0].argmax()) == int(_exact(x, rows)[0].argmax())
