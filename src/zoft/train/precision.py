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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

LOW_PRECISION = (torch.bfloat16, torch.float16)


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
