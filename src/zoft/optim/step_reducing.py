"""ZO methods that aim at fewer steps than ZO-SGD (docs/ALGORITHMS.md, "Step-reducing methods").

  fzoo    N one-sided Rademacher queries; the step is normalised by the spread of the N
          perturbed losses (Dang et al., "FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning
          Large Language Models towards Adam-Scale Speed", 2025). N + 1 forward passes, no state.
  hizoo   central two-point ZO along u / sqrt(h), h a per-entry curvature estimate smoothed
          over steps from the same three losses (Zhao et al., "Second-Order Fine-Tuning without
          Pain for LLMs: A Hessian Informed Zeroth-Order Optimizer", ICLR 2025). 3 forward
          passes, one parameter-sized state.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Sequence

import torch

from zoft.core import Closure, NonFiniteLossError, ParamSpace, derive_seed, loss_value
from zoft.core.checks import check_int, check_range
from zoft.estimators.directions import SeededDirection
from zoft.optim.base import ZOOptimizer, displace_along
from zoft.perturb import get_sampler


class FZOO(ZOOptimizer):
    """FZOO: x <- x - lr / (N sigma) sum_i (f(x + eps u_i) - f(x)) u_i, u_i Rademacher.

    sigma is the population standard deviation of the N perturbed losses f(x + eps u_i). In
    zoft's units the forward estimator gives g = (1/N) sum_i (f_i - f_0) / eps u_i, so the step
    is lr * (eps / sigma) * g: the lr is in units of the loss spread, not of the gradient, and a
    step's length does not grow with the loss scale. When every perturbed loss is equal
    (sigma = 0) the step only restores x. ``q`` is N (default 8, at least 2); the perturbation
    may be rademacher (the paper's), gaussian or sphere. FZOO evaluates the N queries as one
    batched forward on a GPU; here they run one after another (bench/forward_speed.py: stacking
    two perturbed copies gains at most 9% on 2 CPU cores).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, eps: float = 1e-3, q: int = 8,
                 estimator: str | None = None, perturbation: str = "rademacher",
                 weight_decay: float = 0.0, seed: int = 0, **options: Any) -> None:
        if estimator not in (None, "forward"):
            raise ValueError(f"invalid estimator {estimator!r} for fzoo; allowed: forward (its one-sided queries)")
        check_int("q", q, 2)
        if perturbation == "dap":
            raise ValueError("invalid perturbation 'dap' for fzoo; allowed: rademacher, gaussian, sphere")
        super().__init__(params, lr=lr, eps=eps, q=q, estimator="forward", perturbation=perturbation,
                         weight_decay=weight_decay, seed=seed, **options)
        self.last_spread: float | None = None

    def _update(self, space: ParamSpace, est) -> None:
        spread = statistics.pstdev(est.losses[1:])  # losses[0] is f(x)
        self.last_spread = spread
        pairs = self._tensors()
        lrs = [g["lr"] * g["eps"] / spread if spread > 0 else 0.0 for _, g in pairs]
        decays = []
        for p, group in pairs:
            decays.append(1.0 - group["lr"] * group["weight_decay"])
            if decays[-1] != 1.0:
                p.mul_(decays[-1])
        displace_along(space, est, lambda j, r, c: r * decays[j] - lrs[j] * c)


