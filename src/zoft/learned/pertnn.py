"""PertNN: the small network that predicts one parameter block's perturbation scale.

ZO Fine-tuner (Zhang et al. 2025, arXiv 2510.00419) gives every parameter block b
its own PertNN_b, an MLP 5 -> hidden -> 1 with tanh and an absolute value on the output:

    sigma_b = | w2_b . tanh(W1_b x_b + b1_b) + b2_b |,   x_b in R^5 (see FEATURES)

and rescales all blocks together so that the perturbation has the energy of the isotropic
one (:func:`normalised_scales`). Block b is then perturbed by eps * c * sigma_b * u_b.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

FEATURES = ("mean", "log_var", "loss_plus", "loss_minus", "prev_scale")
"""The inputs of every PertNN, in order (built by ``FineTuner.features``):

mean        mean(theta_b), as it is (population mean over the block's entries)
log_var     log(var(theta_b) + var_floor): log-scaled because weight variances span orders
            of magnitude (1e-6 .. 1) that a tanh unit cannot tell apart on a linear scale;
            ``var_floor`` (a FineTunerConfig field) keeps constant tensors (norm weights at 1,
            zero biases) finite
loss_plus   l+ of the previous step, as it is
loss_minus  l- of the previous step, as it is
prev_scale  the previous step's normalised scale c * sigma_b (1 = the isotropic share); the
            normalised value rather than the raw output, because the raw output's overall
            size is arbitrary (the normalisation divides it out)
"""


class PertNN(nn.Module):
    """One block's MLP: 5 -> hidden (tanh) -> 1, absolute value on the output.

    Initialisation (from an explicit generator; the global RNG is never used): the hidden
    layer as torch.nn.Linear's default, U(-1/sqrt(5), 1/sqrt(5)); the output layer's weight
    0 and bias 1, so an untrained PertNN returns sigma = 1 for every input: an untrained
    FineTuner is exactly isotropic ZO-SGD, and meta-training starts from it.
    """

    def __init__(self, hidden: int = 64, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.hidden = nn.utils.skip_init(nn.Linear, len(FEATURES), hidden)
        self.out = nn.utils.skip_init(nn.Linear, hidden, 1)
        bound = 1.0 / math.sqrt(len(FEATURES))
        with torch.no_grad():
            self.hidden.weight.uniform_(-bound, bound, generator=generator)
            self.hidden.bias.uniform_(-bound, bound, generator=generator)
            self.out.weight.zero_()
            self.out.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., 5) features -> (...) sigma >= 0."""
        return self.out(torch.tanh(self.hidden(x))).squeeze(-1).abs()


def stacked_forward(nets: Sequence[PertNN], x: torch.Tensor) -> torch.Tensor:
    """sigma_b = nets[b](x[b]) for every block at once: x (B, 5) -> (B,).

    The same maths as calling each network on its own row, in four batched kernels instead
    of 4B small ones (B is ~100-1000 blocks for an LLM). Differentiable w.r.t. the networks.
    """
    w1 = torch.stack([n.hidden.weight for n in nets])  # (B, H, 5)
    b1 = torch.stack([n.hidden.bias for n in nets])  # (B, H)
    w2 = torch.stack([n.out.weight[0] for n in nets])  # (B, H)
    b2 = torch.stack([n.out.bias[0] for n in nets])  # (B,)
    h = torch.tanh(torch.einsum("bhf,bf->bh", w1, x.to(w1.dtype)) + b1)
    return (torch.einsum("bh,bh->b", w2, h) + b2).abs()


def normalised_scales(sigmas: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """c * sigma_b with c = sqrt(sum_b n_b) / sqrt(sum_b n_b sigma_b^2).

    sigmas: (B,) block scales >= 0; sizes: (B,) entries per block (n_b). Computed in
    float64 and returned in float64 (differentiable w.r.t. sigmas). The perturbation
    eps * c * sigma_b * u_b then has the total energy of the isotropic eps * u:
    sum_b n_b (c sigma_b)^2 = sum_b n_b. Equal sigmas give exactly 1 when sigma is a
    power of two (and within an ulp otherwise). A block with sigma_b = 0 is left
    unperturbed (and unmoved) for the step.

    Raises ValueError when the sigmas are negative, not finite, or all zero (no direction).
    """
    if sigmas.shape != sizes.shape or sigmas.dim() != 1:
        raise ValueError(f"sigmas {tuple(sigmas.shape)} and sizes {tuple(sizes.shape)} must be equal 1-D shapes")
    s = sigmas.to(torch.float64)
    n = sizes.to(device=s.device, dtype=torch.float64)
    energy = (n * s * s).sum()
    bad = ~torch.isfinite(s) | (s < 0)
    if bool(bad.any()) or not bool(energy > 0) or not bool(torch.isfinite(energy)):
        first = int(bad.nonzero()[0]) if bool(bad.any()) else None
        what = f"sigma[{first}] = {float(s[first])}" if first is not None else f"total energy {float(energy)}"
        raise ValueError(f"cannot normalise the block scales: {what} (need finite sigmas >= 0, not all zero)")
    return s * torch.sqrt(n.sum() / energy)
