"""Meta-training of a FineTuner (learning to learn, once per base model).

Along a trajectory of the base model, each step t with batch x_t:

 1. s = FineTuner(stats of theta, l+, l-, previous s)                (graph to phi kept)
 2. the central ZO estimate at theta with block b perturbed by +-eps * s_b * u_b, evaluated
    in place under no_grad with zoft's own estimator (the same seeded directions the
    zo-finetuner optimizer draws): a_i = (l+_i - l-_i) / 2 for query i
 3. theta' = theta - lr * sum_i a_i / (q eps) * s_b * u_ib, formed functionally (u materialised)
 4. meta-loss L(theta'; x_t), evaluated with torch.func.functional_call; backprop to phi
    (through the model, once per base model) and one Adam step on phi with ``meta_lr``
 5. the trajectory moves on: theta <- theta' (detached)

Every ``reset_every`` steps theta goes back to its start (and l+-, s to their initial
values): the paper resets every few epochs, i.e. ``reset_every = epochs * batches per
epoch``. The finite-difference scalars a_i are constants for the meta-gradient (as in the
public code): phi learns through the scale s_b of the step it causes. Differentiating
through l+- as well would keep the graphs of 2q more forward passes.

There are no hidden factors: the public code's /20 in the estimate and x10 in the update are
here the plain eps and lr of the estimate and step, both named arguments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from zoft.core import Estimate, ParamSpace, derive_seed, loss_value
from zoft.estimators import make_estimator
from zoft.learned.finetuner import FineTuner, FineTunerConfig, GroupBy, block_layout
from zoft.core.checks import check_int, check_range

LossFn = Callable[[Any], torch.Tensor]
"""loss_fn(batch) -> scalar loss of the model at its current parameters (e.g. Objective.loss)."""


@dataclass
class MetaHistory:
    """Per meta-step: the meta-loss L(theta'; x_t), the mean (l+ + l-)/2 of the estimate
    (about L(theta; x_t)), and the steps at which theta was reset to its start."""

    meta_loss: list[float] = field(default_factory=list)
    base_loss: list[float] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)


class _LossOf(nn.Module):
    """Wraps model + loss_fn so that functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(batch)


def _cycle(batches: Iterable) -> Iterator:
    """Pass after pass over ``batches``; an empty pass (exhausted iterator) is an error."""
    passes = 0
    while True:
        seen = False
        for batch in batches:
            seen = True
            yield batch
        passes += 1
        if not seen:
            raise ValueError(f"batches yielded nothing on pass {passes}: give a re-iterable (list, "
                             "DataLoader) or an endless iterator")


def _check(steps: int, lr: float, meta_lr: float, eps: float, reset_every: int, q: int) -> None:
    for name, value, low in (("steps", steps, 1), ("reset_every", reset_every, 0), ("q", q, 1)):
        check_int(name, value, low)
    check_range("lr", lr, 0.0)
    check_range("meta_lr", meta_lr, 0.0, low_open=True)
    check_range("eps", eps, 0.0, low_open=True)


class _Trajectory:
    """The base model's trajectory during meta-training: its trainable tensors in layout
    order, their start, and the previous step's losses and scales."""

    def __init__(self, model: nn.Module, finetuner: FineTuner) -> None:
        by_name = dict(model.named_parameters())
        self.names = finetuner.tensor_names
        self.tensors = [by_name[n] for n in self.names]
        self.start = [p.detach().clone() for p in self.tensors]
        self.n_blocks = len(finetuner.layout)
        self.losses: tuple[float, float] | None = None
        self.prev = torch.ones(self.n_blocks, dtype=torch.float64)

    @torch.no_grad()
    def reset(self) -> None:
        for p, p0 in zip(self.tensors, self.start):
            p.copy_(p0)
        self.losses, self.prev = None, torch.ones(self.n_blocks, dtype=torch.float64)

    @torch.no_grad()
    def move_to(self, theta: list[torch.Tensor], est_losses: list[float], scales: torch.Tensor) -> None:
        for p, value in zip(self.tensors, theta):
            p.copy_(value)
        plus, minus = est_losses[0::2], est_losses[1::2]
        self.losses = (sum(plus) / len(plus), sum(minus) / len(minus))
        self.prev = scales.detach().cpu()


def _lookahead(traj: _Trajectory, finetuner: FineTuner, scales: torch.Tensor, est: Estimate,
               lr: float, eps: float) -> list[torch.Tensor]:
    """theta'_j = theta_j - lr * sum_i a_i / eps * s_b(j) * u_ij, differentiable w.r.t. s
    (the u_ij are materialised: meta-training backpropagates anyway)."""
    s_t = scales[finetuner.tensor_index]
    theta = []
    for j, p in enumerate(traj.tensors):
        move = sum(t.coef * t.direction.weight(j, p) * t.direction.materialize(j, p) for t in est.terms)
        theta.append(p.detach() - (lr / eps) * s_t[j].to(device=p.device, dtype=p.dtype) * move.to(p.dtype))
    return theta


def meta_train(model: nn.Module, batches: Iterable, loss_fn: LossFn, *, base_model: str, steps: int,
               lr: float, meta_lr: float = 1e-3, eps: float = 1e-3, reset_every: int = 0, q: int = 1,
               perturbation: str = "gaussian", rng: str = "torch", seed: int = 0,
               group_by: GroupBy = "tensor", config: FineTunerConfig | None = None,
               finetuner: FineTuner | None = None,
               log: Callable[[int, float, float, list[float]], None] | None = None,
               ) -> tuple[FineTuner, MetaHistory]:
    """Learn a FineTuner for ``model``'s trainable parameters (module docstring).

    model: a model whose trainable parameters (requires_grad) are the blocks: the full model,
      or a PEFT model (only the adapter's tensors). Put it in eval mode (no dropout) so that
      l+ and l- see the same function. Its trainable parameters are left at the end of the
      trajectory (:func:`learn_finetuner` restores them).
    batches: iterated pass after pass. loss_fn(batch): the loss at the current parameters.
    lr, eps, q, perturbation, rng, seed: the inner ZO step (as zo-finetuner's hyperparameters).
    meta_lr: Adam's step size on the networks. reset_every: steps between resets of theta
      to its start (0: never). finetuner: continue training this one (layout checked);
      otherwise a new one with ``config`` and blocks by ``group_by``.
    log(step, meta_loss, base_loss, scales): called after every step (scales: the s_b used).
    Returns the FineTuner (on the CPU, its ``training_record`` filled in) and the history.
    """
    _check(steps, lr, meta_lr, eps, reset_every, q)
    layout = block_layout(model.named_parameters(), group_by)
    if finetuner is None:
        finetuner = FineTuner(layout, base_model, config)
    finetuner.check_base_model(base_model)
    finetuner.check_layout(layout)
    traj = _Trajectory(model, finetuner)
    finetuner.to(traj.tensors[0].device).train()
    estimator = make_estimator("central", q=q, perturbation=perturbation, rng=rng)
    meta_opt = torch.optim.Adam(finetuner.parameters(), lr=meta_lr)
    wrapped, history, batch_iter = _LossOf(model, loss_fn), MetaHistory(), _cycle(batches)
    for t in range(steps):
        if reset_every and t and t % reset_every == 0:
            traj.reset()
            history.resets.append(t)
        batch = next(batch_iter)
        closure = lambda: loss_fn(batch)
        if traj.losses is None:  # no previous step: f(theta) stands for both losses, s = 1
            with torch.no_grad():
                traj.losses = (loss_value(closure()),) * 2
        scales = finetuner.scales(traj.tensors, traj.losses, traj.prev)  # (B,) float64, graph to phi
        s_list = scales.detach().tolist()
        space = ParamSpace(traj.tensors, [eps] * len(traj.tensors), [s_list[b] for b in finetuner.tensor_block])
        with torch.no_grad():
            est = estimator.estimate(closure, space, derive_seed(seed, t))
            for r, direction in est.pending:  # back to theta
                space.displace(direction, r)
        theta = _lookahead(traj, finetuner, scales, est, lr, eps)
        meta_loss = torch.func.functional_call(wrapped, {"model." + n: v for n, v in zip(traj.names, theta)},
                                               (batch,))
        meta_opt.zero_grad(set_to_none=True)
        meta_loss.backward()
        meta_opt.step()
        traj.move_to(theta, est.losses, scales)
        history.meta_loss.append(loss_value(meta_loss))
        history.base_loss.append(sum(traj.losses) / 2)
        if not math.isfinite(history.meta_loss[-1]):
            raise ValueError(f"meta-loss is {history.meta_loss[-1]} at step {t}: lower lr or eps")
        if log is not None:
            log(t, history.meta_loss[-1], history.base_loss[-1], s_list)
    finetuner.to("cpu").eval()
    finetuner.training_record = {
        "hyperparameters": dict(steps=steps, lr=lr, meta_lr=meta_lr, eps=eps, reset_every=reset_every, q=q,
                                perturbation=perturbation, rng=rng, seed=seed),
        "history": asdict(history)}
    return finetuner, history


def learn_finetuner(model: nn.Module, batches: Iterable, loss_fn: LossFn, *, base_model: str,
                    out: str | Path | None = None, restore: bool = True, **hparams: Any) -> FineTuner:
    """The entry point for ``zoft learn-finetuner``: :func:`meta_train`, then save to ``out``.

    hparams: meta_train's keyword arguments (steps and lr are required). With ``restore``
    (default) the model's trainable parameters are put back to their values before
    meta-training. Returns the trained FineTuner (its meta-loss history is in
    ``training_record["history"]`` and in the file).
    """
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if restore else {}
    try:
        finetuner, _ = meta_train(model, batches, loss_fn, base_model=base_model, **hparams)
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    if out is not None:
        finetuner.save(out)
    return finetuner
