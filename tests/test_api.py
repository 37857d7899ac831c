"""The public API contract: names, construction errors, closures, randomness hygiene."""

from __future__ import annotations

import pytest
import torch

import zoft
from zoft.core import Registry, derive_seed

EXPECTED = ["fo-adam", "fo-sgd", "forward-grad", "fzoo", "hizoo", "jaguar-muon", "jaguar-sign",
            "lozo", "lozo-m", "sparse-mezo", "subzero", "zo-adam", "zo-finetuner", "zo-muon",
            "zo-sgd", "zo-sgd-cons", "zo-sgd-mmt", "zo-sgd-sign"]


def test_list_optimizers_is_sorted_and_complete():
    assert zoft.list_optimizers() == EXPECTED


@pytest.mark.parametrize("name", [n for n in EXPECTED if n not in ("forward-grad", "zo-finetuner")])
def test_make_optimizer_returns_a_torch_optimizer(name):
    opt = zoft.make_optimizer(name, [torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("name, hp, match", [
    ("zo-sgdd", {}, "unknown optimizer 'zo-sgdd'; choose one of: fo-adam"),
    ("zo-sgd", dict(lr=-1.0), "invalid lr -1.0"),
    ("zo-sgd", dict(eps=0.0), "invalid eps 0.0"),
    ("zo-sgd", dict(q=0), "invalid q 0"),
    ("zo-sgd", dict(estimator="backward"), "unknown estimator 'backward'; choose one of: central"),
    ("zo-sgd", dict(perturbation="normal"), "invalid perturbation 'normal'; allowed: dap, gaussian"),
    ("zo-sgd", dict(momentum=0.9), r"unknown hyperparameter\(s\) \['momentum'\]"),
    ("zo-sgd-mmt", dict(momentum=1.5), "invalid momentum 1.5"),
    ("zo-adam", dict(betas=(0.9, 1.0)), "invalid betas 1.0"),
    ("zo-sgd", dict(seed=1.5), "invalid seed 1.5"),
    ("jaguar-muon", dict(ns_steps=0), "invalid ns_steps 0"),
    ("zo-muon", dict(fallback_lr=-1e-3), "invalid fallback_lr -0.001"),
    ("zo-sgd", dict(fallback_lr=1e-3), r"unknown hyperparameter\(s\) \['fallback_lr'\]"),
    ("zo-sgd-cons", dict(weight_decay=0.1), "zo-sgd-cons does not support weight_decay"),
    ("forward-grad", {}, "forward-grad needs module="),
    ("zo-finetuner", {}, "zo-finetuner needs finetuner="),
    ("fo-sgd", dict(eps=1e-3), r"unknown hyperparameter\(s\) \['eps'\] for fo-sgd"),
])
def test_bad_values_raise_value_error_naming_them(name, hp, match):
    with pytest.raises(ValueError, match=match):
        zoft.make_optimizer(name, [torch.nn.Parameter(torch.zeros(3))], **hp)


def test_step_needs_a_closure():
    opt = zoft.make_optimizer("zo-sgd", [torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


def test_param_groups_have_their_own_lr_and_eps():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    opt = zoft.make_optimizer("zo-sgd", [{"params": [a]}, {"params": [b], "lr": 0.0, "eps": 0.1}], lr=0.1)
    opt.step(lambda: (a ** 2).sum() + (b ** 2).sum())
    assert not torch.equal(a.detach(), torch.ones(4))
    torch.testing.assert_close(b.detach(), torch.ones(4))  # lr 0: restored exactly, not moved


def test_frozen_parameters_are_never_perturbed():
    a = torch.nn.Parameter(torch.ones(4))
    frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)
    seen = []
    opt = zoft.make_optimizer("zo-sgd", [a, frozen], lr=0.1)
    opt.step(lambda: seen.append(frozen.detach().clone()) or (a ** 2).sum())
    assert all(torch.equal(s, torch.ones(4)) for s in seen)


def test_library_never_touches_the_global_rng():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    w = torch.nn.Parameter(torch.zeros(5, 3))
    for name in ["zo-sgd", "zo-adam", "jaguar-sign", "zo-sgd-cons"]:
        zoft.make_optimizer(name, [w], lr=0.01, perturbation="sphere" if name == "zo-adam" else "gaussian",
                            estimator="telescoping-p4" if name == "zo-adam" else None).step(lambda: (w ** 2).sum())
    assert torch.equal(state, torch.get_rng_state())


def test_derived_seeds_are_distinct():
    seeds = {derive_seed(s, step, q) for s in range(4) for step in range(50) for q in range(4)}
    assert len(seeds) == 4 * 50 * 4
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_registry_rejects_collisions():
    reg = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)


def test_state_dict_from_another_configuration_is_rejected():
    w = torch.nn.Parameter(torch.zeros(3))
    sd = zoft.make_optimizer("zo-sgd", [w], q=2).state_dict()
    with pytest.raises(ValueError, match="was saved with"):
        zoft.make_optimizer("zo-sgd", [w], q=1).load_state_dict(sd)
