"""LoRA (Hu et al. 2021) through peft: W x + (alpha / r) B A x on the target projections.

Trainable parameters per target ``nn.Linear(in, out)`` (or GPT-2 ``Conv1D``): ``A`` is
(r, in), ``B`` is (out, r), so ``r * (in + out)``. ``B`` starts at zero: the adapted model
equals the base model until ``B`` moves. Adapter weights are kept in fp32 even on a
bf16/fp16 base (peft's ``autocast_adapter_dtype``), so ZO perturbations are not rounded away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from zoft.core.checks import check_int, invalid
from zoft.peft.base import SchemeConfig, model_type, refuse_peft_model, seeded_for, task_type

# q and v projections, as in the LoRA paper and MeZO; peft's own table covers other types.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "opt": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),  # GPT-2 fuses q, k, v into one Conv1D
}


@dataclass
class LoraSchemeConfig(SchemeConfig):
    """Options of the ``lora`` scheme."""

    default_eps = 1e-2

    lora_r: int = field(default=8, metadata={"help": "rank r of the update B A"})
    lora_alpha: float = field(default=16, metadata={"help": "scale: the update is (alpha / r) B A"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input, in [0, 1)"})
    lora_targets: tuple[str, ...] | str | None = field(default=None, metadata={
        "help": "module names to adapt (list or comma-separated); default: q/v projections "
                "per architecture (llama, opt: q_proj,v_proj; gpt2: c_attn)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("lora_r", self.lora_r, 1)
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) \
                or self.lora_alpha <= 0:
            raise invalid("lora_alpha", self.lora_alpha, "a number > 0")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise invalid("lora_dropout", self.lora_dropout, "a number in [0, 1)")
        if isinstance(self.lora_targets, str):
            self.lora_targets = tuple(t.strip() for t in self.lora_targets.split(","))
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)
            if not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets):
                raise invalid("lora_targets", self.lora_targets, "non-empty module names")

    def targets(self, model: nn.Module) -> tuple[str, ...] | None:
        """The modules to adapt; None lets peft pick its default for the architecture."""
        return self.lora_targets or DEFAULT_TARGETS.get(model_type(model))

    def apply(self, model: nn.Module) -> nn.Module:
        refuse_peft_model(model)
        targets = self.targets(model)
        config = LoraConfig(task_type=task_type(model), r=self.lora_r,
                            lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                            target_modules=list(targets) if targets else None,
                            fan_in_fan_out=_is_conv1d(model, targets))
        with seeded_for(model, self.seed):  # lora_A's Kaiming init draws from the global RNG
            return get_peft_model(model, config)


def _is_conv1d(model: nn.Module, targets: tuple[str, ...] | None) -> bool:
    """True when the targets are GPT-2 style ``Conv1D`` (weight stored as (in, out))."""
    return bool(targets) and any(isinstance(m, Conv1D) for name, m in model.named_modules()
                                 if name.rsplit(".", 1)[-1] in targets)
