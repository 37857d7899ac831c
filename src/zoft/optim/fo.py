"""First-order baselines under the same interface: the closure returns the loss, the
optimizer runs backward itself. Thin subclasses of torch.optim.SGD / torch.optim.Adam."""

from __future__ import annotations

import math

import torch

from zoft.core import Closure, NonFiniteLossError, loss_value
from zoft.optim.traits import BACKPROP


def _backward(optimizer: torch.optim.Optimizer, closure: Closure | None) -> torch.Tensor | None:
    """zero_grad, closure().backward(); with no closure, the gradients already in .grad are used
    (gradient accumulation done by the caller, as with plain torch.optim)."""
    if closure is None:
        return None
    optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = closure()
        value = loss_value(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value}; no update was made")
        loss.backward()
    return loss.detach()


class FOSGD(torch.optim.SGD):
    """SGD with backprop: step(closure) zeroes grads, calls closure().backward(), updates."""

    traits = BACKPROP
    forward_passes = 0

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        loss = _backward(self, closure)
        super().step()
        self.forward_passes += loss is not None
        return loss


class FOAdam(torch.optim.Adam):
    """Adam with backprop, same closure protocol as FOSGD (``adam_eps`` is Adam's epsilon)."""

    traits = BACKPROP
    forward_passes = 0

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), adam_eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=adam_eps, weight_decay=weight_decay)

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        loss = _backward(self, closure)
        super().step()
        self.forward_passes += loss is not None
        return loss
