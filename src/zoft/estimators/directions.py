"""Directions that regenerate themselves from a seed (seed replay; no dense buffers).

A direction is identified by a seed; u_j, its part in tensor j, is drawn from a generator
seeded with derive_seed(seed, j), so any tensor's part can be regenerated in any order.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from zoft.core import derive_seed, generator, uniform
from zoft.perturb import Sampler, noise_dtype


def displace_each(direction, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
    """``displace_all`` as one ``displace`` per tensor (directions with nothing to batch)."""
    for j, (p, alpha) in enumerate(zip(params, alphas)):
        direction.displace(j, p, alpha)


class SeededDirection:
    """u_j = the sampler's draw for tensor j's shape and key derive_seed(seed, j)."""

    def __init__(self, seed: int, sampler: Sampler) -> None:
        self.seed = seed
        self.sampler = sampler

    def materialize(self, j: int, p: torch.Tensor) -> torch.Tensor:
        return self.sampler.draw(p.shape, derive_seed(self.seed, j), p.dtype, p.device)

    def displace(self, j: int, p: torch.Tensor, alpha: float) -> None:
        self.sampler.add_(p, derive_seed(self.seed, j), alpha)

    def displace_all(self, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
        self.sampler.add_many_(params, [derive_seed(self.seed, j) for j in range(len(params))], alphas)

    def support(self, j: int, p: torch.Tensor) -> torch.Tensor | None:
        return None

    def weight(self, j: int, p: torch.Tensor) -> float:
        return 1.0


class AlignedDirection(SeededDirection):
    """Directionally aligned perturbation (DAP; Ma & Huang, ICLR 2025).

    v = (I - a a^T / ||a||^2) x + xi a / ||a||  with x ~ N(0, I), xi = +-1,
      = x + beta a,  beta = xi / ||a|| - (a . x) / ||a||^2  (one scalar for all tensors).
    Then E[v v^T] = I and (a . v)^2 = ||a||^2 exactly. ``reference(j)`` returns a_j; beta
    needs a . x over all tensors, which costs one extra regeneration pass of x (here, at
    construction). With a = 0 (no reference yet) v = x, the plain Gaussian.
    """

    def __init__(
        self,
        seed: int,
        sampler: Sampler,
        reference: Callable[[int, torch.Tensor], torch.Tensor],
        params: Sequence[torch.Tensor],
    ) -> None:
        super().__init__(seed, sampler)
        self.reference = reference
        ax = torch.zeros((), dtype=torch.float64)
        aa = torch.zeros((), dtype=torch.float64)
        for j, p in enumerate(params):
            a = self.reference(j, p)
            x = super().materialize(j, p)
            ax += torch.dot(a.reshape(-1).to(x.dtype), x.reshape(-1)).double().cpu()
            aa += torch.dot(a.reshape(-1), a.reshape(-1)).double().cpu()
        norm = math.sqrt(float(aa))
        if norm == 0.0 or not math.isfinite(norm):
            self.beta = 0.0
        else:
            xi = 1.0 if uniform(derive_seed(seed, -1)) < 0.5 else -1.0
            self.beta = xi / norm - float(ax) / float(aa)

    def materialize(self, j: int, p: torch.Tensor) -> torch.Tensor:
        x = super().materialize(j, p)
        if self.beta != 0.0:
            x.add_(self.reference(j, p).to(x.dtype), alpha=self.beta)
        return x

    def displace(self, j: int, p: torch.Tensor, alpha: float) -> None:
        if self.beta == 0.0:
            super().displace(j, p, alpha)  # v = x: the sampler's fused add
        else:  # v itself (one rounding of p), not the Gaussian part alone
            p.add_(self.materialize(j, p), alpha=alpha)

    def displace_all(self, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
        if self.beta == 0.0:
            super().displace_all(params, alphas)
        else:
            displace_each(self, params, alphas)


class BlockDirection:
    """A random block of rows per tensor, perturbed coordinate-wise (JAGUAR).

    Tensor j (viewed as rows x rest; 1-D tensors as entries) gets k = ceil(fraction * rows)
    rows chosen uniformly without replacement. Inside the block u is +-1 per entry
    (``signs="rademacher"``) or +1 (``signs="ones"``: the JAGUAR paper's "the whole row moves by
    +tau"). ``weight`` is 1 / (inclusion probability k / rows), so that with Rademacher
    signs E[g] equals the true gradient (the "ones" form is biased: each entry's estimate
    carries the sum of the block's partial derivatives).
    """

    def __init__(self, seed: int, fraction: float, signs: str) -> None:
        self.seed = seed
        self.fraction = fraction
        self.signs = signs

    def _block(self, j: int, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        rows = p.shape[0] if p.dim() > 0 else 1
        k = max(1, math.ceil(self.fraction * rows))
        gen = generator(derive_seed(self.seed, j), p.device)
        idx = torch.randperm(rows, generator=gen, device=p.device)[:k]
        block_shape = (k, *p.shape[1:]) if p.dim() > 0 else ()
        dtype = noise_dtype(p.dtype)
        if self.signs == "ones":
            vals = torch.ones(block_shape, dtype=dtype, device=p.device)
        else:
            vals = torch.randint(0, 2, block_shape, generator=gen, device=p.device).to(dtype)
            vals.mul_(2).sub_(1)
        return idx, vals, k / rows

    def materialize(self, j: int, p: torch.Tensor) -> torch.Tensor:
        idx, vals, _ = self._block(j, p)
        u = torch.zeros(p.shape, dtype=noise_dtype(p.dtype), device=p.device)
        if p.dim() == 0:
            return u.add_(vals)
        u[idx] = vals
        return u

    def displace(self, j: int, p: torch.Tensor, alpha: float) -> None:
        idx, vals, _ = self._block(j, p)
        if p.dim() == 0:
            p.add_(vals, alpha=alpha)
        else:
            p.index_add_(0, idx, vals.to(p.dtype), alpha=alpha)

    def displace_all(self, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
        displace_each(self, params, alphas)

    def support(self, j: int, p: torch.Tensor) -> torch.Tensor | None:
        return self._block(j, p)[0] if p.dim() > 0 else None

    def weight(self, j: int, p: torch.Tensor) -> float:
        rows = p.shape[0] if p.dim() > 0 else 1
        return rows / max(1, math.ceil(self.fraction * rows))
