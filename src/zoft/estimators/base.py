"""Shared machinery of the estimators: tracked displacements and checked evaluations."""

from __future__ import annotations

import math
from typing import Callable, Optional, Protocol

import torch

from zoft.core import Closure, Direction, Estimate, NonFiniteLossError, ParamSpace, loss_value

Reference = Optional[Callable[[int, torch.Tensor], torch.Tensor]]
"""a_j for DAP: the optimizer's momentum of tensor j, or None when it keeps none."""


class Estimator(Protocol):
    """Moves the parameters, evaluates the closure, and returns a seed-replay Estimate."""

    def estimate(
        self, closure: Closure, space: ParamSpace, seed: int, reference: Reference = None
    ) -> Estimate: ...


class Probe:
    """Displaces parameters along directions and evaluates the loss, remembering the offset.

    The parameters always equal x + sum_k r_k * eps_j * s_j * u_k over ``offset``; a
    non-finite loss undoes the offset (the parameters are back at x) and raises.
    """

    def __init__(self, closure: Closure, space: ParamSpace) -> None:
        self.closure = closure
        self.space = space
        self.offset: list[tuple[float, Direction]] = []
        self.losses: list[float] = []

    def move(self, direction: Direction, r: float) -> None:
        self.space.displace(direction, r)
        for k, (r_old, d) in enumerate(self.offset):
            if d is direction:
                self.offset[k] = (r_old + r, d)
                break
        else:
            self.offset.append((r, direction))
        self.offset = [(r_k, d) for r_k, d in self.offset if r_k != 0.0]

    def evaluate(self) -> float:
        value = loss_value(self.closure())
        if not math.isfinite(value):
            self.undo()
            raise NonFiniteLossError(
                f"loss is {value} after {len(self.losses)} finite evaluations this step; "
                "parameters were restored (lower the lr or eps, or check the data)"
            )
        self.losses.append(value)
        return value

    def undo(self) -> None:
        for r, d in reversed(self.offset):
            self.space.displace(d, -r)
        self.offset = []

    def finish(self, terms: list, loss: float | None = None) -> Estimate:
        """The estimate, leaving the current offset pending for the optimizer's fused pass."""
        mean = sum(self.losses) / len(self.losses)
        return Estimate(
            terms=terms,
            pending=[(-r, d) for r, d in self.offset],
            loss=mean if loss is None else loss,
            loss_at_x=loss is not None,
            losses=list(self.losses),
            forward_passes=len(self.losses),
        )
