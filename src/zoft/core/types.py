"""Types shared by estimators and optimizers (they speak through these, never to each other)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

Closure = Callable[[], torch.Tensor]
"""Returns the scalar loss at the parameters' current values; never calls backward."""


class NonFiniteLossError(FloatingPointError):
    """A loss evaluation returned NaN or inf; the parameters were restored first."""


def loss_value(loss: torch.Tensor | float) -> float:
    """The loss as a Python float, exactly (float64 losses keep their resolution)."""
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class Direction(Protocol):
    """A perturbation direction u, regenerated per tensor from a seed when needed."""

    def materialize(self, j: int, p: torch.Tensor) -> torch.Tensor:
        """u_j for tensor ``j`` (shape of p; float32 for half-precision p)."""
        ...

    def displace(self, j: int, p: torch.Tensor, alpha: float) -> None:
        """p += alpha * u_j in place (sparse directions touch only their support)."""
        ...

    def displace_all(self, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
        """``displace(j, params[j], alphas[j])`` for every j, in one call (a noise engine may
        then generate every tensor's part in one pass)."""
        ...

    def support(self, j: int, p: torch.Tensor) -> torch.Tensor | None:
        """Row indices that u_j can be non-zero on, or None for dense directions."""
        ...

    def weight(self, j: int, p: torch.Tensor) -> float:
        """Factor on u_j in the estimate (1 / inclusion probability for sparse blocks)."""
        ...


@dataclass
class ParamSpace:
    """The tensors being optimised, with the perturbation size of each.

    ``eps[j]`` is the perturbation size ("mu") of tensor j's param group; ``scale[j]`` an
    optional per-tensor scale s_j (the ZO Fine-tuner's normalised sigma_j, else 1). Tensor j
    is perturbed by r * eps_j * s_j * u_j and its estimate is a * s_j / eps_j * u_j, where the
    estimator's scalar a is a finite difference in units of eps (e.g. (f+ - f-) / 2).
    """

    params: Sequence[torch.Tensor]
    eps: Sequence[float]
    scale: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.scale is None:
            self.scale = [1.0] * len(self.params)

    def displace(self, direction: Direction, r: float) -> None:
        """x_j += r * eps_j * s_j * u_j for every tensor j (one regeneration of u)."""
        direction.displace_all(self.params, [r * self.step_factor(j) for j in range(len(self.params))])

    def step_factor(self, j: int) -> float:
        """eps_j * s_j: how far tensor j moves per unit of r."""
        return self.eps[j] * self.scale[j]

    def grad_factor(self, j: int) -> float:
        """s_j / eps_j: g_j = sum_i a_i * grad_factor(j) * u_ij."""
        return self.scale[j] / self.eps[j]


@dataclass
class Term:
    """One direction of an estimate: g_j += coef * grad_factor(j) * weight_j * u_j."""

    direction: Direction
    coef: float


@dataclass
class Estimate:
    """A ZO gradient estimate held as (coefficient, seeded direction) pairs, never densely.

    ``pending`` lists displacements still applied to the parameters (r, direction): the
    parameters equal x + sum r * eps_j * u_j, and the optimizer removes them in the same
    pass as its update (fused restore + update: 3 generations per central q=1 step).
    ``loss`` is f(x) when it was evaluated, else the mean of the evaluated losses.
    """

    terms: list[Term]
    pending: list[tuple[float, Direction]] = field(default_factory=list)
    loss: float = math.nan
    loss_at_x: bool = False
    losses: list[float] = field(default_factory=list)
    forward_passes: int = 0
