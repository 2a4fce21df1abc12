"""The sampler on synthetic logits: exact results for the deterministic parts, seeds, distributions."""

from __future__ import annotations

import math

import pytest
import torch

from llmds.engine.config import SamplingParams
from llmds.engine.sampling import Sampler, SampleRow
from llmds.errors import ValidationError

V = 50


def rows(*params, prompt=(1, 2, 3), out=None):
    return [SampleRow(p, list(prompt), list(out or [])) for p in params]


def logits(n, seed=0):
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_logprobs_are_log_softmax():
    x = logits(4)
    toks, lps = Sampler()(x, rows(*[SamplingParams(temperature=0, logprobs=3)] * 4))
    assert toks == x.argmax(-1).tolist()
    ref = torch.log_softmax(x, -1)
    for i, lp in enumerate(lps):
        assert lp.token_id == toks[i] and math.isclose(lp.logprob, float(ref[i, toks[i]]), abs_tol=1e-6)
        assert [t for t, _ in lp.top] == ref[i].topk(3).indices.tolist()


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_filters_that_leave_one_token_equal_greedy(kw):
    x = logits(6, seed=1)
    toks, _ = Sampler(seed=3)(x, rows(*[SamplingParams(temperature=1.3, **kw)] * 6))
    assert toks == x.argmax(-1).tolist()


def test_top_k_and_top_p_only_sample_allowed_tokens():
    x = logits(1, seed=2)
    order = x[0].argsort(descending=True).tolist()
    s = Sampler(seed=0)
    seen_k = {s(x, rows(SamplingParams(top_k=3)))[0][0] for _ in range(200)}
    assert seen_k <= set(order[:3]) and len(seen_k) > 1
    p = torch.softmax(x[0], -1)[order]
    nucleus = next(i for i in range(V) if float(p[: i + 1].sum()) >= 0.8) + 1
    seen_p = {s(x, rows(SamplingParams(top_p=0.8)))[0][0] for _ in range(300)}
    assert seen_p <= set(order[:nucleus])


def test_temperature_sampling_follows_the_distribution():
    x = torch.tensor([[0.0, math.log(3.0), float("-inf")] + [float("-inf")] * (V - 3)])
    s = Sampler(seed=7)
    draws = [s(x, rows(SamplingParams()))[0][0] for _ in range(4000)]
    frac = draws.count(1) / len(draws)
    assert 2 not in draws and abs(frac - 0.75) < 0.03  # 6 sigma band of Bernoulli(0.75), n=4000


def test_seeded_rows_do_not_depend_on_the_batch():
    x = logits(5, seed=3)
    seeded = SamplingParams(temperature=1.0, seed=42)
    alone = [Sampler(seed=1)(x[2:3], rows(seeded))[0][0] for _ in range(1)]
    batch_params = [SamplingParams(temperature=0.8), SamplingParams(temperature=0), seeded,
                    SamplingParams(top_k=5), SamplingParams(temperature=2.0, seed=7)]
    together = Sampler(seed=99)(x, rows(*batch_params))[0][2]
    assert together == alone[0]
    # the seed's stream advances one draw per token: a second step differs from the first in general
    r = rows(seeded)
    s = Sampler()
    seq = [s(x[2:3], r)[0][0] for _ in range(20)]
    r2 = rows(seeded)
    assert seq == [Sampler(seed=5)(x[2:3], r2)[0][0] for _ in range(20)]


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    x = logits(1, seed=4)
    prompt, out = [3, 7, 7, 11], [11, 20]
    params = SamplingParams(temperature=0, repetition_penalty=1.7)
    proc = transformers.RepetitionPenaltyLogitsProcessor(1.7)
    ref = proc(torch.tensor([prompt + out]), x.clone())
    from llmds.engine.sampling import _penalize

    got = x.clone()
    _penalize(got[0], SampleRow(params, prompt, out))
    assert torch.allclose(got, ref)


def test_presence_and_frequency_penalties_follow_openai():
    x = logits(1, seed=5)
    out = [4, 4, 4, 9]
    params = SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=1.25)
    from llmds.engine.sampling import _penalize

    got = x.clone()[0]
    _penalize(got, SampleRow(params, [1], out))
    ref = x.clone()[0]
    ref[4] -= 1.25 * 3 + 0.5
    ref[9] -= 1.25 * 1 + 0.5
    assert torch.allclose(got, ref)


