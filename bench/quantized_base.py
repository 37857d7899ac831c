"""A quantized frozen base (``--quantize int8|int4``, zoft.quantize) against fp32 and bf16 bases.

Part 1, in one process, modes interleaved round by round (a slow spell of the machine hits
every mode), medians over rounds: for SmolLM2-135M with a PEFT scheme, the bytes of the frozen
linear layers and of all the model's tensors, the training objective's forward time
(Objective.loss under no_grad) on one batch of 16 SST-2 training examples, and that batch's
loss next to the fp32 base's:

  fp32   fp32 weights          bf16   bf16 weights (what --dtype auto runs for PEFT here)
  int8   bf16 weights, linear layers int8 (per-row scales; torch's fused weight-only kernel)
  int4   bf16 weights, linear layers int4 (per-32 scales; de-quantized one layer at a time); for
         a model loaded from a Q4_1 GGUF file (the bundled SmolLM2) the file's own blocks
  int4-requant  the same layers quantized from the bf16 weights instead (symmetric per-32 scales:
         what int4 was before it kept a GGUF file's blocks; part 1 only)

Part 2 (--train-steps N, 0 skips it): a short SST-2 run per mode through ``zoft train``
(ZO-SGD, the prefix pilot's best lr 3e-2, constant, dev 200 every N/4 steps, 1000 training
examples), each in its own process, one after the other: dev accuracy and loss against
steps, s/step, the process's peak RSS (a lifetime peak, so it includes loading the model,
which reads the fp32 cache before any quantization).

    ZOFT_DATA_DIR=../shared/datasets python bench/quantized_base.py --out docs/results/quantized_base
Writes OUT/quantized_base.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from zoft.quantize import frozen_linears, quantize_frozen, quantized_bytes
from zoft.train.config import TrainConfig
from zoft.train.session import Session

MODES = {"fp32": ("fp32", None), "bf16": ("bf16", None), "int8": ("bf16", "int8"), "int4": ("bf16", "int4"),
         "int4-requant": ("bf16", "int4-requant")}
TRAINABLE_MODES = ["fp32", "bf16", "int8", "int4"]  # through zoft train --quantize


def session(args, mode: str) -> Session:
    dtype, quantize = MODES[mode]
    requant = quantize == "int4-requant"
    cfg = TrainConfig(model=args.model, task="sst2", data_dir=args.data_dir, peft=args.peft, dtype=dtype,
                      quantize=None if requant else quantize, train_size=64, dev_size=1, test_size=1, max_length=128,
                      batch_size=16)
    s = Session.build(cfg, log=lambda m: None, train=False)
    if requant:
        quantize_frozen(s.model, "int4")  # from the weights, not the file's blocks
    return s


def frozen_linear_bytes(model: nn.Module) -> int:
    """Bytes of the layers --quantize would replace (weights and biases)."""
    return sum(t.numel() * t.element_size() for _, m in frozen_linears(model) for t in (m.weight, m.bias)
               if t is not None)


def tensor_bytes(model: nn.Module) -> int:
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


def forward_part(args) -> list[dict]:
    sessions = {mode: session(args, mode) for mode in MODES}
    batches = {mode: s.batch(s.splits.train[:16]) for mode, s in sessions.items()}
    times = {mode: [] for mode in MODES}
    losses = {}
    with torch.no_grad():
        for mode, s in sessions.items():
            losses[mode] = float(s.objective.loss(batches[mode]))  # also the warm-up
        for r in range(args.rounds):
            for mode, s in sessions.items():
                start = time.perf_counter()
                s.objective.loss(batches[mode])
                times[mode].append(time.perf_counter() - start)
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {t[-1]:.3f}s" for m, t in times.items()), flush=True)
    ref_time = statistics.median(times["bf16"])
    rows = []
    for mode, s in sessions.items():
        linear = quantized_bytes(s.model) if MODES[mode][1] else frozen_linear_bytes(s.model)
        med = statistics.median(times[mode])
        rows.append({"part": "forward", "mode": mode, "frozen_linear_mib": round(linear / 2**20, 1),
                     "model_tensor_mib": round(tensor_bytes(s.model) / 2**20, 1), "forward_median_s": round(med, 4),
                     "forward_vs_bf16": round(med / ref_time, 3), "batch_loss": round(losses[mode], 5),
                     "loss_minus_fp32": round(losses[mode] - losses["fp32"], 5)})
    return rows


def train_part(args) -> list[dict]:
    rows = []
    for mode in args.train_modes:
        dtype, quantize = MODES[mode]
        out = Path(args.runs) / mode
        cmd = [sys.executable, "-m", "zoft", "train", "--model", args.model, "--task", "sst2", "--peft", args.peft,
               "--optimizer", "zo-sgd", "--lr", str(args.lr), "--steps", str(args.train_steps), "--dtype", dtype,
               "--eval-every", str(max(1, args.train_steps // 4)), "--eval-zero-shot", "--train-size", "1000",
               "--dev-size", "200", "--test-size", "0", "--max-length", "128", "--out", str(out)]
        cmd += ["--quantize", quantize] if quantize else []
        cmd += ["--data-dir", args.data_dir] if args.data_dir else []
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, env=os.environ.copy())
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        dev = [(m["step"], m["dev_accuracy"], m["dev_loss"]) for m in metrics if "dev_accuracy" in m]
        steps = [m for m in metrics if "wall_time_s" in m]
        s_per_step = (steps[-1]["wall_time_s"] - steps[0]["wall_time_s"]) / max(1, len(steps) - 1)
        rows.append({"part": "train", "mode": mode, "dev_curve": dev, "dev_accuracy_first": dev[0][1],
                     "dev_accuracy_last": dev[-1][1], "dev_loss_first": round(dev[0][2], 4),
                     "dev_loss_last": round(dev[-1][2], 4), "s_per_step": round(s_per_step, 3),
                     "peak_rss_mib": round(steps[-1]["peak_memory_bytes"] / 2**20, 1)})
        print(f"  {mode}: dev {dev[0][1]} -> {dev[-1][1]}, loss {dev[0][2]:.4f} -> {dev[-1][2]:.4f}, "
              f"{s_per_step:.2f} s/step", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fwd = [r for r in rows if r["part"] == "forward"]
    trained = [r for r in rows if r["part"] == "train"]
    fig, axes = plt.subplots(1, 3 if trained else 2, figsize=(13 if trained else 9, 3.6))
    names = [r["mode"] for r in fwd]
    axes[0].bar(names, [r["frozen_linear_mib"] for r in fwd])
    axes[0].set_ylabel("frozen linear layers (MiB)")
    axes[1].bar(names, [r["forward_median_s"] for r in fwd])
    axes[1].set_ylabel("forward, 16 SST-2 examples (s)")
    if trained:
        for r in trained:
            axes[2].plot([s for s, _, _ in r["dev_curve"]], [a for _, a, _ in r["dev_curve"]], marker="o", label=r["mode"])
        axes[2].set_xlabel("ZO-SGD step")
        axes[2].set_ylabel("dev accuracy")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--peft", default="prefix")
    p.add_argument("--data-dir", default=None, help="default: $ZOFT_DATA_DIR")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--train-modes", nargs="+", default=TRAINABLE_MODES, choices=TRAINABLE_MODES)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--runs", default="runs/quantized_base", help="folder for the training runs")
    p.add_argument("--out", default="bench/results/quantized_base")
    args = p.parse_args()
    rows = forward_part(args)
    for r in rows:
        print(r, flush=True)
    if args.train_steps:
        rows += train_part(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(sys.argv), "model": args.model, "peft": args.peft, "threads": torch.get_num_threads(),
              "rows": rows}
    (out / "quantized_base.json").write_text(json.dumps(record, indent=2) + "\n")
    keys = sorted({k for r in rows for k in r if k != "dev_curve"})
    with open(out / "quantized_base.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "quantized_base.png")
    print(f"wrote {out}/quantized_base.{{json,csv,png}}")


if __name__ == "__main__":
    main()
