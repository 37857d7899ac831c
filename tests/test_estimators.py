"""Conformance table for every estimator x perturbation: adding one is adding a row."""

from __future__ import annotations

import math

import pytest
import torch

from zoft.core import ParamSpace, derive_seed
from zoft.estimators import ESTIMATORS, make_estimator
from zoft.perturb import PERTURBATIONS, SAMPLERS

# (estimator, options) rows; every row must give an (asymptotically) unbiased estimate
ROWS = [
    ("central", dict(perturbation="gaussian")),
    ("central", dict(perturbation="rademacher")),
    ("central", dict(perturbation="sphere")),
    ("central", dict(perturbation="dap")),
    ("central", dict(perturbation="gaussian", q=4)),
    ("forward", dict(perturbation="gaussian")),
    ("forward", dict(perturbation="sphere")),
    ("forward", dict(perturbation="dap")),
    ("telescoping-p4", dict(perturbation="sphere")),
    ("telescoping-p4", dict(perturbation="sphere", telescoping_law="zipf", telescoping_param=2.0)),
    ("telescoping-p3", dict(perturbation="sphere")),
    ("telescoping-p4", dict(perturbation="gaussian")),
    ("coordinate", dict(block_fraction=0.25)),
]
ROW_IDS = [f"{n}-{'-'.join(str(v) for v in o.values())}" for n, o in ROWS]


def test_rows_cover_every_estimator_and_perturbation():
    assert {n for n, _ in ROWS} == set(ESTIMATORS.names())
    assert {o.get("perturbation") for _, o in ROWS} >= set(PERTURBATIONS)


def quadratic(d=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    h = a.T @ a / d + torch.eye(d, dtype=torch.float64)
    x1 = torch.randn(3, 2, generator=gen, dtype=torch.float64)  # a 2-D tensor
    x2 = torch.randn(d - 6, generator=gen, dtype=torch.float64)

    def f():
        x = torch.cat([x1.reshape(-1), x2])
        return 0.5 * x @ h @ x + x.sum()

    x = torch.cat([x1.reshape(-1), x2])
    return [x1, x2], f, h @ x + 1.0


def mean_estimate(name, opts, params, f, n, eps=1e-3):
    space = ParamSpace(params, [eps] * len(params))
    est_fn = make_estimator(name, **opts)
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for s in range(n):
        est = est_fn.estimate(f, space, derive_seed(123, s))
        for r, d in est.pending:
            space.displace(d, r)
        dense = [sum(t.coef * space.grad_factor(j) * t.direction.weight(j, p) * t.direction.materialize(j, p)
                     for t in est.terms).reshape(-1) for j, p in enumerate(params)]
        total += torch.cat(dense)
    return total / n


@pytest.mark.parametrize("name, opts", ROWS, ids=ROW_IDS)
def test_mean_estimate_approaches_true_gradient(name, opts):
    params, f, grad = quadratic()
    before = [p.clone() for p in params]
    mean = mean_estimate(name, opts, params, f, n=3000)
    cosine = torch.nn.functional.cosine_similarity(mean, grad, dim=0)
    assert cosine > 0.9, float(cosine)
    for a, b in zip(params, before):  # every estimate was restored
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_telescoping_has_smaller_bias_than_central_at_large_eps():
    """f(x) = sum exp(3 x_i) has large third derivatives: central's O(mu^2) bias shows at mu = 0.5,
    the telescoping estimator is unbiased (its mean error is only sampling noise)."""
    gen = torch.Generator().manual_seed(0)
    x = (0.3 * torch.randn(3, generator=gen, dtype=torch.float64))

    def f():
        return torch.exp(3 * x).sum()

    grad = 3 * torch.exp(3 * x)
    bias = {}
    for name in ("central", "telescoping-p4", "telescoping-p3"):
        mean = mean_estimate(name, dict(perturbation="sphere"), [x], f, n=6000, eps=0.5)
        bias[name] = float((mean - grad).norm() / grad.norm())
    assert bias["telescoping-p4"] < 0.5 * bias["central"], bias
    assert bias["telescoping-p3"] < 0.5 * bias["central"], bias


TOLERANCE = {  # (rtol, atol) on each entry after perturb / evaluate / restore, eps = 1e-3
    torch.float64: (1e-14, 1e-15),
    torch.float32: (1e-6, 1e-8),
    torch.float16: (4e-3, 1e-4),   # 11-bit significand: each of the 3-8 displacements rounds
    torch.bfloat16: (3e-2, 1e-3),  # by up to 2^-(bits+1) relative; bf16 has 8 bits
}
"""Worst relative errors measured over every row and 5 seeds: fp64 6e-16, fp32 4.4e-7,
fp16 3.8e-3, bf16 2.5e-2. Exact restoration in half precision needs an fp32 master copy."""


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("name, opts", ROWS, ids=ROW_IDS)
def test_parameters_are_restored(name, opts, dtype):
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(16, 8, generator=gen).to(dtype), torch.randn(5, generator=gen).to(dtype)]
    before = [p.clone() for p in params]
    space = ParamSpace(params, [1e-3, 1e-3])
    est = make_estimator(name, **opts).estimate(
        lambda: sum((p.float() ** 2).sum() for p in params), space, seed=5)
    for r, d in est.pending:
        space.displace(d, r)
    rtol, atol = TOLERANCE[dtype]
    for a, b in zip(params, before):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("sampler", SAMPLERS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sampler_moments_and_replay(sampler, dtype):
    s = SAMPLERS.get(sampler)
    draw = lambda: s.sample(torch.Size([200, 500]), torch.Generator().manual_seed(9), dtype, torch.device("cpu"))
    u = draw()
    assert torch.equal(u, draw())  # replayed exactly
    assert u.dtype == torch.float32  # half-precision params get float32 noise
    assert abs(float(u.mean())) < 0.01 and abs(float((u * u).mean()) - 1) < 0.01
    corr = torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1]
    assert abs(float(corr)) < 0.2
    if sampler != "gaussian":
        assert float(u.norm()) == pytest.approx(math.sqrt(u.numel()), rel=1e-5)


