"""Fine-tuning schemes: which parameters a ZO optimizer perturbs.

    model = apply_peft(model, "lora", lora_r=8)
    opt = zoft.make_optimizer("zo-sgd", [p for _, p in trainable_parameters(model)], lr=1e-4)

Schemes (each a config dataclass in its own module; options are its fields):

- ``full``: every parameter trainable, model unchanged.
- ``lora``: ``lora_r`` (8), ``lora_alpha`` (16), ``lora_dropout`` (0.0), ``lora_targets``.
- ``prefix``: ``prefix_tokens`` (5), ``prefix_init`` (real | random).
- ``prompt``: ``prompt_tokens`` (10), ``prompt_init`` (vocab | random); shifts the logits by
  :func:`position_offset`.

All take ``seed`` (0) for the adapter's initialisation. LoRA, prefix and prompt go through the
real ``peft`` library (task type CAUSAL_LM) and return a ``peft.PeftModel`` whose base
parameters are frozen.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from zoft.core import Registry
from zoft.peft.base import (SchemeConfig, count_parameters, position_offset,
                            trainable_parameters)
from zoft.peft.full import FullConfig
from zoft.peft.lora import LoraSchemeConfig
from zoft.peft.prefix import PrefixSchemeConfig
from zoft.peft.prompt import PromptSchemeConfig

SCHEMES: Registry[type[SchemeConfig]] = Registry("scheme")
SCHEMES.register("full", FullConfig)
SCHEMES.register("lora", LoraSchemeConfig)
SCHEMES.register("prefix", PrefixSchemeConfig)
SCHEMES.register("prompt", PromptSchemeConfig)


def list_schemes() -> list[str]:
    """Names accepted by :func:`apply_peft`, sorted."""
    return SCHEMES.names()


def scheme_options(scheme: str) -> dict[str, str]:
    """Option name -> help text of ``scheme``."""
    return SCHEMES.get(scheme).options()


def apply_peft(model: nn.Module, scheme: str, **options: Any) -> nn.Module:
    """Set up ``scheme`` on ``model``; return the model to train (a PeftModel except for full).

    Raises ValueError for an unknown scheme, an option the scheme does not take, or a bad
    option value, naming it and what is allowed.
    """
    config_cls = SCHEMES.get(scheme)
    allowed = config_cls.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for scheme {scheme}; allowed: {sorted(allowed)}")
    return config_cls(**options).apply(model)


__all__ = ["SCHEMES", "SchemeConfig", "apply_peft", "count_parameters", "list_schemes",
           "position_offset", "scheme_options", "trainable_parameters"]
