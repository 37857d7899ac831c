"""A quantized frozen base: the frozen linear layers of a PEFT model stored in int8 or int4.

LoRA, prefix and prompt tuning train a few small tensors; the base they adapt is read only.
``quantize_frozen(model, "int8")`` replaces every frozen ``nn.Linear`` of the model (the
transformer's projections and MLPs; not the output head, which zoft reads through its
scored-position hook and which is tied to the embedding in many models, and not the trainable
LoRA matrices) by a :class:`QuantizedLinear`:

- ``int8``: symmetric per-output-row scales, w ~ scale[o] * q[o, i] with q in [-127, 127];
  1 byte per weight plus 4 bytes per row (a quarter of fp32, half of bf16). On CPU the product
  runs in torch's fused weight-only kernel (``aten._weight_int8pack_mm``); elsewhere, and when a
  gradient must flow back through the layer (the FO baselines), the weight is de-quantized one
  layer at a time.
- ``int4``: symmetric scales per group of ``group_size`` (32) inputs, q in [-8, 7], two values
  per byte: 0.5 byte per weight plus 4 bytes per group (0.625 bytes: 1/6.4 of fp32). De-quantized one layer at
  a time for each product (slower; the memory is the point).

The model's other tensors keep their dtype. The quantized weights are frozen parameters (so
parameter counts still count them); a ZO optimizer never sees them. Training can only adapt
around the rounding: the trainable tensors are the scheme's, in their usual precision. Refused
for full fine-tuning (it trains the weights that would be quantized).
"""

from __future__ import annotations

import torch
from torch import nn

from zoft.core.checks import check_choice
from zoft.models import base_model
from zoft.train.config import QUANTIZATIONS

GROUP_SIZE = 32


class QuantizedLinear(nn.Module):
    """A frozen linear layer with int8 or int4 weights (see the module docstring)."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        if bits == 8:
            scale = weight.abs().amax(1).clamp_min(1e-12) / 127
            q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        else:
            if self.in_features % group_size or self.in_features % 2:
                raise ValueError(f"int4: in_features {self.in_features} is not a multiple of the group size {group_size}")
            groups = weight.reshape(self.out_features, -1, group_size)
            scale = groups.abs().amax(2).clamp_min(1e-12) / 7  # (out, in / group)
            q = torch.round(groups / scale[..., None]).clamp_(-8, 7).to(torch.int8).reshape(self.out_features, -1)
            q = ((q[:, 0::2] + 8) | ((q[:, 1::2] + 8) << 4)).to(torch.uint8)  # two per byte
        self.group_size = group_size
        self.qweight = nn.Parameter(q, requires_grad=False)
        self.scale = nn.Parameter(scale.to(torch.float32), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The (out, in) weight in ``dtype``, as the quantized values stand for it."""
        if self.bits == 8:
            return (self.qweight.to(torch.float32) * self.scale[:, None]).to(dtype)
        packed = self.qweight.to(torch.int16)
        q = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(self.out_features, -1) - 8
        groups = q.reshape(self.out_features, -1, self.group_size).to(torch.float32) * self.scale[..., None]
        return groups.reshape(self.out_features, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = (self.bits == 8 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                 and not (torch.is_grad_enabled() and x.requires_grad))
        if fused:
            out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).contiguous(), self.qweight,
                                                     self.scale.to(x.dtype))
            out = out.reshape(*x.shape[:-1], self.out_features)
        else:
            out = nn.functional.linear(x, self.dequantized(x.dtype))
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}"


def frozen_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of the linear layers --quantize replaces: frozen, not the output head."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return [(name, module) for name, module in model.named_modules()
            if type(module) is nn.Linear and module is not head and not module.weight.requires_grad]


def quantize_frozen(model: nn.Module, kind: str, group_size: int = GROUP_SIZE) -> int:
    """Replace ``model``'s frozen linear layers (:func:`frozen_linears`) by QuantizedLinear in
    place; returns how many were replaced. Raises ValueError when none is frozen (full fine-tuning)."""
    check_choice("quantize", kind, QUANTIZATIONS)
    bits = 8 if kind == "int8" else 4
    targets = frozen_linears(model)
    if not targets:
        raise ValueError(f"--quantize {kind}: the model has no frozen linear layer to quantize (full "
                         "fine-tuning trains every weight); use a PEFT scheme (lora, prefix, prompt)")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantizedLinear(module, bits, group_size))
    return len(targets)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes held by the quantized layers' weights and scales."""
    return sum(m.qweight.numel() * m.qweight.element_size() + m.scale.numel() * 4
               for m in model.modules() if isinstance(m, QuantizedLinear))