def test_dap_is_aligned_with_its_reference():
    """DAP: (a . v)^2 = ||a||^2 exactly, across several tensors."""
    from zoft.estimators.directions import AlignedDirection

    gen = torch.Generator().manual_seed(2)
    params = [torch.zeros(4, 3), torch.zeros(7)]
    refs = [torch.randn(4, 3, generator=gen), torch.randn(7, generator=gen)]
    for seed in range(5):
        v = AlignedDirection(seed, SAMPLERS.get("gaussian"), lambda j, p: refs[j], params)
        av = sum(float((refs[j] * v.materialize(j, p)).sum()) for j, p in enumerate(params))
        aa = sum(float((r * r).sum()) for r in refs)
        assert av ** 2 == pytest.approx(aa, rel=1e-4)


def _directions():
    from zoft.estimators.directions import AlignedDirection, BlockDirection, SeededDirection
    from zoft.perturb import get_sampler

    gen = torch.Generator().manual_seed(3)
    refs = [torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)]
    params = [torch.zeros(4, 3, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)]
    rows = [(f"seeded-{rng}-{name}", SeededDirection(5, get_sampler(name, rng)))
            for rng in ("torch", "counter") for name in ("gaussian", "rademacher", "sphere")]
    rows.append(("dap", AlignedDirection(5, get_sampler("gaussian"), lambda j, p: refs[j], params)))
    rows += [(f"block-{signs}", BlockDirection(5, 0.5, signs)) for signs in ("rademacher", "ones")]
    return rows, params


@pytest.mark.parametrize("row", range(len(_directions()[0])), ids=[n for n, _ in _directions()[0]])
def test_every_direction_displaces_by_what_it_materializes(row):
    """displace(j, p, alpha) must move p by exactly alpha * materialize(j, p): the estimate is
    formed with materialize, the perturbation and restore with displace. (DAP's displace once
    moved by the Gaussian part alone, so its estimate lost the component along the reference.)"""
    (_, direction), params = _directions()[0][row], _directions()[1]
    for j, p in enumerate(params):
        moved = p.clone()
        direction.displace(j, moved, 0.3)
        torch.testing.assert_close(moved, p + 0.3 * direction.materialize(j, p).to(p.dtype), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(name="nope"), "unknown estimator 'nope'"),
    (dict(name="central", q=0), "invalid q 0"),
    (dict(name="central", perturbation="uniform"), "invalid perturbation 'uniform'"),
    (dict(name="telescoping-p4", telescoping_law="poisson"), "invalid telescoping_law 'poisson'"),
    (dict(name="telescoping-p4", telescoping_param=1.5), "invalid telescoping_param 1.5"),
    (dict(name="coordinate", block_signs="zeros"), "invalid block_signs 'zeros'"),
    (dict(name="coordinate", block_fraction=0.0), "invalid block_fraction 0.0"),
])
def test_invalid_estimator_options_name_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        make_estimator(**bad)
