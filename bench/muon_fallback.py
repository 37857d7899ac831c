"""Why ZO-Muon drifts on full fine-tuning: the step of its non-matrix tensors.

ZO-Muon moves every 2-D tensor by lr * NewtonSchulz(M), a step whose size the orthogonalisation
fixes; the other tensors (the norm gains of SmolLM2, 35,136 entries) take the plain heavy-ball
step lr * M of their dense ZO estimate, M <- 0.9 M + g. With one lr for both, a Muon-sized lr
(the accuracy grid's 1e-4) is 10-100x what ZO-SGD uses on full fine-tuning, and the heavy ball
multiplies it by up to 10.

This script runs that non-matrix rule alone: every tensor is perturbed (so the estimate is the
one ZO-Muon sees), the matrices are frozen (their param group has lr 0), and the 1-D tensors
take zo-sgd-mmt's heavy-ball step, the transform ZO-Muon applies to them, at each lr of
``--lrs`` (``fallback_lr`` of zo-muon). Training batches, seed and eps are those of the
accuracy grid's full fine-tuning cells (bench/specs/accuracy_full.yaml). No Newton-Schulz runs,
so a step costs two forward passes. It prints the training loss per step and writes
muon_fallback.{json,csv,png}.

    ZOFT_DATA_DIR=../shared/datasets python bench/muon_fallback.py            # SmolLM2-135M, SST-2
    python bench/muon_fallback.py --model tiny-llama --task sentiment-demo --steps 3 --out /tmp/res
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path

import torch

from zoft.optim import make_optimizer
from zoft.optim.transforms import orthogonalised
from zoft.train.config import TrainConfig
from zoft.train.data import micro_batch
from zoft.train.loop import take_step
from zoft.train.session import Session


def losses(args: argparse.Namespace, fallback_lr: float) -> tuple[list[float], int]:
    """Training loss per step, and the number of entries in the non-matrix tensors."""
    cfg = TrainConfig(model=args.model, task=args.task, peft="full", dtype="fp32", optimizer="zo-sgd-mmt", lr=fallback_lr,
                      batch_size=8, train_size=1000, dev_size=100, test_size=300, max_length=128, seed=0)
    s = Session.build(cfg)
    params = [p for p in s.model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if orthogonalised(p)], "lr": 0.0},
              {"params": [p for p in params if not orthogonalised(p)]}]
    s.optimizer = make_optimizer("zo-sgd-mmt", groups, **{**cfg.optimizer_hparams(), "momentum": 0.9})
    out = []
    for step in range(args.steps):
        batch = s.batch(micro_batch(s.splits.train, step, cfg.batch_size, cfg.seed))
        out.append(take_step(s, [batch]))
        print(f"fallback_lr {fallback_lr:g} step {step + 1}: loss {out[-1]:.3f}", flush=True)
    return out, sum(p.numel() for p in groups[1]["params"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="sst2")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-6])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs, entries = {}, 0
    for lr in args.lrs:
        runs[lr], entries = losses(args, lr)
    print(f"non-matrix tensors: {entries} entries")
    result = {"model": args.model, "task": args.task, "steps": args.steps, "momentum": 0.9,
              "non_matrix_entries": entries,
              "losses": {f"{lr:g}": v for lr, v in runs.items()},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}}
    (args.out / "muon_fallback.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(args.out / "muon_fallback.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *(f"loss_fallback_lr_{lr:g}" for lr in runs)])
        w.writerows([k + 1, *(f"{v[k]:.4f}" for v in runs.values())] for k in range(args.steps))
    for lr, v in runs.items():
        print(f"fallback_lr {lr:g}: loss first 5 steps {sum(v[:5]) / len(v[:5]):.3f}, "
              f"last 5 steps {sum(v[-5:]) / len(v[-5:]):.3f}, max {max(v):.3f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for lr, v in runs.items():
        ax.plot(range(1, len(v) + 1), v, label=f"1-D tensors at lr {lr:g} (momentum 0.9)")
    ax.set(xlabel="step", ylabel="training loss (batch of 8)", yscale="log",
           title=f"{args.model} / {args.task}: ZO-Muon's non-matrix step alone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "muon_fallback.png", dpi=120)
    print(f"wrote {args.out}/muon_fallback.json, .csv, .png")


if __name__ == "__main__":
    main()