@pytest.mark.parametrize("kw", [{"temperature": -1}, {"top_p": 0}, {"top_k": 0}, {"min_p": 1.5},
                                {"max_tokens": -1}, {"stop": [""]}, {"stop": 5}, {"logprobs": 21},
                                {"repetition_penalty": 0}, {"presence_penalty": 3}, {"seed": "x"},
                                {"temperature": float("nan")}, {"ignore_eos": 1}])
def test_bad_sampling_params_raise(kw):
    with pytest.raises(ValidationError):
        SamplingParams(**kw)


def test_stop_accepts_one_string():
    assert SamplingParams(stop="###").stop == ("###",)


@pytest.mark.parametrize("width", [3, 400])  # inside the top NUCLEUS_K, and wider (the whole row is sorted)
def test_top_p_draws_follow_the_renormalized_nucleus(width):
    """Frequencies inside the nucleus match its renormalized probabilities; nothing outside is drawn."""
    n = 600
    x = torch.full((1, n), -30.0)
    p = torch.linspace(2.0, 1.0, width)  # decreasing, distinct
    x[0, :width] = p.log()
    probs = torch.softmax(x[0], -1)
    cum = probs.cumsum(0)
    nucleus = int((cum - probs <= 0.7).sum())  # the smallest prefix reaching 0.7
    want = probs[:nucleus] / probs[:nucleus].sum()
    s = Sampler(seed=11)
    draws = torch.tensor([s(x, rows(SamplingParams(top_p=0.7)))[0][0] for _ in range(3000)])
    assert int(draws.max()) < nucleus
    if width == 3:  # few tokens: each frequency within 5 sigma
        freq = torch.bincount(draws, minlength=nucleus).double() / len(draws)
        assert torch.all((freq - want).abs() <= 5 * (want * (1 - want) / len(draws)).sqrt())
    else:  # many: the mean index within 5 sigma of the nucleus's
        idx = torch.arange(nucleus, dtype=torch.float64)
        mean, sd = float((want * idx).sum()), float((want * (idx - (want * idx).sum()) ** 2).sum().sqrt())
        assert abs(float(draws.double().mean()) - mean) <= 5 * sd / math.sqrt(len(draws))


def test_inverse_cdf_never_draws_a_token_of_probability_zero():
    from llmds.engine.sampling import _draw

    probs = torch.tensor([[0.0, 0.0, 0.25, 0.0, 0.75, 0.0, 0.0]] * 4)
    u = torch.tensor([0.0, 0.25 - 1e-6, 0.25 + 1e-6, 1.0 - 1e-16], dtype=torch.float64)
    assert _draw(probs, u) == [2, 2, 4, 4]


def test_min_p_and_top_p_together_keep_only_what_both_allow():
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [1e-9] * (V - 4)]))
    s = Sampler(seed=2)
    seen = {s(x, rows(SamplingParams(top_p=0.95, min_p=0.4)))[0][0] for _ in range(300)}
    assert seen == {0, 1}  # top_p keeps 0..2; min_p (0.4 * 0.5 = 0.2) drops 2


@pytest.mark.parametrize("min_p", [0.0, 0.05])
def test_the_plain_kernel_inverts_the_float64_cdf(min_p):
    """sample_rows against a float64 inverse CDF of softmax(x / T) with the min-p floor, for many u:
    the same token wherever u is not within float32 rounding of a boundary."""
    import numpy as np

    from llmds.engine._sample_kernel import sample_rows

    g = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 300, generator=g) * 2).numpy()
    x[1, 7] = -np.inf  # a masked token
    temps = np.array([1.0, 0.7, 1.3, 2.0, 0.5, 1.0], dtype=np.float32)
    floors = np.full(6, np.log(min_p) if min_p else -np.inf, dtype=np.float32)
    for u0 in np.linspace(0.0, 0.999, 37):
        u = (u0 + np.arange(6) * 0.013) % 1.0
        out = np.empty(6, dtype=np.int64)
        sample_rows(x, np.arange(6), temps, floors, u, np.empty((6, 300), np.float32), out)
        for j in range(6):
            z = (x[j].astype(np.float64) - x[j].max()) / temps[j]
            w = np.where(z >= floors[j], np.exp(z), 0.0)
            cdf = np.cumsum(w)
            want = int(np.searchsorted(cdf, u[j] * cdf[-1], side="right"))
            near = np.abs(cdf - u[j] * cdf[-1]).min() < 1e-5 * cdf[-1]
            assert out[j] == want or near, (j, u[j])
            assert w[out[j]] > 0  # never a token of weight 0 (the masked one, or under the floor)
