"""Data-parallel cost: bytes exchanged per step and step time with 1 and N processes.

Each cell is a real ``zoft train`` run (torchrun for N > 1, gloo on CPU / nccl on GPU). The
bytes are the payload every rank hands to all-reduce, counted by zoft (``comm_bytes`` in
metrics.jsonl; DistributedDataParallel's gradient buckets through a counting comm hook). A ring
all-reduce puts about 2 (N - 1) / N times the payload on each rank's link. Step time is the
mean of the training wall time per step after the first step (model loading excluded).

    python bench/data_parallel.py                    # SmolLM2-135M full FT, 1 and 2 processes
    python bench/data_parallel.py --model tiny-llama --steps 3 --out /tmp/dp   # a quick check
Writes OUT/NAME.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def run_cell(optimizer: str, procs: int, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"{optimizer}-{procs}"
    train = ["--model", args.model, "--task", "sentiment-demo", "--peft", args.peft,
             "--optimizer", optimizer, "--lr", "1e-6", "--steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--max-length", "64", "--train-size", "64",
             "--dev-size", "4", "--test-size", "4", "--eval-every", "0",
             "--save-every", "100000", "--out", str(out)]
    if procs == 1:
        cmd = [sys.executable, "-m", "zoft", "train", *train]
        threads = str(args.threads)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(procs), "-m", "zoft", "train", *train]
        threads = str(max(1, args.threads // procs))  # the same cores, shared out
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{optimizer} x {procs}: zoft train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    step_time = (rows[-1]["wall_time_s"] - rows[0]["wall_time_s"]) / (len(rows) - 1)
    sent = rows[-1].get("comm_bytes", 0) / len(rows)
    summary = json.loads((out / "summary.json").read_text())
    return {"optimizer": optimizer, "processes": procs, "threads_per_process": int(threads),
            "bytes_per_step": sent, "step_time_s": round(step_time, 4),
            "trainable_params": summary["trainable_params"], "final_loss": rows[-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--peft", default="full")
    ap.add_argument("--optimizers", nargs="+", default=["zo-sgd", "zo-adam", "jaguar-sign", "fo-sgd", "fo-adam"])
    ap.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores in all")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--name", default="data_parallel")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for optimizer in args.optimizers:
            for procs in args.procs:
                row = run_cell(optimizer, procs, args, Path(work))
                rows.append(row)
                print(f"{optimizer:12s} {procs} proc  {row['bytes_per_step']:>14,.0f} B/step  "
                      f"step {row['step_time_s']:.3f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "peft": args.peft, "batch_size": args.batch_size, "steps": args.steps,
            "threads": args.threads, "machine": platform.platform(), "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "command": "python bench/data_parallel.py " + " ".join(sys.argv[1:])}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / f"{args.name}.png", meta)
    print(f"wrote {out / args.name}.{{json,csv,png}}")


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = [r for r in rows if r["processes"] > 1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if multi:
        axes[0].bar([r["optimizer"] for r in multi], [max(r["bytes_per_step"], 1) for r in multi])
        axes[0].set_yscale("log")
        axes[0].set_ylabel("bytes all-reduced per step, per rank")
        axes[0].set_title(f"{multi[0]['processes']} processes")
    names = sorted({r["optimizer"] for r in rows}, key=[r["optimizer"] for r in rows].index)
    procs = sorted({r["processes"] for r in rows})
    width = 0.8 / len(procs)
    for i, p in enumerate(procs):
        times = [next((r["step_time_s"] for r in rows if r["optimizer"] == n and r["processes"] == p), 0)
                 for n in names]
        axes[1].bar([x + i * width for x in range(len(names))], times, width, label=f"{p} process(es)")
    axes[1].set_xticks([x + width * (len(procs) - 1) / 2 for x in range(len(names))], names)
    axes[1].set_ylabel("seconds per step")
    axes[1].legend()
    fig.suptitle(f"{meta['model']} {meta['peft']}, batch {meta['batch_size']}, {meta['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
