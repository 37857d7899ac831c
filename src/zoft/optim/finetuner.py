"""zo-finetuner: ZO-SGD whose perturbation is scaled per block by a learned FineTuner.

One step t (Zhang et al. 2025, arXiv 2510.00419):

 1. s_b = c * sigma_b = FineTuner(mean(theta_b), var(theta_b), l+_{t-1}, l-_{t-1}, s_b,{t-1}),
    normalised so that sum_b n_b s_b^2 = sum_b n_b (the isotropic energy). Before the first
    step there is no previous step: l+ = l- = f(theta_0) (one extra forward pass, once) and
    s_b = 1 (the isotropic scale), exactly as in meta-training.
 2. the central two-point estimate with block b perturbed by +-eps * s_b * u_b:
        a = (f(theta + eps s.u) - f(theta - eps s.u)) / (2 eps),   g_b = a * s_b * u_b
 3. theta_b <- theta_b - lr (g_b + wd theta_b), fused with the restore of step 2.

Why g_b = a * s_b * u_b (and not a * u_b / s_b): with v = s.u, the block-scaled direction,
a estimates the directional derivative grad f . v, and g = (grad f . v) v, whose mean is
E[v v^T] grad f = S^2 grad f with S^2 = diag(s_b^2 I_{n_b}): a gradient step preconditioned
by the learned block-diagonal S^2, of trace d (the energy normalisation). This is the
estimate of the paper (z ~ N(0, Sigma), g = a z), the one meta-training optimises, and
ParamSpace's convention (perturb by eps_j s_j u_j, estimate a s_j / eps_j u_j). The other
choice, a u_b / s_b, is unbiased for grad f but its variance in block b grows as 1/s_b^2:
the blocks the network wants to move least would get the noisiest, largest steps.
With every s_b = 1 the step is exactly zo-sgd's.

Memory: the directions are replayed from seeds as in zo-sgd; the only state is B + 2 floats
(the previous scales and losses), where B is the number of blocks. The FineTuner itself is
B * (5 * hidden + 2 * hidden + 1) weights (B = 150 blocks, hidden 64: 0.2 MB).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from zoft.core import Closure, Estimate, NonFiniteLossError, ParamSpace, loss_value
from zoft.learned.finetuner import FineTuner
from zoft.optim.base import ZOOptimizer
from zoft.optim.traits import Traits

_STATE_KEY = "zo_finetuner"


def fingerprint(finetuner: FineTuner) -> str:
    """SHA-256 of the FineTuner's base model, layout and weights (identifies it in checkpoints)."""
    h = hashlib.sha256(finetuner.base_model.encode())
    h.update(repr([(b.name, b.tensors, b.shapes) for b in finetuner.layout]).encode())
    for key, value in finetuner.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ZOFineTuner(ZOOptimizer):
    """ZO-SGD with the per-block perturbation scales of a learned FineTuner (module docstring).

    finetuner: a FineTuner, or the path of a file written by ``FineTuner.save``.
    base_model: when given, must equal the FineTuner's base model.
    Parameters: (name, tensor) pairs (or groups of them) are matched to the FineTuner's
    blocks by name; plain tensors must come in the layout's order (model.named_parameters()
    order, trainable ones only). Any mismatch is a ValueError naming the first block.
    Needs the central estimator (its networks read l+ and l-); q > 1 queries feed the means
    of the + and - losses. The FineTuner is moved to the parameters' device.
    """

    traits = Traits(named_params=True, needs_finetuner=True)

    def __init__(self, params: Iterable, finetuner: FineTuner | str | Path | None = None,
                 lr: float = 1e-3, eps: float = 1e-3, base_model: str | None = None, **kw: Any) -> None:
        if finetuner is None:
            raise ValueError("zo-finetuner needs finetuner=<a FineTuner, or the path of a file written by "
                             "FineTuner.save / zoft learn-finetuner>")
        if not isinstance(finetuner, FineTuner):
            finetuner = FineTuner.load(finetuner)
        finetuner.check_base_model(base_model)
        super().__init__(params, lr=lr, eps=eps, **kw)
        if self.estimator_name != "central":
            raise ValueError(f"invalid estimator {self.estimator_name!r} for zo-finetuner; allowed: central "
                             "(its networks read the previous step's l+ and l-)")
        if self.config["perturbation"] == "dap":
            raise ValueError("invalid perturbation 'dap' for zo-finetuner; allowed: gaussian, rademacher, sphere")
        tensors = [p for p, _ in self._tensors()]
        self._order = finetuner.match(self._names(), [p.shape for p in tensors])
        self._block_of = [0] * len(tensors)
        for k, j in enumerate(self._order):
            self._block_of[j] = finetuner.tensor_block[k]
        self.finetuner = finetuner.to(tensors[0].device)
        self._fingerprint = fingerprint(finetuner)
        self._losses: tuple[float, float] | None = None  # l+, l- of the previous step
        self._scales: list[float] | None = None  # s_b of the previous step
        self._next: list[float] | None = None  # s_b of the step under way

    def _names(self) -> list[str] | None:
        if any("param_names" not in g for g in self.param_groups):
            return None
        return [n for g in self.param_groups for n, p in zip(g["param_names"], g["params"]) if p.requires_grad]

    # -- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is not None:
            self._next = self._block_scales(closure)
        return super().step(closure)

    def _block_scales(self, closure: Closure) -> list[float]:
        """s_b for this step from the FineTuner (the state is committed in _update)."""
        if self._losses is None:
            f0 = loss_value(closure())
            self.forward_passes += 1
            if not math.isfinite(f0):
                raise NonFiniteLossError(f"loss is {f0} at the starting point; parameters unchanged")
            self._losses, self._scales = (f0, f0), [1.0] * len(self.finetuner.layout)
        tensors = [p for p, _ in self._tensors()]
        prev = torch.tensor(self._scales, dtype=torch.float64)
        return self.finetuner.scales([tensors[j] for j in self._order], self._losses, prev).tolist()

    def _space(self) -> ParamSpace:
        if self._next is None:
            raise RuntimeError("ZOFineTuner._space is only valid inside step()")
        space = super()._space()
        space.scale = [self._next[b] for b in self._block_of]
        return space

    def _update(self, space: ParamSpace, est: Estimate) -> None:
        super()._update(space, est)
        plus, minus = est.losses[0::2], est.losses[1::2]
        self._losses = (sum(plus) / len(plus), sum(minus) / len(minus))
        self._scales, self._next = self._next, None

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd[_STATE_KEY] = {"fingerprint": self._fingerprint,
                          "losses": None if self._losses is None else list(self._losses),
                          "scales": None if self._scales is None else list(self._scales)}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mine = state_dict.get(_STATE_KEY)
        if mine is None:
            raise ValueError(f"state_dict has no {_STATE_KEY!r} entry: it was not saved by zo-finetuner")
        if mine["fingerprint"] != self._fingerprint:
            raise ValueError("state_dict was saved with a different FineTuner (fingerprint "
                             f"{mine['fingerprint'][:12]}, this optimizer's {self._fingerprint[:12]})")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != _STATE_KEY})
        self._losses = None if mine["losses"] is None else (float(mine["losses"][0]), float(mine["losses"][1]))
        self._scales = None if mine["scales"] is None else [float(s) for s in mine["scales"]]
