"""Prompt tuning (Lester et al. 2021) through peft: trainable soft tokens before the input.

``prompt_tokens`` embedding vectors (hidden size each) are prepended to the input
embeddings, so the output logits are longer by ``prompt_tokens`` positions (see
:func:`zoft.peft.position_offset`). Trainable parameters: ``prompt_tokens * hidden``.

Init ``vocab`` (default) copies the embeddings of tokens sampled uniformly from the
vocabulary (peft's SAMPLE_VOCAB; the real-token init Lester et al. found better than random
and ZO-Bench uses); ``random`` is peft's N(0, 1) init, far off the scale of real embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
from torch import nn

from zoft.core.checks import check_choice, check_int
from zoft.peft.base import SchemeConfig, refuse_peft_model, seeded_for, task_type

INITS = {"vocab": PromptTuningInit.SAMPLE_VOCAB, "random": PromptTuningInit.RANDOM}


@dataclass
class PromptSchemeConfig(SchemeConfig):
    """Options of the ``prompt`` scheme."""

    default_eps = 1e-1

    prompt_tokens: int = field(default=10, metadata={"help": "number of soft prompt tokens"})
    prompt_init: str = field(default="vocab", metadata={
        "help": "vocab: embeddings of random vocabulary tokens; random: N(0, 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("prompt_tokens", self.prompt_tokens, 1)
        if self.prompt_init not in INITS:
            check_choice("prompt_init", self.prompt_init, INITS)

    def apply(self, model: nn.Module) -> nn.Module:
        refuse_peft_model(model)
        config = PromptTuningConfig(task_type=task_type(model),
                                    num_virtual_tokens=self.prompt_tokens,
                                    prompt_tuning_init=INITS[self.prompt_init])
        with seeded_for(model, self.seed):  # both inits draw from the global RNG
            return get_peft_model(model, config)
