"""Forward-Grad (Baydin et al. 2022; ZO-Bench): g = (grad f(x) . v) v via forward-mode AD.

Not forward-only in the ZO sense: torch.func.jvp carries a tangent for every parameter, so
the step holds one parameter-sized tangent and the dual activations. It needs the module
that owns the parameters (``module=``) to re-run the closure with dual parameters.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from zoft.core import Closure, Estimate, NonFiniteLossError, Term, derive_seed, loss_value
from zoft.estimators.directions import SeededDirection
from zoft.optim.base import ZOOptimizer
from zoft.optim.traits import Traits
from zoft.perturb import get_sampler


class _ClosureModule(nn.Module):
    """Runs the closure as its forward, so functional_call can swap the parameters in."""

    def __init__(self, module: nn.Module, closure: Closure) -> None:
        super().__init__()
        self.inner = module
        self.closure = closure

    def forward(self) -> torch.Tensor:
        return self.closure()


class ForwardGrad(ZOOptimizer):
    """Forward gradient with q tangents v ~ ``perturbation``; SGD update x <- x - lr g."""

    # its jvp differentiates the model (so not zeroth order) and cannot pass an all-reduce
    traits = Traits(zeroth_order=False, takes_eps=False, needs_module=True, eager_attention=True,
                    data_parallel=False)

    def __init__(self, params: Iterable, module: nn.Module | None = None, lr: float = 1e-3,
                 q: int = 1, perturbation: str = "gaussian", rng: str = "torch",
                 weight_decay: float = 0.0, seed: int = 0, **options: Any) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError("forward-grad needs module=<the nn.Module that owns the parameters>")
        if perturbation == "dap":
            raise ValueError("invalid perturbation 'dap' for forward-grad; allowed: gaussian, rademacher, sphere")
        super().__init__(params, lr=lr, eps=1.0, q=q, estimator="central", perturbation=perturbation,
                         rng=rng, weight_decay=weight_decay, seed=seed, **options)
        self.module = module
        names = {id(p): n for n, p in module.named_parameters()}
        missing = [i for i, (p, _) in enumerate(self._tensors()) if id(p) not in names]
        if missing:
            raise ValueError(f"forward-grad: parameters {missing} are not parameters of the given module")
        self._names = names
        self._sampler = get_sampler(perturbation, rng)
        self.config["estimator"] = "jvp"

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:
        if closure is None:
            raise ValueError("ForwardGrad.step needs a closure that returns the loss")
        params = [p for p, _ in self._tensors()]
        names = ["inner." + self._names[id(p)] for p in params]
        wrapper = _ClosureModule(self.module, closure)
        q = self.config["q"]

        def f(*values):
            return torch.func.functional_call(wrapper, dict(zip(names, values)), ())

        terms, loss = [], None
        for i in range(q):
            v = SeededDirection(derive_seed(self.seed, self.steps_taken, i), self._sampler)
            tangents = tuple(v.materialize(j, p).to(p.dtype) for j, p in enumerate(params))
            with torch.enable_grad():
                out, dd = torch.func.jvp(f, tuple(p.detach() for p in params), tangents)
            loss, dd = loss_value(out), loss_value(dd)
            if dd != dd or loss != loss:
                raise NonFiniteLossError(f"forward-grad: loss {loss}, directional derivative {dd}")
            terms.append(Term(v, dd / q))  # eps = 1: a is the directional derivative itself
        space = self._space()
        self.forward_passes += q
        self._update(space, Estimate(terms=terms, loss=loss, loss_at_x=True, forward_passes=q))
        self.steps_taken += 1
        return torch.tensor(loss)
