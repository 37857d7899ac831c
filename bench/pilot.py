"""Pilot: which learning rates make a method move, before a grid spends its budget.

For one optimizer, PEFT scheme and task, this runs one short training run per lr over a wide
log range (default 1e-5 .. 1e-1, half a decade apart), each scoring dev before the first step
and every --eval-every steps, all from the same seed (the same examples and the same ZO
directions, so the lrs differ only in step size). Per lr it reports the dev loss and accuracy
curve, the drop of the dev loss from step 0 to its best and to its last evaluation, and
whether the run diverged: a failed run (non-finite loss), or a dev loss above its step-0
value by more than --diverge-at (default 0.05 nats) at any evaluation.

The reading: the lr whose dev loss falls the most by the end without diverging is where the
method moves fastest at this budget; the lrs whose drop is at least half of that best drop
are the range a grid should cover (printed as ``range``). A pilot whose best drop is within
the noise of the dev loss (--noise, default 0.01 nats: the step-to-step wobble of a 200-example
dev loss) says the budget is too short to rank anything: lengthen --steps before a grid.

Each lr is a zoft run directory under OUT (resumable: a finished lr is read back, an
unfinished one continues from its checkpoint).

    ZOFT_DATA_DIR=../shared/datasets python bench/pilot.py --task sst2 --peft lora --out runs/pilot_sst2_lora
    python bench/pilot.py --task sst2 --peft full --lrs 1e-7 1e-6 1e-5 1e-4 --out runs/pilot_sst2_full
Writes OUT/pilot.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from pathlib import Path

from zoft.train.config import TrainConfig
from zoft.train.loop import train
from zoft.train.run_files import finished_summary

DEFAULT_LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def run_lr(args, lr: float) -> Path:
    out = Path(args.out) / f"lr_{lr:g}"
    if finished_summary(out) is not None:
        return out
    cfg = TrainConfig(model=args.model, task=args.task, data_dir=args.data_dir, peft=args.peft,
                      optimizer=args.optimizer, lr=lr, steps=args.steps, lr_schedule="constant",
                      batch_size=args.batch_size, train_size=args.train_size, dev_size=args.dev_size,
                      test_size=0, eval_every=args.eval_every, eval_zero_shot=True, save_every=args.eval_every,
                      max_length=args.max_length, seed=args.seed, dtype=args.dtype, out=str(out),
                      **({"eps": args.eps} if args.eps is not None else {}))
    resume = (out / "config.json").exists()
    if resume:
        cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    train(cfg, resume=resume)
    return out


def read_lr(out: Path, lr: float, diverge_at: float) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    dev = [(r["step"], r["dev_loss"], next((v for k, v in r.items() if k.startswith("dev_") and k != "dev_loss"), None))
           for r in rows if "dev_loss" in r]
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    losses = [r["loss"] for r in rows if "loss" in r]
    start = dev[0][1] if dev else math.nan
    finite = summary.get("status") == "finished" and all(math.isfinite(x) for x in losses)
    best = min((d[1] for d in dev), default=math.nan)
    last = dev[-1][1] if dev else math.nan
    diverged = not finite or any(d[1] > start + diverge_at for d in dev[1:])
    return {"lr": lr, "steps": summary.get("steps"), "status": summary.get("status", "unfinished"),
            "dev_loss_start": start, "dev_loss_best": best, "dev_loss_last": last,
            "drop_best": start - best, "drop_last": start - last,
            "dev_metric_start": dev[0][2] if dev else None, "dev_metric_last": dev[-1][2] if dev else None,
            "dev_metric_best": max((d[2] for d in dev if d[2] is not None), default=None),
            "diverged": diverged, "curve": [{"step": s, "dev_loss": l, "dev_metric": m} for s, l, m in dev],
            "train_loss_first10": sum(losses[:10]) / max(1, len(losses[:10])),
            "train_loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
            "wall_time_s": summary.get("wall_time_s")}


def reading(rows: list[dict], noise: float) -> dict:
    ok = [r for r in rows if not r["diverged"] and math.isfinite(r["drop_last"])]
    if not ok:
        return {"best_lr": None, "range": [], "moved": False,
                "note": "every lr diverged or failed: lower the lrs"}
    best = max(ok, key=lambda r: r["drop_last"])
    moved = best["drop_last"] > noise
    in_range = sorted(r["lr"] for r in ok if r["drop_last"] >= 0.5 * best["drop_last"]) if moved else []
    note = ("moved" if moved else f"no lr lowered the dev loss by more than the noise ({noise}): "
            "the budget is too short to choose an lr; lengthen --steps")
    if moved and best["lr"] == max(r["lr"] for r in rows):
        note += "; the best lr is the largest tried: extend the range upwards"
    return {"best_lr": best["lr"], "best_drop": best["drop_last"], "range": in_range, "moved": moved, "note": note}


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        steps = [c["step"] for c in r["curve"]]
        axes[0].plot(steps, [c["dev_loss"] for c in r["curve"]], marker=".",
                     label=f"lr {r['lr']:g}" + (" (diverged)" if r["diverged"] else ""))
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("dev loss")
    axes[0].set_title(title)
    axes[0].legend(fontsize=7)
    lrs = [r["lr"] for r in rows]
    axes[1].plot(lrs, [r["drop_last"] for r in rows], marker="o", label="drop by the last eval")
    axes[1].plot(lrs, [r["drop_best"] for r in rows], marker="x", linestyle=":", label="drop to the best eval")
    for r in rows:
        if r["diverged"]:
            axes[1].axvline(r["lr"], color="red", alpha=0.2)
    axes[1].axhline(0, color="black", linewidth=0.8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("lr (red: diverged)")
    axes[1].set_ylabel("dev loss drop from step 0 (nats)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default=os.environ.get("ZOFT_DATA_DIR"))
    ap.add_argument("--peft", default="lora")
    ap.add_argument("--optimizer", default="zo-sgd")
    ap.add_argument("--lrs", nargs="+", type=float, default=DEFAULT_LRS)
    ap.add_argument("--eps", type=float, default=None, help="default: MeZO's per scheme")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-size", type=int, default=1000)
    ap.add_argument("--dev-size", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diverge-at", type=float, default=0.05)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if any(lr <= 0 for lr in args.lrs):
        raise SystemExit(f"pilot: every lr must be positive, got {args.lrs}")
    rows = []
    for lr in sorted(args.lrs):
        out = run_lr(args, lr)
        rows.append(read_lr(out, lr, args.diverge_at))
        r = rows[-1]
        print(f"lr {lr:g}: dev loss {r['dev_loss_start']:.4f} -> {r['dev_loss_last']:.4f} (best {r['dev_loss_best']:.4f}), "
              f"dev metric {r['dev_metric_start']} -> {r['dev_metric_last']}{'  DIVERGED' if r['diverged'] else ''}",
              flush=True)
    result = {"model": args.model, "task": args.task, "peft": args.peft, "optimizer": args.optimizer,
              "steps": args.steps, "batch_size": args.batch_size, "dev_size": args.dev_size, "seed": args.seed,
              "dtype": args.dtype, "eps": args.eps, "reading": reading(rows, args.noise), "lrs": rows}
    out = Path(args.out)
    (out / "pilot.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / "pilot.csv", "w", newline="") as f:
        fields = [k for k in rows[0] if k != "curve"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, f"{args.optimizer} {args.peft} on {args.task}, {args.steps} steps of {args.batch_size}",
         out / "pilot.png")
    print(json.dumps(result["reading"]))
    print(f"wrote {out}/pilot.{{json,csv,png}}")


if __name__ == "__main__":
    main()
