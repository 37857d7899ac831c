"""The ZO optimizer shell: torch.optim.Optimizer bookkeeping over an estimator and a chain.

One step:
 1. the estimator perturbs the parameters in place, calls the closure under torch.no_grad
    and returns an Estimate: q scalars with their seeded directions, and the displacement
    it left on the parameters;
 2. one pass over the tensors regenerates each direction once, removes the displacement and
    applies the update in the same pass. For ZO-SGD the update is linear in g, so the pass
    is p <- (1 - lr wd) p + sum_i (r_i - lr a_i s/eps) u_i without forming g: a central
    q=1 step generates u three times (+mu, -2mu, restore+update), not MeZO's four.
    Other chains form g for one tensor at a time (a temporary of that tensor's size).

Returns from ``step``: the loss at the unperturbed point when the estimator evaluated it
(forward, telescoping), else the mean of the evaluated perturbed losses (central, coordinate).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

from zoft.core import Closure, Direction, Estimate, ParamSpace, derive_seed
from zoft.core.checks import check_int, check_range
from zoft.estimators import make_estimator, option_names
from zoft.optim.traits import ZEROTH_ORDER, Traits
from zoft.optim.transforms import Transform, chain_apply, chain_init



class ZOOptimizer(torch.optim.Optimizer):
    """Base shell of every ZO optimizer; subclasses only declare their transform chain.

    Hyperparameters per param group: lr, eps (perturbation size mu), weight_decay and the
    chain's own (momentum, betas, adam_eps, ns_steps). Optimizer-wide: estimator, q,
    perturbation, seed and the estimator's options. ``coupled_weight_decay`` adds wd * p to
    g before the chain (torch.optim.SGD/Adam); otherwise decay is decoupled, p *= 1 - lr wd.
    """

    chain: Sequence[Transform] = ()
    coupled_weight_decay = True
    default_estimator = "central"
    traits: Traits = ZEROTH_ORDER
    external_loop = False
    """Set by framework adapters whose loop calls step() without a closure after the real
    step: such a call is then a no-op instead of an error."""

    def __init__(self, params: Iterable, lr: float = 1e-3, eps: float = 1e-3, q: int = 1,
                 estimator: str | None = None, perturbation: str = "gaussian",
                 weight_decay: float = 0.0, seed: int = 0, **options: Any) -> None:
        check_range("lr", lr, 0.0)
        check_range("eps", eps, 0.0, low_open=True)
        check_range("weight_decay", weight_decay, 0.0)
        check_int("seed", seed)
        est_options = {k: options.pop(k) for k in option_names() if k in options}
        group_defaults = self._group_defaults(**options)
        self.estimator_name = estimator or self.default_estimator
        self.estimator = make_estimator(self.estimator_name, q=q, perturbation=perturbation, **est_options)
        self.config = dict(estimator=self.estimator_name, q=q, perturbation=perturbation, **est_options)
        self.seed = seed
        self.steps_taken = 0
        self.forward_passes = 0
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, **group_defaults))
        for group in self.param_groups:
            self._check_group(group)

    # -- hyperparameters -------------------------------------------------------------
    def _group_defaults(self, **options: Any) -> dict:
        if options:
            raise ValueError(f"unknown hyperparameter(s) {sorted(options)} for {type(self).__name__}")
        return {}

    def _check_group(self, group: dict) -> None:
        check_range("lr", group["lr"], 0.0)
        check_range("eps", group["eps"], 0.0, low_open=True)
        check_range("weight_decay", group["weight_decay"], 0.0)

    # -- the step --------------------------------------------------------------------
    def _lr(self, p: torch.Tensor, group: dict) -> float:
        """The learning rate that moves tensor p of ``group`` (the chain-based update)."""
        return group["lr"]

    def _tensors(self) -> list[tuple[torch.Tensor, dict]]:
        return [(p, g) for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _space(self) -> ParamSpace:
        pairs = self._tensors()
        return ParamSpace([p for p, _ in pairs], [g["eps"] for _, g in pairs])

    def _reference(self):
        key = getattr(self.chain[0], "key", None) if self.chain else None
        if self.config["perturbation"] != "dap" or key is None:
            return None
        params = [p for p, _ in self._tensors()]
        return lambda j, p: self.state[params[j]][key]

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            if self.external_loop:
                return None  # type: ignore[return-value]
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the loss")
        for p, _ in self._tensors():
            if self.chain and not self.state[p]:
                chain_init(self.chain, p, self.state[p])
        space = self._space()
        seed = derive_seed(self.seed, self.steps_taken)
        est = self.estimator.estimate(closure, space, seed, self._reference())
        self.forward_passes += est.forward_passes
        self._update(space, est)
        self.steps_taken += 1
        return torch.tensor(est.loss)

    def _update(self, space: ParamSpace, est: Estimate, pairs: Sequence[tuple[torch.Tensor, dict]] | None = None,
                states: Sequence[dict] | None = None) -> None:
        """Restore and update the tensors of ``space`` (by default every tensor, with its own
        state; :mod:`zoft.offload` passes one block's device copies, their groups and states)."""
        pairs = self._tensors() if pairs is None else pairs
        if not self.chain:
            self._linear_update(pairs, space, est)
            return
        states = [self.state[p] for p, _ in pairs] if states is None else states
        for j, ((p, group), state) in enumerate(zip(pairs, states)):
            coefs = _coefficients(space, est, j, p)
            lr, wd = self._lr(p, group), group["weight_decay"]
            g = torch.zeros(p.shape, dtype=torch.float32 if p.dtype != torch.float64 else p.dtype,
                            device=p.device)
            for d, (r, c) in coefs.items():
                u = d.materialize(j, p)
                if r:
                    p.add_(u, alpha=r)
                if c:
                    g.add_(u, alpha=c)
            if self.coupled_weight_decay and wd:
                g.add_(p, alpha=wd)
            elif wd:
                p.mul_(1.0 - lr * wd)
            out = chain_apply(self.chain, g, p, state, group, _support(est, j, p))
            p.add_(out, alpha=-lr)

    @staticmethod
    def _linear_update(pairs: list[tuple[torch.Tensor, dict]], space: ParamSpace, est: Estimate) -> None:
        """Linear in g: restore and update fused, g never formed. p *= decay = 1 - lr wd, then
        tensor j moves by r decay - lr c along each direction (one noise pass per direction)."""
        decays, lrs = [], []
        for p, group in pairs:
            lrs.append(group["lr"])
            decays.append(1.0 - group["lr"] * group["weight_decay"])
            if decays[-1] != 1.0:
                p.mul_(decays[-1])
        displace_along(space, est, lambda j, r, c: r * decays[j] - lrs[j] * c)

    # -- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["zo"] = {"seed": self.seed, "steps_taken": self.steps_taken,
                    "forward_passes": self.forward_passes, "config": dict(self.config)}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        zo = state_dict.get("zo")
        if zo is None:
            raise ValueError("state_dict has no 'zo' entry: it was not saved by a zoft ZO optimizer")
        if zo["config"] != self.config:
            raise ValueError(f"state_dict was saved with {zo['config']}, this optimizer uses {self.config}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "zo"})
        self.seed, self.steps_taken = zo["seed"], zo["steps_taken"]
        self.forward_passes = zo["forward_passes"]


def displace_along(space: ParamSpace, est: Estimate, amount: Callable[[int, float, float], float]) -> None:
    """Tensor j moves by amount(j, r, c) * u_j along each direction of ``est`` (r: its pending
    restore, c: its estimate coefficient, both in units of u_j); each direction moves every
    tensor in one ``displace_all`` call, so a batching noise engine makes one pass."""
    alphas: dict[Direction, list[float]] = {}
    for j, p in enumerate(space.params):
        for d, (r, c) in _coefficients(space, est, j, p).items():
            alphas.setdefault(d, [0.0] * len(space.params))[j] = amount(j, r, c)
    for d, amounts in alphas.items():
        if any(amounts):
            d.displace_all(space.params, amounts)


def _coefficients(space: ParamSpace, est: Estimate, j: int, p: torch.Tensor) -> dict[Direction, list[float]]:
    """Per direction: [restore amount, estimate coefficient] for tensor j, both in units of u_j."""
    out: dict[Direction, list[float]] = {}
    for r, d in est.pending:
        out.setdefault(d, [0.0, 0.0])[0] += r * space.step_factor(j)
    for t in est.terms:
        out.setdefault(t.direction, [0.0, 0.0])[1] += t.coef * space.grad_factor(j) * t.direction.weight(j, p)
    return out


def _support(est: Estimate, j: int, p: torch.Tensor) -> torch.Tensor | None:
    rows = [t.direction.support(j, p) for t in est.terms]
    if any(r is None for r in rows):
        return None
    return torch.unique(torch.cat(rows)) if len(rows) > 1 else rows[0]
