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

- ``int4`` of a model loaded from a GGUF file whose linear weights are Q4_1 (the bundled
  SmolLM2 is): the file's own blocks are kept, not re-quantized. Q4_1 stores per 32 inputs a
  scale d and a minimum m (fp16) and q in [0, 15], w = d q + m: 0.625 bytes per weight. The
  layer's de-quantized weight is then exactly the weight the de-quantized model holds (checked
  per layer at load), so the quantized base computes the same f as the full-precision one.

The model's other tensors keep their dtype. The quantized weights are frozen parameters (so
parameter counts still count them); a ZO optimizer never sees them. Training can only adapt
around the rounding: the trainable tensors are the scheme's, in their usual precision. Refused
for full fine-tuning (it trains the weights that would be quantized).
"""

from __future__ import annotations

from pathlib import Path

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
        self.minimum = None  # Q4_1's per-group minimum (see from_q4_1); symmetric scales have none
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_q4_1(cls, blocks: torch.Tensor, linear: nn.Linear) -> "QuantizedLinear":
        """The layer of ``linear``'s shape whose weight is the Q4_1 ``blocks`` (out rows of
        in / 32 blocks of 20 bytes: fp16 d, fp16 m, 16 bytes holding q[0:16] in the low nibbles
        and q[16:32] in the high ones), kept as they are (repacked two values per byte in order)."""
        out_f, in_f = linear.out_features, linear.in_features
        if in_f % 32 or tuple(blocks.shape) != (out_f, in_f // 32 * 20):
            raise ValueError(f"Q4_1 blocks of shape {tuple(blocks.shape)} do not fit a {out_f} x {in_f} layer")
        b = blocks.reshape(out_f, in_f // 32, 20)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer.bits, layer.group_size = in_f, out_f, 4, 32
        scale = b[..., 0:2].contiguous().view(torch.float16)[..., 0]
        minimum = b[..., 2:4].contiguous().view(torch.float16)[..., 0]
        qs = b[..., 4:]
        q = torch.cat((qs & 15, qs >> 4), dim=-1).reshape(out_f, in_f)  # values 0..15 in input order
        layer.qweight = nn.Parameter((q[:, 0::2] | (q[:, 1::2] << 4)).contiguous(), requires_grad=False)
        layer.scale = nn.Parameter(scale, requires_grad=False)
        layer.minimum = nn.Parameter(minimum, requires_grad=False)
        layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The (out, in) weight in ``dtype``, as the quantized values stand for it."""
        if self.bits == 8:
            return (self.qweight.to(torch.float32) * self.scale[:, None]).to(dtype)
        packed = self.qweight.to(torch.int16)
        q = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(self.out_features, -1)
        q = q.reshape(self.out_features, -1, self.group_size).to(torch.float32)
        if self.minimum is None:
            groups = (q - 8) * self.scale[..., None]
        else:  # gguf's Q4_1: (d q) + m in float32, d and m stored as fp16
            groups = q * self.scale.float()[..., None] + self.minimum.float()[..., None]
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
        kind = "q4_1" if self.minimum is not None else f"int{self.bits}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


def frozen_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of the linear layers --quantize replaces: frozen, not the output head."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return [(name, module) for name, module in model.named_modules()
            if type(module) is nn.Linear and module is not head and not module.weight.requires_grad]


def quantize_frozen(model: nn.Module, kind: str, group_size: int = GROUP_SIZE,
                    gguf_file: str | Path | None = None) -> tuple[int, int]:
    """Replace ``model``'s frozen linear layers (:func:`frozen_linears`) by QuantizedLinear in
    place; returns (layers replaced, of which kept from ``gguf_file``'s Q4_1 blocks). With
    ``kind`` int4 and the GGUF file the model was loaded from, a layer whose tensor there is
    Q4_1 and de-quantizes to exactly the layer's weight keeps the file's blocks; the others are
    quantized from their weight. Raises ValueError when none is frozen (full fine-tuning)."""
    check_choice("quantize", kind, QUANTIZATIONS)
    bits = 8 if kind == "int8" else 4
    targets = frozen_linears(model)
    if not targets:
        raise ValueError(f"--quantize {kind}: the model has no frozen linear layer to quantize (full "
                         "fine-tuning trains every weight); use a PEFT scheme (lora, prefix, prompt)")
    blocks = q4_1_blocks(gguf_file, base_model(model)) if kind == "int4" and gguf_file is not None else {}
    kept = 0
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = _from_file(blocks.get(id(module)), module)
        kept += layer is not None
        setattr(parent, child, layer or QuantizedLinear(module, bits, group_size))
    return len(targets), kept


def _from_file(candidates: list[torch.Tensor] | None, linear: nn.Linear) -> QuantizedLinear | None:
    """The Q4_1 layer of the file's blocks (as stored, or with llama.cpp's rotary row order
    undone) that de-quantizes to exactly ``linear``'s weight; None when neither does."""
    for blocks in candidates or []:
        layer = QuantizedLinear.from_q4_1(blocks, linear)
        if torch.equal(layer.dequantized(torch.float32).to(linear.weight.dtype), linear.weight.detach()):
            return layer
    return None


def q4_1_blocks(path: str | Path, model: nn.Module) -> dict[int, list[torch.Tensor]]:
    """id of each linear module of the bare HF ``model`` -> the Q4_1 blocks of its weight in the GGUF file ``path`` (rows as
    stored, then with llama.cpp's q/k rotary permutation undone, for the caller to check)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    arch_name = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    layers = getattr(model.config, "num_hidden_layers", 0)
    if arch is None or not layers:
        return {}
    names = gguf.get_tensor_name_map(arch, layers)
    by_gguf = {t.name: t for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_1}
    heads = getattr(model.config, "num_attention_heads", 0)
    kv_heads = getattr(model.config, "num_key_value_heads", heads) or heads
    out: dict[int, list[torch.Tensor]] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):  # under LoRA the frozen linear is ``NAME.base_layer``
            continue
        gguf_name = names.get_name(module_name.removesuffix(".base_layer"))
        tensor = by_gguf.get(f"{gguf_name}.weight") if gguf_name else None
        if tensor is None:
            continue
        raw = torch.from_numpy(tensor.data.copy())
        options = [raw]
        for n in (heads, kv_heads):
            if n and raw.shape[0] % (2 * n) == 0:  # transformers' reverse_permute_weights
                options.append(raw.reshape(n, raw.shape[0] // n // 2, 2, -1).transpose(1, 2).reshape(raw.shape))
        out[id(module)] = options
    return out


def quantized_bytes(model: nn.Module) -> int:
    """Bytes held by the quantized layers' weights, scales and minima."""
    return sum(t.numel() * t.element_size() for m in model.modules() if isinstance(m, QuantizedLinear)
               for t in (m.qweight, m.scale, m.minimum) if t is not None)
