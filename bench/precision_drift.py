"""Weight drift of ZO perturb/restore in bf16 and fp16, with and without fp32 master weights.

A ZO-SGD step at lr 0 should leave the weights where they were: it moves each trainable
tensor by +eps u, -2 eps u and +eps u. In low precision every move rounds, so the weights
random-walk. This runs zo-sgd at lr 0 (only the perturb/restore cycle acts) on a model in
bf16 and fp16, with and without zoft's fp32 masters (zoft.train.precision.MasterWeights),
and records after each checkpoint step:

  max_abs     largest |w_t - w_0| over all trainable entries
  rel_rms     ||w_t - w_0|| / ||w_0||
  changed     fraction of entries whose low-precision value differs from the start

    python bench/precision_drift.py                          # tiny-llama, full, 400 steps
    python bench/precision_drift.py --model smollm2-135m --peft prompt --steps 100
Writes OUT/precision_drift.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from zoft import make_optimizer
from zoft.models import load_model
from zoft.peft import apply_peft
from zoft.tasks import get_task, load_splits
from zoft.train.objective import Objective, collate
from zoft.train.precision import MasterWeights
from zoft.train.session import parameter_groups


def drift(model: torch.nn.Module, start: dict[str, torch.Tensor]) -> dict[str, float]:
    diff_sq = base_sq = changed = total = 0.0
    worst = 0.0
    for name, p in model.named_parameters():
        if name not in start:
            continue
        d = p.detach().float() - start[name].float()
        worst = max(worst, d.abs().max().item())
        diff_sq += d.pow(2).sum().item()
        base_sq += start[name].float().pow(2).sum().item()
        changed += (p.detach() != start[name]).sum().item()
        total += p.numel()
    return {"max_abs": worst, "rel_rms": (diff_sq / base_sq) ** 0.5, "changed": changed / total}


def run(model_name: str, peft: str, dtype: str, masters: bool, steps: int, eps: float,
        checkpoints: list[int], batch_size: int) -> list[dict]:
    model, tok = load_model(model_name, dtype=dtype, device="cpu")
    model = apply_peft(model, peft)
    model.eval()
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    groups = parameter_groups(model, 0.0)
    keep = MasterWeights(model) if masters else None
    if keep:
        groups = keep.swap_into(groups)
    opt = make_optimizer("zo-sgd", groups, lr=0.0, eps=eps, rng="torch")
    examples = load_splits("sentiment-demo", None, batch_size, 1, 1, 0).train
    batch = collate(tok, examples[:batch_size], 64)
    objective = Objective(model)
    rows = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        opt.step(lambda: objective.loss(batch))
        if step in checkpoints:
            if keep:
                keep.sync()
            rows.append({"model": model_name, "peft": peft, "dtype": dtype, "masters": masters,
                         "eps": eps, "step": step, **drift(model, start)})
            r = rows[-1]
            print(f"{dtype} masters={masters!s:5} step {step:4d}: max|dw| {r['max_abs']:.3g}  "
                  f"rel rms {r['rel_rms']:.3g}  changed {r['changed']:.1%}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dtype in sorted({r["dtype"] for r in rows}):
        for masters in (False, True):
            sel = [r for r in rows if r["dtype"] == dtype and r["masters"] == masters]
            ax.plot([r["step"] for r in sel], [max(r["rel_rms"], 1e-12) for r in sel], marker="o",
                    label=f"{dtype}, {'fp32 masters' if masters else 'in place'}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ZO-SGD steps at lr 0")
    ax.set_ylabel("||w_t - w_0|| / ||w_0||")
    ax.set_title("perturb/restore drift")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--peft", default="full")
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    checkpoints = sorted({s for s in (1, 3, 10, 30, 100, 300, 1000, 3000) if s <= args.steps} | {args.steps})
    rows = []
    for dtype in args.dtypes:
        for masters in (False, True):
            rows += run(args.model, args.peft, dtype, masters, args.steps, args.eps, checkpoints,
                        args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python bench/precision_drift.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()), "machine": platform.platform(), "torch": torch.__version__}
    (out / "precision_drift.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    with open(out / "precision_drift.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "precision_drift.png")
    print(f"wrote {out}/precision_drift.{{json,csv,png}}")


if __name__ == "__main__":
    main()
