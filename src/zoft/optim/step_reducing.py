"""ZO methods that aim at fewer steps than ZO-SGD (docs/ALGORITHMS.md, "Step-reducing methods").

  fzoo    N one-sided Rademacher queries; the step is normalised by the spread of the N
          perturbed losses (Dang et al., "FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning
          Large Language Models towards Adam-Scale Speed", 2025). N + 1 forward passes, no state.
  lozo    central two-point ZO along a low-rank U V^T per matrix, V kept for several steps
          (Chen et al., "Enhancing Zeroth-Order Fine-Tuning for Language Models with Low-Rank
          Structures", ICLR 2025); lozo-m adds its m x r momentum. 2 forward passes.
  subzero central two-point ZO along P S Q^T per matrix, P and Q random orthonormal bases kept
          for several steps (Yu et al., "Zeroth-Order Fine-Tuning of LLMs in Random Subspaces", 2024).
  sparse-mezo  MeZO on the small-magnitude entries of each tensor only (Liu et al., "Sparse MeZO:
          Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning", 2024).
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


def _central_pair(closure: Closure, move) -> tuple[float, float]:
    """f(x + eps z) and f(x - eps z), ``move(r)`` displacing x by r eps z; on return x is at
    x - eps z (the caller's update pass restores it). A non-finite loss restores x and raises."""
    losses, offset = [], 0.0
    for r in (1.0, -2.0):
        move(r)
        offset += r
        value = loss_value(closure())
        if not math.isfinite(value):
            move(-offset)
            raise NonFiniteLossError(f"loss is {value}; parameters were restored (lower the lr or eps)")
        losses.append(value)
    return losses[0], losses[1]


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


class _LowRank:
    """LOZO's direction: Z_j = U_j V_j^T for a matrix (U: m x r, drawn per step; V: n x r, drawn
    once per ``v_interval`` steps), a dense Gaussian for every other tensor. Both factors are
    regenerated from seeds: nothing is stored, and a move is one in-place addmm (no dense
    temporary for float32 matrices)."""

    def __init__(self, seed: int, v_seed: int, rank: int, sampler) -> None:
        self.seed, self.v_seed, self.rank, self.sampler = seed, v_seed, rank, sampler

    def factors(self, j: int, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.sampler.draw(torch.Size((p.shape[0], self.rank)), derive_seed(self.seed, j), torch.float32, p.device)
        return u, self.v(j, p)

    def v(self, j: int, p: torch.Tensor, v_seed: int | None = None) -> torch.Tensor:
        key = derive_seed(self.v_seed if v_seed is None else v_seed, j)
        return self.sampler.draw(torch.Size((p.shape[1], self.rank)), key, torch.float32, p.device)

    def materialize(self, j: int, p: torch.Tensor) -> torch.Tensor:
        if p.ndim != 2:
            return self.sampler.draw(p.shape, derive_seed(self.seed, j), p.dtype, p.device)
        u, v = self.factors(j, p)
        return (u @ v.T).to(p.dtype)

    def displace(self, j: int, p: torch.Tensor, alpha: float) -> None:
        if p.ndim == 2 and p.dtype == torch.float32:
            u, v = self.factors(j, p)
            p.addmm_(u, v.T, alpha=alpha)
        else:
            p.add_(self.materialize(j, p), alpha=alpha)

    def displace_all(self, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
        for j, (p, a) in enumerate(zip(params, alphas)):
            if a:
                self.displace(j, p, a)

    def support(self, j: int, p: torch.Tensor) -> None:
        return None

    def weight(self, j: int, p: torch.Tensor) -> float:
        return 1.0


class LOZO(ZOOptimizer):
    """LOZO (low-rank ZO-SGD; Chen et al., ICLR 2025): the central two-point estimate along
    Z = U V^T per matrix (rank ``rank``, V redrawn every ``v_interval`` steps, U every step),
    a dense Gaussian for the other tensors (norm gains, biases: the paper's rule), then
    x <- (1 - lr wd) x - lr (f+ - f-) / (2 eps) Z. No state; U and V are seeds.

    With ``momentum`` > 0 (``lozo-m``): per matrix an m x r buffer N with M = N V^T
    (within one V period every estimate is a U_t V^T, so M = sum beta^k a_k U_k V^T = N V^T);
    N <- beta N + a U, x <- x - lr N V^T. When V is redrawn, N is carried over by projecting
    M onto the new V: N <- N (V_old^T V_new) / n (V^T V ~ n I). Other tensors: heavy-ball
    momentum on their dense estimate. Memory: m x r floats per matrix instead of m x n.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, eps: float = 1e-3, q: int = 1,
                 estimator: str | None = None, perturbation: str = "gaussian", weight_decay: float = 0.0,
                 seed: int = 0, rank: int = 2, v_interval: int = 50, momentum: float = 0.0,
                 **options: Any) -> None:
        if estimator not in (None, "central") or q != 1:
            raise ValueError("lozo uses its own central two-point query along U V^T (q = 1, estimator central)")
        if perturbation != "gaussian":
            raise ValueError(f"invalid perturbation {perturbation!r} for lozo; allowed: gaussian")
        check_int("rank", rank, 1)
        check_int("v_interval", v_interval, 1)
        check_range("momentum", momentum, 0.0, 1.0)
        rng = options.pop("rng", "torch")
        super().__init__(params, lr=lr, eps=eps, q=1, estimator="central", perturbation="gaussian",
                         weight_decay=weight_decay, seed=seed, rng=rng, **options)
        self.config.update(rank=rank, v_interval=v_interval, momentum=momentum)
        self.sampler = get_sampler("gaussian", rng)

    def _direction(self, step: int) -> _LowRank:
        interval = self.config["v_interval"]
        return _LowRank(derive_seed(self.seed, step), derive_seed(self.seed, -1, step // interval),
                        self.config["rank"], self.sampler)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("LOZO.step needs a closure that returns the loss")
        pairs = self._tensors()
        space = ParamSpace([p for p, _ in pairs], [g["eps"] for _, g in pairs])
        z = self._direction(self.steps_taken)
        f_plus, f_minus = _central_pair(closure, lambda r: space.displace(z, r))
        beta = self.config["momentum"]
        for j, (p, group) in enumerate(pairs):
            eps, lr, wd = group["eps"], group["lr"], group["weight_decay"]
            a = (f_plus - f_minus) / (2 * eps)
            z.displace(j, p, eps)  # restore x
            if wd:
                p.mul_(1.0 - lr * wd)
            if not beta:
                z.displace(j, p, -lr * a)
                continue
            self._momentum_update(j, p, z, a, lr, beta)
        self.forward_passes += 2
        self.steps_taken += 1
        return torch.tensor((f_plus + f_minus) / 2)

    def _momentum_update(self, j: int, p: torch.Tensor, z: _LowRank, a: float, lr: float, beta: float) -> None:
        state = self.state[p]
        if p.ndim != 2:
            buf = state.setdefault("momentum_buffer", torch.zeros(p.shape, dtype=torch.float32, device=p.device))
            buf.mul_(beta).add_(z.materialize(j, p).float(), alpha=a)
            p.add_(buf.to(p.dtype), alpha=-lr)
            return
        u, v = z.factors(j, p)
        buf = state.get("lowrank_momentum")
        if buf is None:
            buf = state["lowrank_momentum"] = torch.zeros(p.shape[0], z.rank, dtype=torch.float32, device=p.device)
            state["v_seed"] = z.v_seed
        elif state["v_seed"] != z.v_seed:  # V was redrawn: carry M = N V_old^T over to the new V
            buf.copy_(buf @ (z.v(j, p, state["v_seed"]).T @ v) / p.shape[1])
            state["v_seed"] = z.v_seed
        buf.mul_(beta).add_(u, alpha=a)
        if p.dtype == torch.float32:
            p.addmm_(buf, v.T, alpha=-lr)
        else:
            p.add_((buf @ v.T).to(p.dtype), alpha=-lr)


class LOZOM(LOZO):
    """LOZO-M: LOZO with its low-rank momentum (default momentum 0.9; see LOZO)."""

    def __init__(self, params: Iterable, momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(params, momentum=momentum, **kwargs)


def _orthonormal(sampler, key: int, rows: int, rank: int, device) -> torch.Tensor:
    """rows x rank with orthonormal columns: the Q of a seeded Gaussian's QR (signs fixed by R's
    diagonal, so the same key gives the same basis on every call)."""
    g = sampler.draw(torch.Size((rows, rank)), key, torch.float32, device)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


class _Subspace(_LowRank):
    """SubZero's direction: Z_j = P_j S_j Q_j^T for a matrix (P: m x r and Q: n x r orthonormal,
    redrawn every ``interval`` steps; S: r x r Gaussian, drawn every step), a dense Gaussian for
    other tensors. Scaled by sqrt(m n) / r so that E||Z||^2 = m n, as a dense Gaussian's."""

    def factors(self, j: int, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, n, r = p.shape[0], p.shape[1], min(self.rank, p.shape[0], p.shape[1])
        basis_p = _orthonormal(self.sampler, derive_seed(self.v_seed, j, 0), m, r, p.device)
        basis_q = _orthonormal(self.sampler, derive_seed(self.v_seed, j, 1), n, r, p.device)
        s = self.sampler.draw(torch.Size((r, r)), derive_seed(self.seed, j), torch.float32, p.device)
        return basis_p @ s * (math.sqrt(m * n) / r), basis_q


class SubZero(LOZO):
    """SubZero (Yu et al., 2024): the central two-point estimate along a random subspace
    direction per matrix, Z = P S Q^T (orthonormal P, Q redrawn every ``v_interval`` steps,
    S an r x r Gaussian each step), x <- x - lr a Z. No state: P, Q and S are seeds (their QR
    is recomputed at each regeneration, O((m + n) r^2) per matrix)."""

    def __init__(self, params: Iterable, rank: int = 8, v_interval: int = 100, **kwargs: Any) -> None:
        if kwargs.get("momentum"):
            raise ValueError("subzero has no momentum (use lozo-m for a low-rank momentum)")
        super().__init__(params, rank=rank, v_interval=v_interval, **kwargs)

    def _direction(self, step: int) -> _LowRank:
        interval = self.config["v_interval"]
        return _Subspace(derive_seed(self.seed, step), derive_seed(self.seed, -2, step // interval),
                         self.config["rank"], self.sampler)


class SparseMeZO(ZOOptimizer):
    """Sparse-MeZO (Liu et al., 2024): ZO-SGD that perturbs and updates only the entries of
    each tensor whose magnitude is at most the tensor's ``sparsity`` quantile of |x| (the small
    weights; ``sparsity`` is the fraction perturbed, default 0.25). The mask is recomputed from
    the unperturbed x at the start of every step and lives for that step only (one bool per
    entry of the tensors being stepped); the directions are MeZO's seeded Gaussians times it.
    x <- (1 - lr wd) x - lr (f+ - f-) / (2 eps) (m * u)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, eps: float = 1e-3, q: int = 1,
                 estimator: str | None = None, perturbation: str = "gaussian", weight_decay: float = 0.0,
                 seed: int = 0, sparsity: float = 0.25, **options: Any) -> None:
        if estimator not in (None, "central") or q != 1:
            raise ValueError("sparse-mezo uses its own central two-point query (q = 1, estimator central)")
        if perturbation != "gaussian":
            raise ValueError(f"invalid perturbation {perturbation!r} for sparse-mezo; allowed: gaussian")
        check_range("sparsity", sparsity, 0.0, 1.0, low_open=True)
        rng = options.pop("rng", "torch")
        super().__init__(params, lr=lr, eps=eps, q=1, estimator="central", perturbation="gaussian",
                         weight_decay=weight_decay, seed=seed, rng=rng, **options)
        self.config.update(sparsity=sparsity)
        self.sampler = get_sampler("gaussian", rng)

    def _masks(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for p in params:
            a = p.detach().abs().reshape(-1).float()
            k = max(1, int(round(self.config["sparsity"] * a.numel())))
            threshold = a.kthvalue(k).values
            out.append((p.detach().abs() <= threshold.to(p.dtype)))
        return out

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("SparseMeZO.step needs a closure that returns the loss")
        pairs = self._tensors()
        params = [p for p, _ in pairs]
        masks = self._masks(params)
        seed = derive_seed(self.seed, self.steps_taken)

        def move(r: float) -> None:
            for j, (p, group) in enumerate(pairs):
                u = self.sampler.draw(p.shape, derive_seed(seed, j), torch.float32, p.device).mul_(masks[j])
                p.add_(u.to(p.dtype), alpha=r * group["eps"])

        f_plus, f_minus = _central_pair(closure, move)
        for j, (p, group) in enumerate(pairs):
            eps, lr, wd = group["eps"], group["lr"], group["weight_decay"]
            u = self.sampler.draw(p.shape, derive_seed(seed, j), torch.float32, p.device).mul_(masks[j])
            p.add_(u.to(p.dtype), alpha=eps)  # restore
            if wd:
                p.mul_(1.0 - lr * wd)
            p.add_(u.to(p.dtype), alpha=-lr * (f_plus - f_minus) / (2 * eps))
        self.forward_passes += 2
        self.steps_taken += 1
        return torch.tensor((f_plus + f_minus) / 2)
