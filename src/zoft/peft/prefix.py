"""Prefix tuning (Li & Liang 2021) through peft: trainable key/value prefixes in every layer.

Each attention layer sees ``prefix_tokens`` extra key/value positions before the input
(passed as ``past_key_values``), with no reparameterisation MLP, as in MeZO. Trainable
parameters: ``prefix_tokens * layers * 2 * kv_dim`` with ``kv_dim = kv_heads * head_dim``
(grouped-query models store the smaller kv width). The sequence length, and so the logits,
are unchanged.

Init ``real`` (default, MeZO's ``--prefix_init_by_real_act``, after Li & Liang) sets the
prefix to the keys/values the frozen model computes for ``prefix_tokens`` random vocabulary
tokens, so the adapted model at init is exactly the base model reading those tokens first;
``random`` keeps peft's N(0, 1) init.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from torch import nn

from zoft.core.checks import check_choice, check_int
from zoft.models import is_masked_lm
from zoft.peft.base import SchemeConfig, refuse_peft_model, seeded_for, task_type, vocab_size

INITS = ("real", "random")


@dataclass
class PrefixSchemeConfig(SchemeConfig):
    """Options of the ``prefix`` scheme."""

    default_eps = 1e-1

    prefix_tokens: int = field(default=5, metadata={"help": "prefix length per layer (MeZO: 5)"})
    prefix_init: str = field(default="real", metadata={
        "help": "real: key/values of random vocabulary tokens (MeZO); random: N(0, 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("prefix_tokens", self.prefix_tokens, 1)
        if self.prefix_init not in INITS:
            check_choice("prefix_init", self.prefix_init, INITS)

    def apply(self, model: nn.Module) -> nn.Module:
        refuse_peft_model(model)
        config = PrefixTuningConfig(task_type=task_type(model),
                                    num_virtual_tokens=self.prefix_tokens)
        with seeded_for(model, self.seed):
            peft_model = get_peft_model(model, config)
        if self.prefix_init == "real":
            init_by_real_activations(peft_model, self.seed)
        return peft_model


@torch.no_grad()
def init_by_real_activations(model: PeftModel, seed: int) -> None:
    """Set the prefix to the key/values of random tokens run through the frozen base model.

    peft reads the prefix weight, shape (n, layers * 2 * kv_heads * head_dim), as
    (n, layers, key|value, kv_heads, head_dim); a transformers ``DynamicCache`` holds per layer
    keys and values of shape (batch, kv_heads, n, head_dim). Token ids come from a generator
    seeded with ``seed``.
    """
    weight = model.prompt_encoder[model.active_adapter].embedding.weight  # (n, L*2*kv_dim)
    n = weight.shape[0]
    base = model.get_base_model()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size(base), (1, n), generator=gen).to(base.device)
    kv = _encoder_key_values(base, ids) if is_masked_lm(base) else _decoder_key_values(base, ids)
    if kv.numel() != weight.numel():  # (L, 2, kv_heads, n, head_dim)
        raise ValueError(f"prefix_init 'real': cache of {kv.numel()} values does not fit the "
                         f"prefix of {weight.numel()} for {base.config.model_type}; "
                         "use prefix_init='random'")
    weight.copy_(kv.permute(3, 0, 1, 2, 4).reshape(n, -1))


def _decoder_key_values(base: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(L, 2, kv_heads, n, head_dim): the keys and values a causal LM caches for ``ids``."""
    cache = base(input_ids=ids, use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"prefix_init 'real' needs a transformers Cache, got {type(cache).__name__}; "
                         "use prefix_init='random'")
    return torch.stack([torch.stack((layer.keys[0], layer.values[0])) for layer in layers])


def _encoder_key_values(base: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(L, 2, heads, n, head_dim): the key and value projections of a BERT-style encoder
    (``...attention.self.key`` / ``.value`` modules) on ``ids``. An encoder caches nothing,
    so they are caught by forward hooks; as the tokens also see each other both ways, the
    adapted model at init is not exactly the base reading them first, only at its scale."""
    heads = base.config.num_attention_heads
    keys = [name for name, _ in base.named_modules() if name.endswith("attention.self.key")]  # layer order
    pairs = [(k, k.removesuffix("key") + "value") for k in keys]
    if not pairs:
        raise ValueError(f"prefix_init 'real': no attention.self.key/value modules in {type(base).__name__}; "
                         "use prefix_init='random'")
    found: dict[str, torch.Tensor] = {}
    hooks = [base.get_submodule(name).register_forward_hook(lambda mod, args, out, name=name: found.__setitem__(name, out))
             for pair in pairs for name in pair]
    try:
        base(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    per_head = lambda out: out[0].reshape(out.shape[1], heads, -1).transpose(0, 1)  # (heads, n, head_dim)
    return torch.stack([torch.stack((per_head(found[k]), per_head(found[v]))) for k, v in pairs])
