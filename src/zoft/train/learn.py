"""`zoft learn-finetuner`: meta-train a ZO Fine-tuner on one task, once per base model.

The model, PEFT scheme, task data and objective are built exactly as for `zoft train`
(a Session), so the learned file's block layout is the one `zoft train --optimizer
zo-finetuner --finetuner FILE` will meet with the same --model and --peft.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zoft.learned import learn_finetuner
from zoft.train.config import TrainConfig
from zoft.train.session import Session


@dataclass
class LearnConfig:
    """Meta-training settings; every factor is named (no hidden constants)."""

    steps: int = 200
    lr: float = 1e-4  # the inner ZO step's learning rate along the trajectory
    eps: float | None = None  # perturbation size; default: the scheme's MeZO eps
    meta_lr: float = 1e-3  # Adam learning rate of the PertNN weights
    reset_every: int = 0  # steps between resets of theta to its start (0: epochs=5 of the data)
    epochs_per_reset: int = 5
    group_by: str = "tensor"  # tensor | module
    hidden: int = 64


def learn_command(train_cfg: TrainConfig, learn: LearnConfig, out: str | Path) -> dict:
    """Meta-train on ``train_cfg``'s model/task/peft, write the FineTuner to ``out``."""
    from zoft.learned import FineTunerConfig

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    cfg = TrainConfig(**{**train_cfg.to_dict(), "optimizer": "zo-sgd", "finetuner": None})
    s = Session.build(cfg, log=log)
    examples = s.splits.train
    size = cfg.batch_size
    batches = [s.batch(examples[i: i + size]) for i in range(0, len(examples) - size + 1, size)]
    if not batches:
        raise ValueError(f"{len(examples)} training examples: fewer than one batch of {size}")
    reset_every = learn.reset_every or learn.epochs_per_reset * len(batches)
    eps = learn.eps if learn.eps is not None else cfg.default_eps()
    start, every = time.perf_counter(), max(1, learn.steps // 20)

    def progress(t: int, meta_loss: float, base_loss: float, scales: list[float]) -> None:
        if t % every == 0 or t == learn.steps - 1:
            log(f"meta-step {t + 1}/{learn.steps}: meta-loss {meta_loss:.4f}  loss {base_loss:.4f}  "
                f"scales {min(scales):.3g}..{max(scales):.3g}  ({time.perf_counter() - start:.0f} s)")

    finetuner = learn_finetuner(
        s.model, batches, s.objective.loss, base_model=cfg.model, out=out, steps=learn.steps,
        lr=learn.lr, eps=eps, meta_lr=learn.meta_lr, reset_every=reset_every, seed=cfg.seed,
        group_by=learn.group_by, config=FineTunerConfig(hidden=learn.hidden, seed=cfg.seed), log=progress)
    history = finetuner.training_record["history"]["meta_loss"]
    k = max(1, len(history) // 10)
    summary = {"out": str(out), "model": cfg.model, "task": cfg.task, "peft": cfg.peft,
               "blocks": len(finetuner.layout), "steps": learn.steps, "reset_every": reset_every,
               "meta_loss_first": sum(history[:k]) / k, "meta_loss_last": sum(history[-k:]) / k,
               "wall_time_s": time.perf_counter() - start}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary
