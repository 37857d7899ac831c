"""Perturbation samplers: ``sample(shape, generator, dtype, device) -> Tensor``.

Each sampler draws u with E[u u^T] = I, the normalisation every two-point estimator here
assumes. Half-precision parameters get float32 noise (``noise_dtype``) so that the same
direction is replayed exactly in the perturb, restore and update passes.

DAP (directionally aligned perturbations) is not a plain sampler: it needs a reference
direction, so it lives in :mod:`zoft.estimators.directions` and uses the Gaussian sampler.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from zoft.core import Registry


class Sampler(Protocol):
    def sample(
        self, shape: torch.Size, generator: torch.Generator, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor: ...


def noise_dtype(dtype: torch.dtype) -> torch.dtype:
    """Noise is drawn in float32 for fp16/bf16 parameters, else in the parameter dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class Gaussian:
    """u ~ N(0, I) (MeZO, ZO-Bench)."""

    def sample(self, shape, generator, dtype, device):
        return torch.randn(shape, generator=generator, dtype=noise_dtype(dtype), device=device)


class Rademacher:
    """u_k = +-1 with equal probability: E[u u^T] = I and ||u|| = sqrt(d) exactly."""

    def sample(self, shape, generator, dtype, device):
        u = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8, device=device)
        return u.to(noise_dtype(dtype)).mul_(2).sub_(1)


class Sphere:
    """Uniform on the sphere of radius sqrt(n) in each tensor (n = its number of entries).

    Over several tensors this is a product of spheres: E[u u^T] = I and ||u||^2 = d hold
    exactly, the two conditions of the constant-magnitude minimum-variance estimator of
    Ma & Huang (ICLR 2025, seed 001). Per-tensor normalisation keeps seed replay one pass
    (a single global sphere would need an extra pass for the norm); for one tensor it is
    exactly the uniform sphere of radius sqrt(d).
    """

    def sample(self, shape, generator, dtype, device):
        u = torch.randn(shape, generator=generator, dtype=noise_dtype(dtype), device=device)
        norm = torch.linalg.vector_norm(u)
        return u.mul_(math.sqrt(u.numel()) / norm.clamp_min(torch.finfo(u.dtype).tiny))


SAMPLERS: Registry[Sampler] = Registry("perturbation")
SAMPLERS.register("gaussian", Gaussian())
SAMPLERS.register("rademacher", Rademacher())
SAMPLERS.register("sphere", Sphere())

PERTURBATIONS = sorted([*SAMPLERS.names(), "dap"])
"""Every value of the ``perturbation`` hyperparameter (``dap`` wraps the Gaussian sampler)."""

__all__ = ["PERTURBATIONS", "SAMPLERS", "Gaussian", "Rademacher", "Sampler", "Sphere", "noise_dtype"]
