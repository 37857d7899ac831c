"""First real numbers: SmolLM2-135M-Instruct on SST-2 (MeZO sizes 1000 / 500 / 1000).

Runs, each in its own process (clean peak-memory figures), with the real `zoft` CLI:
  zero-shot     zoft eval --model smollm2-135m --task sst2
  zo-sgd LoRA   zoft train ... --optimizer zo-sgd --peft lora --lr 1e-4 --eps 1e-2
  fo-adam LoRA  zoft train ... --optimizer fo-adam --peft lora --lr 1e-4
at the same number of steps and batch size, dev evaluated every --eval-every steps (test is
scored with the best dev weights, as MeZO does). Writes DIR/sst2_smollm2.json and .md.

    ZOFT_DATA_DIR=../shared/datasets python bench/sst2_smollm2.py --steps 500 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

SIZES = ["--train-size", "1000", "--dev-size", "500", "--test-size", "1000"]
RUNS = {
    "zo-sgd": ["--optimizer", "zo-sgd", "--lr", "1e-4", "--eps", "1e-2"],
    "fo-adam": ["--optimizer", "fo-adam", "--lr", "1e-4"],
}


def zoft(*args: str) -> None:
    print("$ zoft", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "zoft", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--runs-dir", default="runs/sst2_smollm2")
    args = ap.parse_args()
    runs = Path(args.runs_dir)
    rows = []
    zero_shot = runs / "zero-shot.json"
    if not zero_shot.exists():
        runs.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([sys.executable, "-m", "zoft", "eval", "--model", "smollm2-135m", "--task", "sst2",
                              *SIZES], check=True, capture_output=True, text=True).stdout
        zero_shot.write_text(out)
    z = json.loads(zero_shot.read_text())
    rows.append(dict(method="zero-shot", steps=0, test_accuracy=z["metrics"]["accuracy"], test_examples=z["examples"]))
    for name, flags in RUNS.items():
        run_dir = runs / f"{name}-lora"
        common = ["--model", "smollm2-135m", "--task", "sst2", "--peft", "lora", *SIZES, "--steps", str(args.steps),
                  "--batch-size", str(args.batch_size), "--eval-every", str(args.eval_every), "--out", str(run_dir)]
        if not (run_dir / "summary.json").exists():
            if (run_dir / "checkpoint.json").exists():
                zoft("train", "--resume", str(run_dir))
            else:
                zoft("train", *common, *flags)
        s = json.loads((run_dir / "summary.json").read_text())
        rows.append(dict(method=f"{name} LoRA", steps=s["steps"], test_accuracy=s["test_metric"],
                         best_dev_accuracy=s["best_dev_metric"], forward_passes=s["forward_passes"],
                         wall_time_s=s["wall_time_s"], s_per_step=round(s["wall_time_s"] / s["steps"], 3),
                         peak_memory_gib=round(s["peak_memory_bytes"] / 2**30, 3),
                         trainable_params=s["trainable_params"]))
    write(Path(args.out), rows, args)


def write(out: Path, rows: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    machine = dict(platform=platform.platform(), torch=torch.__version__, cpus=torch.get_num_threads())
    (out / "sst2_smollm2.json").write_text(json.dumps(dict(rows=rows, machine=machine, args=vars(args)), indent=2))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines += ["| " + " | ".join(cell(r[k]) if k in r else "" for k in keys) + " |" for r in rows]
    (out / "sst2_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
