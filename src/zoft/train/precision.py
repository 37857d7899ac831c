"""fp32 master weights for ZO training of bf16/fp16 parameters.

A ZO step moves every trainable tensor three times in place (+eps u, -2 eps u, then +eps u
fused with the update). In bf16 each move rounds to 8 significant bits, so the restore does
not return the weights where they were: with lr = 0 they still random-walk by a fraction of an
ulp per step (bench/precision_drift.py measures it). With master weights the optimizer works
on fp32 copies of the low-precision trainable tensors and the model's tensors are rewritten
from them (rounded once) before each forward: a perturb/restore cycle then returns every nonzero
bf16 weight bit for bit (an exact zero keeps the fp32 cycle's residue, ~1e-9), and updates
smaller than a bf16 ulp accumulate instead of vanishing.

Cost: 4 bytes per low-precision trainable parameter and one copy per changed tensor before a
forward. For PEFT (prefix, prompt) that is a few MB; for full fine-tuning it doubles a bf16
model's weight memory (still well under backprop's gradients and Adam states), so it is opt-in
there. LoRA adapters are fp32 already (peft keeps adapters in fp32 on a bf16 base).

Precision of a run (``TrainConfig.dtype``): ``fp32``, ``bf16`` or ``fp16`` weights, or
``amp-bf16`` (fp32 weights, matmuls under bf16 autocast). ``auto`` (the default) picks bf16
compute where bf16 matmuls run natively (a CPU with AVX512-BF16 or AMX, a CUDA device with
bf16) for zeroth-order training: bf16 weights for PEFT (the frozen base is halved; adapters or
fp32 masters stay exact) and amp-bf16 for full fine-tuning (fp32 weights, so perturbations and
updates stay exact without a second copy). Backprop baselines and machines without native bf16
stay in fp32. The loss is computed in fp32 in every mode (Objective.token_logprobs), so the
finite difference f(x + eps u) - f(x - eps u) is a difference of fp32 numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16", "amp-bf16")
WEIGHTS = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "amp-bf16": "fp32"}
"""The dtype the model's weights are loaded in, per concrete precision."""
COMPUTE = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "amp-bf16": "bf16"}
"""The dtype the matmuls run in, per concrete precision."""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, stay in fp32
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def native_bf16(device: str) -> str | None:
    """Why bf16 matmuls run natively on ``device`` ("cpu" | "cuda"), or None when they do not."""
    if device == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return f"{torch.cuda.get_device_name()} supports bf16" if ok else None
    if device == "cpu":
        found = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
                 if flag in _cpu_flags()]
        return f"the CPU has {' and '.join(found)}" if found else None
    return None


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"invalid dtype {dtype!r}; allowed: {', '.join(DTYPE_CHOICES)}")
    return dtype


def resolve_dtype(dtype: str, device: str, backprop: bool, full: bool) -> tuple[str, str]:
    """(concrete precision, why) for a run's ``dtype`` on ``device`` ("cpu" | "cuda").
    ``backprop``: the optimizer differentiates (FO baselines, forward-grad); ``full``: full
    fine-tuning. Only ``auto`` is resolved; a concrete choice is returned as given."""
    if check_dtype(dtype) != "auto":
        return dtype, "as configured"
    if backprop:
        return "fp32", "auto: fp32 for an optimizer that differentiates"
    reason = native_bf16(device)
    if reason is None:
        return "fp32", f"auto: no native bf16 on {device}"
    return ("amp-bf16" if full else "bf16"), f"auto: {reason}"


class MasterWeights:
    """fp32 masters of ``model``'s low-precision trainable parameters, synced before forwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.masters: dict[str, torch.Tensor] = {}
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, p in model.named_parameters():
            if p.requires_grad and p.dtype in LOW_PRECISION:
                master = p.detach().float().clone().requires_grad_(True)
                self.masters[name] = master
                self._pairs.append((p, master))
        self._synced = [m._version for _, m in self._pairs]
        self._handle = model.register_forward_pre_hook(self.sync)

    def __len__(self) -> int:
        return len(self._pairs)

    def swap_into(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Optimizer param groups with each low-precision parameter replaced by its master."""
        by_id = {id(p): m for p, m in self._pairs}

        def swap(entry):  # a tensor, or a (name, tensor) pair
            if isinstance(entry, tuple):
                return entry[0], by_id.get(id(entry[1]), entry[1])
            return by_id.get(id(entry), entry)

        return [{**g, "params": [swap(p) for p in g["params"]]} for g in groups]

    @torch.no_grad()
    def sync(self, *_: Any) -> None:
        """Round the masters that changed since the last sync into the model's tensors."""
        for k, (p, master) in enumerate(self._pairs):
            if master._version != self._synced[k]:
                p.copy_(master)
                self._synced[k] = master._version

    def state(self) -> dict[str, torch.Tensor]:
        return {name: m.detach().cpu().contiguous() for name, m in self.masters.items()}

    @torch.no_grad()
    def load(self, path: Path) -> None:
        """Masters from a checkpoint's weights file (written with :meth:`state`, fp32)."""
        saved = load_file(str(path))
        for name, master in self.masters.items():
            master.copy_(saved[name])
        self.sync()

    def close(self) -> None:
        self._handle.remove()
