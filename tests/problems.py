"""Small test problems, each an nn.Module so that forward-grad can re-run it functionally."""

from __future__ import annotations

import torch
from torch import nn


class Quadratic(nn.Module):
    """f(x) = 0.5 (x - x*)^T H (x - x*) with H = A^T A / d + I/2 (convex), x split in two tensors."""

    def __init__(self, d: int = 20, seed: int = 0, dtype=torch.float32) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(d, d, generator=gen, dtype=torch.float64)
        self.register_buffer("h", (a.T @ a / d + 0.5 * torch.eye(d, dtype=torch.float64)).to(dtype))
        self.register_buffer("target", torch.randn(d, generator=gen, dtype=torch.float64).to(dtype))
        self.w = nn.Parameter(torch.zeros(d // 4, 2, dtype=dtype))   # a 2-D block (Muon path)
        self.b = nn.Parameter(torch.zeros(d - d // 2, dtype=dtype))  # a 1-D block

    def forward(self) -> torch.Tensor:
        x = torch.cat([self.w.reshape(-1), self.b]) - self.target
        return 0.5 * x @ (self.h @ x)


class Logistic(nn.Module):
    """Mean logistic loss log(1 + exp(-b_i a_i^T x)) of a linear classifier on fixed data."""

    def __init__(self, n: int = 200, d: int = 10, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        truth = torch.randn(d, generator=gen)
        a = torch.randn(n, d, generator=gen)
        self.register_buffer("a", a)
        self.register_buffer("labels", torch.sign(a @ truth + 0.1 * torch.randn(n, generator=gen)))
        self.weight = nn.Parameter(torch.zeros(2, d))  # row 1 is unused by the loss
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self) -> torch.Tensor:
        margins = self.labels * (self.a @ self.weight[0] + self.bias)
        return torch.nn.functional.softplus(-margins).mean()
