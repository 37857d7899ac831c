"""What the training loop needs to know about an optimizer, declared by the optimizer class.

Each optimizer class has a ``traits`` attribute; the loop, the session and TrainConfig read it
through :func:`zoft.optim.optimizer_traits` and never test optimizer names. A torch.optim
optimizer registered without traits is treated as a backprop optimizer (:data:`BACKPROP`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traits:
    zeroth_order: bool = True
    """Never differentiates the model: no backward pass, no jvp (ZO optimizers)."""
    closure_driven: bool = True
    """step(closure) evaluates the loss itself; otherwise the loop runs backward (and gradient
    accumulation, DistributedDataParallel) and calls step() on the gradients."""
    takes_eps: bool = True
    """Has a perturbation size eps (TrainConfig gives MeZO's default per scheme)."""
    takes_rng: bool = True
    """Draws its noise from a zoft noise engine (``rng``: torch | counter)."""
    needs_module: bool = False
    """Built with ``module=`` the model (forward-mode AD runs the model itself)."""
    eager_attention: bool = False
    """Needs eager attention (torch's fused CPU attention kernels have no jvp)."""
    data_parallel: bool = True
    """Can run data-parallel under torchrun."""
    named_params: bool = False
    """Param groups carry (name, tensor) pairs, matched to a learned layout by name."""
    needs_finetuner: bool = False
    """Needs ``finetuner=FILE``, a file written by ``zoft learn-finetuner``."""


ZEROTH_ORDER = Traits()
BACKPROP = Traits(zeroth_order=False, closure_driven=False, takes_eps=False, takes_rng=False)
