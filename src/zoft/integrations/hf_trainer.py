"""Use a zoft ZO optimizer inside a transformers ``Trainer`` (a thin adapter, not a fork).

    from transformers import Trainer
    from zoft.integrations.hf_trainer import ZOTrainerMixin

    class ZOTrainer(ZOTrainerMixin, Trainer):
        pass

    opt = zoft.make_optimizer("zo-sgd", [p for p in model.parameters() if p.requires_grad],
                              lr=1e-6, eps=1e-3)
    trainer = ZOTrainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.train()

Each training step calls ``optimizer.step(closure)`` with the Trainer's own forward-only loss
(``compute_loss`` under no_grad, model in eval mode, so the two ZO evaluations see the same
function). Trainer's later closure-less ``optimizer.step()`` and gradient clipping then find no
gradients and do nothing. Use gradient_accumulation_steps=1: each Trainer micro-step is a full
ZO step.
"""

from __future__ import annotations

from typing import Any

import torch

from zoft.optim import ZOOptimizer
from zoft.optim.traits import BACKPROP


class ZOTrainerMixin:
    """Mix in before ``transformers.Trainer``; pass a zoft ZO optimizer in ``optimizers``."""

    def _zo_optimizer(self) -> ZOOptimizer:
        opt = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        if not getattr(type(opt), "traits", BACKPROP).closure_driven:
            raise ValueError("ZOTrainerMixin needs a zoft ZO optimizer: Trainer(..., optimizers=(opt, None))")
        opt.external_loop = True
        return opt

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        opt = self._zo_optimizer()
        model.eval()
        inputs = self._prepare_inputs(inputs)
        loss = opt.step(lambda: self.compute_loss(model, inputs))
        return loss.detach().to(self.args.device)
