"""Optimizers: pure per-tensor transforms (transforms.py) under thin torch.optim shells."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch

from zoft.core import Registry
from zoft.optim.base import ZOOptimizer
from zoft.optim.fo import FOAdam, FOSGD
from zoft.optim.forward_grad import ForwardGrad
from zoft.optim.traits import BACKPROP, Traits
from zoft.optim.transforms import newton_schulz
from zoft.optim.zo import (JaguarMuon, JaguarSign, MatrixLR, ZOAdam, ZOMuon, ZOSGD, ZOSGDCons,
                           ZOSGDMomentum, ZOSignSGD)
from zoft.optim.finetuner import ZOFineTuner
from zoft.optim.step_reducing import FZOO, LOZO, LOZOM, HiZOO, SparseMeZO, SubZero

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("zo-sgd", ZOSGD)
OPTIMIZERS.register("zo-sgd-mmt", ZOSGDMomentum)
OPTIMIZERS.register("zo-sgd-sign", ZOSignSGD)
OPTIMIZERS.register("zo-sgd-cons", ZOSGDCons)
OPTIMIZERS.register("zo-adam", ZOAdam)
OPTIMIZERS.register("jaguar-sign", JaguarSign)
OPTIMIZERS.register("jaguar-muon", JaguarMuon)
OPTIMIZERS.register("zo-muon", ZOMuon)
OPTIMIZERS.register("forward-grad", ForwardGrad)
OPTIMIZERS.register("fo-sgd", FOSGD)
OPTIMIZERS.register("fo-adam", FOAdam)
OPTIMIZERS.register("zo-finetuner", ZOFineTuner)
OPTIMIZERS.register("fzoo", FZOO)
OPTIMIZERS.register("hizoo", HiZOO)
OPTIMIZERS.register("lozo", LOZO)
OPTIMIZERS.register("lozo-m", LOZOM)
OPTIMIZERS.register("subzero", SubZero)
OPTIMIZERS.register("sparse-mezo", SparseMeZO)


def list_optimizers() -> list[str]:
    """Names accepted by :func:`make_optimizer`, sorted."""
    return OPTIMIZERS.names()


def optimizer_traits(name: str) -> Traits:
    """The declared traits of optimizer ``name`` (zoft.optim.traits); unknown names raise."""
    return getattr(OPTIMIZERS.get(name), "traits", BACKPROP)


def make_optimizer(name: str, params: Iterable, **hparams: Any) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; unknown names or values raise ValueError."""
    cls = OPTIMIZERS.get(name)
    signature = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        allowed = set(signature) - {"self", "params"}  # **options classes validate their own
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown} for {name}; allowed: {sorted(allowed)}")
    return cls(params, **hparams)


def muon_variants() -> list[str]:
    """The optimizers whose param groups take ``fallback_lr`` and ``orthogonalise``, sorted."""
    return [n for n in OPTIMIZERS.names() if issubclass(OPTIMIZERS.get(n), MatrixLR)]


def is_zeroth_order(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimizer never differentiates the model (ForwardGrad uses forward-mode AD)."""
    return getattr(type(optimizer), "traits", BACKPROP).zeroth_order


__all__ = ["OPTIMIZERS", "Traits", "ZOOptimizer", "is_zeroth_order", "list_optimizers", "make_optimizer",
           "optimizer_traits",
           "muon_variants",
           "newton_schulz"]
