"""JAGUAR's coordinate momentum and the Newton-Schulz orthogonalisation."""

from __future__ import annotations

import pytest
import torch

import zoft
from zoft.optim import newton_schulz
from zoft.optim.transforms import NS_COEFFICIENTS


@pytest.mark.parametrize("name", ["jaguar-sign", "jaguar-muon"])
def test_unchosen_blocks_keep_their_momentum(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(40, 6))
    opt = zoft.make_optimizer(name, [w], lr=1e-3, eps=1e-2, momentum=0.5, block_fraction=0.1)
    closure = lambda: (w ** 3).sum()
    opt.step(closure)
    first = opt.state[w]["momentum_buffer"].clone()
    assert int((first.abs().sum(1) > 0).sum()) == 4  # ceil(0.1 * 40) rows estimated
    opt.step(closure)
    second = opt.state[w]["momentum_buffer"]
    changed = (second != first).any(1)
    assert 0 < int(changed.sum()) <= 4
    kept = ~changed & (first.abs().sum(1) > 0)
    assert kept.any(), "some rows estimated at step 1 were not chosen at step 2"
    assert torch.equal(second[kept], first[kept])  # persisted, not zeroed or decayed


def test_jaguar_sign_step_uses_sign_of_momentum_everywhere():
    w = torch.nn.Parameter(torch.zeros(10, 3))
    opt = zoft.make_optimizer("jaguar-sign", [w], lr=0.1, eps=1e-2, momentum=0.0, block_fraction=0.2)
    target = torch.arange(30.0).reshape(10, 3)
    opt.step(lambda: ((w - target) ** 2).sum())
    m = opt.state[w]["momentum_buffer"]
    torch.testing.assert_close(w.detach(), -0.1 * torch.sign(m))


def test_newton_schulz_pushes_singular_values_near_one():
    gen = torch.Generator().manual_seed(0)
    for shape in [(64, 32), (32, 64), (50, 50)]:
        m = torch.randn(*shape, generator=gen)
        s = torch.linalg.svdvals(newton_schulz(m, steps=5))
        assert 0.6 < float(s.min()) and float(s.max()) < 1.25, (shape, s.min(), s.max())
        assert newton_schulz(m).shape == m.shape


def test_newton_schulz_sign_of_b_matters():
    """Seed 000 prints b = +4.7750; with that sign the iteration diverges."""
    assert NS_COEFFICIENTS[1] < 0
    a, b, c = NS_COEFFICIENTS
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    x = x / x.norm()
    for _ in range(5):
        gram = x.T @ x
        x = a * x + x @ (-b * gram + c * gram @ gram)
    assert not torch.isfinite(x).all() or float(torch.linalg.svdvals(x).max()) > 10


def test_muon_orthogonalises_matrices_and_falls_back_elsewhere():
    w = torch.nn.Parameter(torch.zeros(8, 4))
    b = torch.nn.Parameter(torch.zeros(4))
    opt = zoft.make_optimizer("zo-muon", [w, b], lr=1.0, eps=1e-3, momentum=0.0, q=4)
    target_w, target_b = torch.randn(8, 4), torch.randn(4)
    opt.step(lambda: ((w - target_w) ** 2).sum() + ((b - target_b) ** 2).sum())
    s = torch.linalg.svdvals(w.detach())
    assert float(s.max()) < 1.3  # W moved by lr * NS(M): orthogonal-like step


@pytest.mark.parametrize("name", ["zo-muon", "jaguar-muon"])
def test_fallback_lr_moves_only_the_non_matrix_tensors(name):
    """fallback_lr scales the step of the 1-D tensors and leaves the matrices' step as it was."""
    target_w, target_b = torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), torch.arange(4.0)

    def one_step(**hp):
        w, b = torch.nn.Parameter(torch.zeros(8, 4)), torch.nn.Parameter(torch.zeros(4))
        opt = zoft.make_optimizer(name, [w, b], lr=0.1, eps=1e-3, momentum=0.0, q=4, seed=3, **hp)
        opt.step(lambda: ((w - target_w) ** 2).sum() + ((b - target_b) ** 2).sum())
        return w.detach(), b.detach()

    w_same, b_same = one_step()
    w_fb, b_fb = one_step(fallback_lr=0.01)
    w_zero, b_zero = one_step(fallback_lr=0.0)
    torch.testing.assert_close(w_fb, w_same)
    torch.testing.assert_close(w_zero, w_same)
    assert b_same.abs().sum() > 0
    torch.testing.assert_close(b_fb, 0.1 * b_same)  # both rules are linear in lr from zero
    torch.testing.assert_close(b_zero, torch.zeros(4), rtol=0, atol=1e-8)  # restore rounding only


def test_fallback_lr_is_checked_in_param_groups_too():
    w, b = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="invalid fallback_lr -1"):
        zoft.make_optimizer("zo-muon", [{"params": [w]}, {"params": [b], "fallback_lr": -1.0}])


def test_muon_checkpoint_saved_before_fallback_lr_loads_and_steps():
    w, b = torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(3))
    closure = lambda: (w ** 2).sum() + (b ** 2).sum()
    opt = zoft.make_optimizer("zo-muon", [w, b], lr=0.01)
    opt.step(closure)
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["fallback_lr"]
    fresh = zoft.make_optimizer("zo-muon", [w, b], lr=0.01)
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["fallback_lr"] is None
    fresh.step(closure)
    assert fresh.steps_taken == 2


@pytest.mark.parametrize("muon, plain, hp", [
    ("jaguar-muon", "jaguar-sign", dict(momentum=0.5, block_fraction=0.5)),
    ("zo-muon", "zo-sgd-mmt", dict(momentum=0.9)),
])
def test_a_group_with_orthogonalise_false_takes_the_fallback_rule(muon, plain, hp):
    """Its matrices move as the Muon variant's fallback optimizer moves them, at fallback_lr;
    the matrices of the other groups are still orthogonalised. One step: from the same point
    every variant sees the same losses, so the estimates agree."""
    target = torch.randn(8, 4, generator=torch.Generator().manual_seed(4))

    def run(name, groups_of, **kw):
        e, w = torch.nn.Parameter(torch.zeros(8, 4)), torch.nn.Parameter(torch.zeros(8, 4))
        opt = zoft.make_optimizer(name, groups_of(e, w), eps=1e-3, seed=5, **hp, **kw)
        opt.step(lambda: ((e - target) ** 2).sum() + ((w + target) ** 2).sum())
        return e.detach(), w.detach(), opt

    e, w, opt = run(muon, lambda e, w: [{"params": [w]}, {"params": [e], "orthogonalise": False}],
                    lr=0.1, fallback_lr=0.02)
    e_plain, _, _ = run(plain, lambda e, w: [{"params": [w]}, {"params": [e]}], lr=0.02)
    torch.testing.assert_close(e, e_plain)
    assert e.abs().sum() > 0
    _, w_all, _ = run(muon, lambda e, w: [{"params": [w]}, {"params": [e]}], lr=0.1, fallback_lr=0.02)
    torch.testing.assert_close(w, w_all)  # the other group is unchanged by the option
    assert [g["orthogonalise"] for g in opt.param_groups] == [True, False]


def test_orthogonalise_must_be_a_boolean():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="invalid orthogonalise 'no'"):
        zoft.make_optimizer("jaguar-muon", [{"params": [w], "orthogonalise": "no"}])
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['orthogonalise'\]"):
        zoft.make_optimizer("zo-sgd", [w], orthogonalise=False)
