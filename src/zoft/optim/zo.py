"""The ZO optimizers: each is the shell plus a chain of transforms (compose, don't copy).

  zo-sgd       x <- x - lr (g + wd x)                                      (MeZO)
  zo-sgd-mmt   m <- momentum m + g;  x <- x - lr m
  zo-sgd-sign  x <- x - lr sign(g)
  zo-adam      Adam on g (torch.optim.Adam's rule, bias-corrected)
  jaguar-sign  coordinate-block g; m_S <- beta m_S + (1-beta) g_S;  x <- x - lr sign(m)
  jaguar-muon  the same momentum; 2-D: X <- X - lr NS(M), other tensors the sign rule at fallback_lr
               (a group's orthogonalise=False sends its matrices to the fallback too)
  zo-muon      M <- momentum M + g (dense Gaussian g); 2-D: X <- X - lr NS(M), else SGD-momentum
               at fallback_lr (both Muon variants: fallback_lr defaults to lr)
  zo-sgd-cons  keep the best of x, x - lr g, x + lr g (2-3 more forward passes)

ZO-Bench: Zhang et al., ICML 2024. JAGUAR: Petrov et al. 2025, arXiv 2506.04430 (seeds
000/002); paper grid beta in {1e-3, 1e-2}, tau in {1e-1, 1e-2, 1e-3}, best tau 1e-3,
beta 1e-2, the defaults here. Muon: K. Jordan 2024.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoft.core import Closure, NonFiniteLossError, ParamSpace, derive_seed, loss_value
from zoft.core.checks import check_range
from zoft.optim.base import ZOOptimizer, displace_along
from zoft.optim.transforms import Adam, BlockMomentum, HeavyBall, Orthogonalize, Sign, orthogonalised


def _momentum(options: dict, default: float) -> dict:
    momentum = options.pop("momentum", default)
    check_range("momentum", momentum, 0.0, 1.0)
    return {"momentum": momentum}


def _ns_steps(options: dict) -> dict:
    steps = options.pop("ns_steps", 5)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"invalid ns_steps {steps!r}; must be an integer >= 1")
    return {"ns_steps": steps}


class ZOSGD(ZOOptimizer):
    """ZO-SGD (MeZO; Malladi et al. 2023): x <- x - lr (g + wd x), no state at all."""


class ZOSGDMomentum(ZOOptimizer):
    """ZO-SGD with heavy-ball momentum (one parameter-sized buffer)."""

    chain = (HeavyBall(),)

    def _group_defaults(self, **options):
        extra = _momentum(options, 0.9)
        return {**super()._group_defaults(**options), **extra}


class ZOSignSGD(ZOOptimizer):
    """ZO-SignSGD (Liu et al., ICLR 2019): x <- x - lr sign(g); decoupled weight decay."""

    chain = (Sign(),)
    coupled_weight_decay = False


class ZOAdam(ZOOptimizer):
    """ZO-Adam: Adam moments on the ZO estimate (two parameter-sized buffers)."""

    chain = (Adam(),)

    def _group_defaults(self, betas=(0.9, 0.999), adam_eps=1e-8, **options):
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"invalid betas {betas!r}; need two numbers in [0, 1)")
        for b in betas:
            check_range("betas", b, 0.0, 1.0)
        check_range("adam_eps", adam_eps, 0.0)
        return {**super()._group_defaults(**options), "betas": betas, "adam_eps": adam_eps}


class JaguarSign(ZOOptimizer):
    """JAGUAR SignSGD: coordinate-block estimates, block momentum, sign step."""

    chain = (BlockMomentum(), Sign())
    coupled_weight_decay = False
    default_estimator = "coordinate"

    def __init__(self, params, lr: float = 1e-3, eps: float = 1e-3, **kw: Any) -> None:
        super().__init__(params, lr=lr, eps=eps, **kw)

    def _group_defaults(self, **options):
        extra = _momentum(options, 1e-2)
        return {**super()._group_defaults(**options), **extra}


class MatrixLR:
    """The Muon variants' two learning rates: ``lr`` moves the 2-D tensors by lr NS(M), whose
    size is set by the Newton-Schulz normalisation; ``fallback_lr`` (default: lr) moves the
    other tensors (norm gains, biases), whose fallback step is not normalised. Muon pairs the
    matrices with another optimizer at its own lr for the same reason (K. Jordan 2024). On full
    fine-tuning a Muon-sized lr on the norm gains' ZO step diverges (docs/RESULTS.md, 7e).

    A param group with ``orthogonalise: False`` sends its matrices to the fallback rule too
    (Muon practice keeps the embeddings and the output head out of Newton-Schulz; Evseev et al., MIPT 2025
    orthogonalises every 2-D tensor, the default). ``zoft train`` builds that group from
    ``opt_options: {orthogonalise_embeddings: false}``."""

    def _group_defaults(self, **options):
        extra = {**_ns_steps(options), "fallback_lr": options.pop("fallback_lr", None),
                 "orthogonalise": options.pop("orthogonalise", True)}
        return {**super()._group_defaults(**options), **extra}

    def _check_group(self, group):
        super()._check_group(group)
        if group["fallback_lr"] is not None:
            check_range("fallback_lr", group["fallback_lr"], 0.0)
        if not isinstance(group["orthogonalise"], bool):
            raise ValueError(f"invalid orthogonalise {group['orthogonalise']!r}; must be true or false")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # checkpoints saved before these options existed
            group.setdefault("fallback_lr", None)
            group.setdefault("orthogonalise", True)

    def _lr(self, p, group):
        fallback = group["fallback_lr"]
        return group["lr"] if orthogonalised(p, group) or fallback is None else fallback


class JaguarMuon(MatrixLR, JaguarSign):
    """JAGUAR Muon: block momentum; Newton-Schulz step on 2-D tensors, sign elsewhere."""

    chain = (BlockMomentum(), Orthogonalize(fallback=Sign()))


class ZOMuon(MatrixLR, ZOOptimizer):
    """ZO-Muon (Evseev et al., MIPT 2025): M <- momentum M + g; X <- X - lr NewtonSchulz(M) on 2-D tensors."""

    chain = (HeavyBall(), Orthogonalize(fallback=None))
    coupled_weight_decay = False

    def _group_defaults(self, **options):
        extra = _momentum(options, 0.9)
        return {**super()._group_defaults(**options), **extra}


class ZOSGDCons(ZOOptimizer):
    """ZO-SGD-Cons (ZO-Bench): evaluate x - lr g and x + lr g and keep the best of the
    three points x, x - lr g, x + lr g. Costs 2 more forward passes per step, plus f(x) when
    the estimator did not evaluate it. The moves replay the seeds: no buffer."""

    def _check_group(self, group):
        super()._check_group(group)
        if group["weight_decay"]:
            raise ValueError("zo-sgd-cons does not support weight_decay (it compares raw losses)")

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:
        if closure is None:
            raise ValueError("ZOSGDCons.step needs a closure that returns the loss")
        space = self._space()
        est = self.estimator.estimate(closure, space, derive_seed(self.seed, self.steps_taken))
        lrs = [g["lr"] for _, g in self._tensors()]
        self._move(space, est, restore=1.0, lr_sign=0.0, lrs=lrs)
        f0 = est.loss if est.loss_at_x else self._eval(closure, space, est, lrs, 0.0)
        self._move(space, est, 0.0, -1.0, lrs)
        f_minus = self._eval(closure, space, est, lrs, -1.0)
        self._move(space, est, 0.0, 2.0, lrs)
        f_plus = self._eval(closure, space, est, lrs, 1.0)
        best = min((f0, 0.0), (f_minus, -1.0), (f_plus, 1.0))[1]
        if best != 1.0:
            self._move(space, est, 0.0, best - 1.0, lrs)
        self.forward_passes += est.forward_passes + 2 + (not est.loss_at_x)
        self.steps_taken += 1
        return torch.tensor(f0)

    @staticmethod
    def _move(space: ParamSpace, est, restore: float, lr_sign: float, lrs) -> None:
        """x += restore * pending + lr_sign * lr * g, one regeneration per direction."""
        displace_along(space, est, lambda j, r, c: restore * r + lr_sign * lrs[j] * c)

    def _eval(self, closure, space, est, lrs, at: float) -> float:
        value = loss_value(closure())
        if not math.isfinite(value):
            self._move(space, est, 0.0, -at, lrs)
            raise NonFiniteLossError(f"loss is {value} at a ZO-SGD-Cons trial point; parameters restored")
        return value
