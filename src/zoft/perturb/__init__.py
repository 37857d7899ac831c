"""Perturbation samplers: ``draw(shape, key, dtype, device)``, ``add_(p, key, alpha)`` and
``add_many_(params, keys, alphas)`` (``add_`` over many tensors in one call).

Each sampler draws u with E[u u^T] = I, the normalisation every two-point estimator here
assumes; ``key`` (an integer from :func:`zoft.core.derive_seed`) identifies the draw, so any
direction can be regenerated (seed replay). ``add_`` is ``p += alpha * u`` for the u that
``draw`` returns, and may fuse the two. Half-precision parameters get float32 noise
(``noise_dtype``) so that the same direction is replayed exactly in the perturb, restore
and update passes.

Two random-number engines (``rng``) give the same distributions from different streams:

- ``torch``: a ``torch.Generator`` seeded with the key (mt19937 on CPU, Philox on GPU).
- ``counter``: a counter-based hash of (key, entry index), compiled into one fused
  generate-and-add pass (:mod:`zoft.perturb.counter`); several times faster on CPU, where
  torch's generator is serial.

DAP (directionally aligned perturbations) is not a plain sampler: it needs a reference
direction, so it lives in :mod:`zoft.estimators.directions` and uses the Gaussian sampler.
"""

from __future__ import annotations

import functools
import math
from typing import Protocol, Sequence

import torch

from zoft.core import Registry, generator
from zoft.perturb import counter


class Sampler(Protocol):
    def draw(self, shape: torch.Size, key: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor: ...

    def add_(self, p: torch.Tensor, key: int, alpha: float) -> None: ...

    def add_many_(self, params: Sequence[torch.Tensor], keys: Sequence[int], alphas: Sequence[float]) -> None:
        """``add_`` for every tensor (one call, so an engine may batch them)."""
        ...


def noise_dtype(dtype: torch.dtype) -> torch.dtype:
    """Noise is drawn in float32 for fp16/bf16 parameters, else in the parameter dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class TorchSampler:
    """A sampler on a torch.Generator seeded with the key; subclasses define ``sample``."""

    def sample(self, shape, gen: torch.Generator, dtype, device) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, shape, key, dtype, device):
        return self.sample(shape, generator(key, device), dtype, device)

    def add_(self, p, key, alpha):
        p.add_(self.draw(p.shape, key, p.dtype, p.device), alpha=alpha)

    def add_many_(self, params, keys, alphas):
        for p, key, alpha in zip(params, keys, alphas):
            self.add_(p, key, alpha)


class Gaussian(TorchSampler):
    """u ~ N(0, I) (MeZO, ZO-Bench)."""

    def sample(self, shape, gen, dtype, device):
        return torch.randn(shape, generator=gen, dtype=noise_dtype(dtype), device=device)


class Rademacher(TorchSampler):
    """u_k = +-1 with equal probability: E[u u^T] = I and ||u|| = sqrt(d) exactly."""

    def sample(self, shape, gen, dtype, device):
        u = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8, device=device)
        return u.to(noise_dtype(dtype)).mul_(2).sub_(1)


def _sphere_scale(u_norm_sq: float, n: int) -> float:
    return math.sqrt(n) / max(math.sqrt(u_norm_sq), torch.finfo(torch.float32).tiny)


class Sphere(TorchSampler):
    """Uniform on the sphere of radius sqrt(n) in each tensor (n = its number of entries).

    Over several tensors this is a product of spheres: E[u u^T] = I and ||u||^2 = d hold
    exactly, the two conditions of the constant-magnitude minimum-variance estimator of
    Ma & Huang (ICLR 2025). Per-tensor normalisation keeps seed replay one pass
    (a single global sphere would need an extra pass for the norm); for one tensor it is
    exactly the uniform sphere of radius sqrt(d).
    """

    def sample(self, shape, gen, dtype, device):
        u = torch.randn(shape, generator=gen, dtype=noise_dtype(dtype), device=device)
        norm = torch.linalg.vector_norm(u)
        return u.mul_(math.sqrt(u.numel()) / norm.clamp_min(torch.finfo(u.dtype).tiny))


class CounterSampler:
    """Gaussian or Rademacher noise from :mod:`zoft.perturb.counter` (fused add, no buffer)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def draw(self, shape, key, dtype, device):
        return counter.draw(self.kind, shape, key, noise_dtype(dtype), device)

    def add_(self, p, key, alpha):
        counter.add_(self.kind, p, key, alpha)

    def add_many_(self, params, keys, alphas):
        counter.add_many_(self.kind, params, keys, alphas)


@functools.lru_cache(maxsize=4096)
def _counter_sphere_scale(n: int, key: int, device: torch.device) -> float:
    # a direction is applied three times per step (perturb, flip, restore + update): its
    # radius pass over the noise is made once
    return _sphere_scale(counter.sum_of_squares("gaussian", n, key, device), n)


class CounterSphere:
    """The counter Gaussian scaled to radius sqrt(n) per tensor (as :class:`Sphere`)."""

    def _scale(self, n: int, key: int, device) -> float:
        return _counter_sphere_scale(n, key, torch.device(device))

    def draw(self, shape, key, dtype, device):
        n = math.prod(shape)
        u = counter.draw("gaussian", shape, key, noise_dtype(dtype), device)
        return u.mul_(self._scale(n, key, device))

    def add_(self, p, key, alpha):
        self.add_many_([p], [key], [alpha])

    def add_many_(self, params, keys, alphas):
        scaled = [a * self._scale(p.numel(), k, p.device) for p, k, a in zip(params, keys, alphas)]
        counter.add_many_("gaussian", params, keys, scaled)


SAMPLERS: Registry[Sampler] = Registry("perturbation")
SAMPLERS.register("gaussian", Gaussian())
SAMPLERS.register("rademacher", Rademacher())
SAMPLERS.register("sphere", Sphere())

COUNTER_SAMPLERS: Registry[Sampler] = Registry("perturbation")
COUNTER_SAMPLERS.register("gaussian", CounterSampler("gaussian"))
COUNTER_SAMPLERS.register("rademacher", CounterSampler("rademacher"))
COUNTER_SAMPLERS.register("sphere", CounterSphere())

RNGS = {"torch": SAMPLERS, "counter": COUNTER_SAMPLERS}
"""The random-number engines, each a registry of the same sampler names."""

PERTURBATIONS = sorted([*SAMPLERS.names(), "dap"])
"""Every value of the ``perturbation`` hyperparameter (``dap`` wraps the Gaussian sampler)."""


def get_sampler(name: str, rng: str = "torch") -> Sampler:
    """The sampler ``name`` of engine ``rng``; unknown values raise a ValueError naming them."""
    if rng not in RNGS:
        raise ValueError(f"invalid rng {rng!r}; allowed: {', '.join(RNGS)}")
    return RNGS[rng].get(name)


__all__ = ["COUNTER_SAMPLERS", "PERTURBATIONS", "RNGS", "SAMPLERS", "CounterSampler", "CounterSphere",
           "Gaussian", "Rademacher", "Sampler", "Sphere", "TorchSampler", "get_sampler", "noise_dtype"]
