"""Pure per-tensor update transforms, chained optax-style: g -> direction of the step.

Each transform maps the estimate g of one tensor (float32, shape of the parameter) to a new
tensor, reading and updating only its own state entries. The shell then applies
p <- p - lr * chain(g). ``support`` is the row block a coordinate estimate touched (None for
dense estimates); only block-aware transforms look at it.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch

State = dict[str, Any]


class Transform(Protocol):
    def init(self, p: torch.Tensor, state: State) -> None: ...

    def apply(self, g: torch.Tensor, p: torch.Tensor, state: State, group: dict,
              support: torch.Tensor | None) -> torch.Tensor: ...


def _buffer(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros(p.shape, dtype=torch.float32 if p.dtype in (torch.float16, torch.bfloat16)
                       else p.dtype, device=p.device)


class HeavyBall:
    """m <- momentum * m + g; returns m (torch.optim.SGD's momentum, no dampening)."""

    key = "momentum_buffer"

    def init(self, p, state):
        state[self.key] = _buffer(p)

    def apply(self, g, p, state, group, support):
        return state[self.key].mul_(group["momentum"]).add_(g)


class Adam:
    """Adam moments with bias correction, as torch.optim.Adam (Kingma & Ba 2015).

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    returns (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + adam_eps).
    """

    key = "exp_avg"

    def init(self, p, state):
        state["step"] = 0
        state["exp_avg"] = _buffer(p)
        state["exp_avg_sq"] = _buffer(p)

    def apply(self, g, p, state, group, support):
        b1, b2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        m = state["exp_avg"].lerp_(g, 1 - b1)
        v = state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(group["adam_eps"])
        return (m / (1 - b1 ** t)).div_(denom)


class Sign:
    """sign(g) (signSGD; Bernstein et al. 2018). sign(0) = 0."""

    def init(self, p, state):
        pass

    def apply(self, g, p, state, group, support):
        return torch.sign(g)


class BlockMomentum:
    """Coordinate momentum of JAGUAR: on the estimated block S only,
    m_S <- beta m_S + (1 - beta) g_S; every other entry of m keeps its value (it persists
    across steps; the public reference code loses it by zeroing .grad first). Returns m.
    """

    key = "momentum_buffer"

    def init(self, p, state):
        state[self.key] = _buffer(p)

    def apply(self, g, p, state, group, support):
        m, beta = state[self.key], group["momentum"]
        if support is None:
            return m.mul_(beta).add_(g, alpha=1 - beta)
        m[support] = m[support].mul_(beta).add_(g[support], alpha=1 - beta)
        return m


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (K. Jordan's Muon). Seed 000 prints b = +4.7750; the
minus sign is required: with +4.7750 the iteration diverges."""


def newton_schulz(m: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate U V^T of M = U S V^T: singular values are pushed into about [0.7, 1.2]."""
    a, b, c = NS_COEFFICIENTS
    x = m.float() / (torch.linalg.matrix_norm(m.float()) + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def orthogonalised(t: torch.Tensor, group: dict | None = None) -> bool:
    """Whether Orthogonalize applies Newton-Schulz to tensor t (the matrices of groups whose
    ``orthogonalise`` is not False) or its fallback."""
    return t.dim() == 2 and (group is None or group.get("orthogonalise", True))


class Orthogonalize:
    """Newton-Schulz(g) for 2-D tensors (Muon); other tensors, and the matrices of a param
    group with ``orthogonalise: False`` (embeddings, as in Muon practice), go through ``fallback``."""

    def __init__(self, fallback: Transform | None) -> None:
        self.fallback = fallback

    def init(self, p, state):
        pass

    def apply(self, g, p, state, group, support):
        if orthogonalised(g, group):
            return newton_schulz(g, group["ns_steps"])
        return g if self.fallback is None else self.fallback.apply(g, p, state, group, support)


def chain_init(chain: Sequence[Transform], p: torch.Tensor, state: State) -> None:
    for t in chain:
        t.init(p, state)


def chain_apply(chain: Sequence[Transform], g, p, state, group, support) -> torch.Tensor:
    for t in chain:
        g = t.apply(g, p, state, group, support)
    return g
