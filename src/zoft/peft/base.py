"""What every fine-tuning scheme shares: the config base class and parameter bookkeeping.

A scheme decides which parameters are trainable (``requires_grad=True``); the ZO optimizers
perturb exactly those, so :func:`trainable_parameters` is the parameter list to hand them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from typing import ClassVar
from typing import Iterator

from peft import PeftModel, PeftType, TaskType
from torch import nn

from zoft.core.checks import check_int
from zoft.models import is_masked_lm, seeded

# Prompt-learning methods that prepend virtual positions to the input embeddings (so the
# output logits are longer by num_virtual_tokens); prefix tuning instead enters as past
# key/values and leaves the sequence length alone.
_PREPENDING = (PeftType.PROMPT_TUNING, PeftType.P_TUNING, PeftType.MULTITASK_PROMPT_TUNING)


@dataclass
class SchemeConfig:
    """Base of the scheme configs: options are dataclass fields with help text in metadata.

    Class-level traits, read by TrainConfig instead of testing scheme names:
    ``default_eps`` (MeZO's perturbation size for the scheme, Malladi et al. 2023, appendix)
    and ``dense`` (every base weight is trainable: dense noise over the whole model, so the
    counter noise engine and amp-bf16 pay off and master weights would double the model)."""

    default_eps: ClassVar[float] = 1e-3
    dense: ClassVar[bool] = False

    seed: int = field(default=0, metadata={
        "help": "seed of the adapter's random initialisation (the global RNG is left as is)"})

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0)

    def apply(self, model: nn.Module) -> nn.Module:
        """Return ``model`` with this scheme's trainable parameters set up."""
        raise NotImplementedError

    @classmethod
    def options(cls) -> dict[str, str]:
        """Option name -> help text."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}  # ClassVar traits excluded


def cuda_indices(model: nn.Module) -> tuple[int, ...]:
    """Indices of the CUDA devices holding parameters of ``model``."""
    return tuple(sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"}))


@contextlib.contextmanager
def seeded_for(model: nn.Module, seed: int) -> Iterator[None]:
    """Seeded RNG for initialising an adapter on ``model``'s devices; global state restored."""
    with seeded(seed, cuda_indices(model)):
        yield


def task_type(model: nn.Module) -> TaskType:
    """peft's task type for ``model``: CAUSAL_LM, or FEATURE_EXTRACTION for a masked LM (peft has
    no masked-LM type; its generic wrapper passes the adapter through and returns the MLM logits,
    where the causal one would look for generation methods a masked LM lacks)."""
    return TaskType.FEATURE_EXTRACTION if is_masked_lm(model) else TaskType.CAUSAL_LM


def refuse_peft_model(model: nn.Module) -> None:
    """Adapters are applied once, to a plain transformers model."""
    if isinstance(model, PeftModel):
        raise ValueError("model already carries a peft adapter; apply a scheme to the base model")


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter with ``requires_grad``; shared ones once."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` element counts; tied (shared) parameters are counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def position_offset(model: nn.Module) -> int:
    """Leading output positions that belong to no input token.

    Prompt tuning prepends ``num_virtual_tokens`` soft tokens to the input embeddings, so
    ``model(input_ids).logits`` has shape (batch, virtual + seq, vocab) and the logits of
    input position ``t`` are at ``t + position_offset(model)``; scoring code slices
    ``logits[:, offset:]``. (peft pads ``labels`` with -100 itself, so the built-in loss
    needs no offset.) Prefix tuning, LoRA and full fine-tuning return 0.
    """
    if not isinstance(model, PeftModel):
        return 0
    config = model.active_peft_config
    return config.num_virtual_tokens if config.peft_type in _PREPENDING else 0


def model_type(model: nn.Module) -> str:
    """``config.model_type`` of a transformers model ('' when it has none)."""
    return getattr(getattr(model, "config", None), "model_type", "") or ""


def vocab_size(model: nn.Module) -> int:
    """Rows of the input embedding matrix."""
    return model.get_input_embeddings().weight.shape[0]


__all__ = ["SchemeConfig", "count_parameters", "position_offset",
           "refuse_peft_model", "seeded_for", "trainable_parameters"]
