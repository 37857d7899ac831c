"""Full fine-tuning: every parameter of the model is trainable (MeZO's "FT" setting)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from zoft.peft.base import SchemeConfig, refuse_peft_model


@dataclass
class FullConfig(SchemeConfig):
    """All parameters trainable; the model itself is returned unchanged (same object)."""

    default_eps = 1e-3
    dense = True

    def apply(self, model: nn.Module) -> nn.Module:
        refuse_peft_model(model)
        return model.requires_grad_(True)