class _Preconditioned(SeededDirection):
    """v_j = u_j / sqrt(max(h_j, h_min)): u seeded as usual, h the optimizer's curvature state."""

    def __init__(self, seed: int, sampler, curvature: Sequence[torch.Tensor], floor: float) -> None:
        super().__init__(seed, sampler)
        self.curvature, self.floor = curvature, floor

    def unscaled(self, j: int, p: torch.Tensor) -> torch.Tensor:
        """u_j in float32, whatever p's dtype (so perturb, restore and update see one u)."""
        return self.sampler.draw(p.shape, derive_seed(self.seed, j), torch.float32, p.device)

    def vector(self, j: int, p: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        u = self.unscaled(j, p) if u is None else u
        return u * self.curvature[j].clamp(min=self.floor).rsqrt()

    def materialize(self, j: int, p: torch.Tensor) -> torch.Tensor:
        return self.vector(j, p).to(p.dtype)

    def displace(self, j: int, p: torch.Tensor, alpha: float) -> None:
        p.add_(self.materialize(j, p), alpha=alpha)

    def displace_all(self, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
        for j, (p, a) in enumerate(zip(params, alphas)):
            if a:
                self.displace(j, p, a)


class HiZOO(ZOOptimizer):
    """HiZOO with a diagonal curvature state h (one float32 tensor per parameter, init 1).

    One step, with h_c = max(h, hessian_min), v = u / sqrt(h_c) (u ~ N(0, I), seeded):
      l0 = f(x),  l+ = f(x + eps v),  l- = f(x - eps v)
      h  <- (1 - hessian_smooth) h + hessian_smooth * h_c (u^2 - 1) (l+ + l- - 2 l0) / (2 eps^2)
      x  <- x - lr ((l+ - l-) / (2 eps) v + wd x)
    E[g] = diag(1/h_c) grad f: a ZO step preconditioned by the inverse curvature. On a quadratic
    (l+ + l- - 2 l0) / eps^2 = sum_k A_kk u_k^2 / h_c,k exactly, and E[h_c,k (u_k^2 - 1) of that] / 2
    = A_kk: the per-entry estimate is unbiased for the Hessian's diagonal. The paper's estimate,
    |l+ + l- - 2 l0| / (2 eps^2) h_c u^2, has expectation (trace term) * h_c instead, which grows
    with the number of parameters; its code updates the perturbation's covariance with it and
    defaults to a smoothing of 0 (plain MeZO). zoft keeps the paper's structure (same three
    losses, one state, exponential smoothing, the update along the perturbed direction) with the
    unbiased estimate; the estimate's noise grows with the number of trainable entries n, so
    ``hessian_smooth`` should be about 1/n or smaller (default 1e-6, the paper's range 1e-6..1e-8)
    and ``hessian_min`` bounds the preconditioning at 1/sqrt(hessian_min) times ZO-SGD's step.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, eps: float = 1e-3, q: int = 1,
                 estimator: str | None = None, perturbation: str = "gaussian",
                 weight_decay: float = 0.0, seed: int = 0, hessian_smooth: float = 1e-6,
                 hessian_min: float = 1e-2, **options: Any) -> None:
        if estimator not in (None, "central") or q != 1:
            raise ValueError("hizoo uses its own central two-point query (q = 1, estimator central)")
        if perturbation != "gaussian":
            raise ValueError(f"invalid perturbation {perturbation!r} for hizoo; allowed: gaussian "
                             "(the curvature estimate uses E[u^4] = 3)")
        check_range("hessian_smooth", hessian_smooth, 0.0, 1.0)
        check_range("hessian_min", hessian_min, 0.0, low_open=True)
        rng = options.pop("rng", "torch")
        super().__init__(params, lr=lr, eps=eps, q=1, estimator="central", perturbation=perturbation,
                         weight_decay=weight_decay, seed=seed, rng=rng, **options)
        self.config.update(hessian_smooth=hessian_smooth, hessian_min=hessian_min)
        self.sampler = get_sampler("gaussian", rng)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("HiZOO.step needs a closure that returns the loss")
        pairs = self._tensors()
        params = [p for p, _ in pairs]
        for p in params:
            if not self.state[p]:
                self.state[p]["curvature"] = torch.ones(p.shape, dtype=torch.float32, device=p.device)
        curvature = [self.state[p]["curvature"] for p in params]
        space = ParamSpace(params, [g["eps"] for _, g in pairs])
        v = _Preconditioned(derive_seed(self.seed, self.steps_taken), self.sampler, curvature,
                            self.config["hessian_min"])
        f0 = self._eval(closure, space, v, 0.0)
        space.displace(v, 1.0)
        f_plus = self._eval(closure, space, v, 1.0)
        space.displace(v, -2.0)
        f_minus = self._eval(closure, space, v, -1.0)
        alpha = self.config["hessian_smooth"]
        for j, (p, group) in enumerate(pairs):
            eps, lr, wd = group["eps"], group["lr"], group["weight_decay"]
            u = v.unscaled(j, p)
            step = v.vector(j, p, u)  # v_j = u_j / sqrt(h_c), float32
            h_c = curvature[j].clamp(min=v.floor)
            p.add_(step.to(p.dtype), alpha=eps)  # restore x (fused with the update below)
            if alpha:
                curvature[j].mul_(1.0 - alpha).add_(h_c * (u * u - 1.0), alpha=alpha * (f_plus + f_minus - 2 * f0)
                                                    / (2 * eps * eps))
            if wd:
                p.mul_(1.0 - lr * wd)
            p.add_(step.to(p.dtype), alpha=-lr * (f_plus - f_minus) / (2 * eps))
        self.forward_passes += 3
        self.steps_taken += 1
        return torch.tensor(f0)

    def _eval(self, closure: Closure, space: ParamSpace, v, at: float) -> float:
        value = loss_value(closure())
        if not math.isfinite(value):
            if at:
                space.displace(v, -at)
            raise NonFiniteLossError(f"loss is {value}; parameters were restored (lower the lr or eps)")
        return value
