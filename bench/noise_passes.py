"""Issue 7's remaining idea, measured: fuse a ZO-SGD step's restore+update pass with the next
step's perturbation.

A central two-point ZO-SGD step with seed replay makes three passes over the parameters, each
generating the step's noise z: +eps z, -2 eps z, then +(eps - lr g) z. Fusing the last one with the
next step's +eps z' makes two passes per step (three noise generations still). This script
measures, side by side in one run:

  step      zoft's real zo-sgd full fine-tuning step on SmolLM2-135M (bench/step_overhead.py's
            workload and `measure`), Gaussian and Rademacher noise, native counter kernel
  passes    one pass over as many float32 entries as that model trains, with the same threads,
            through a C micro-benchmark compiled on top of zoft's kernel source
            (bench/noise_passes.c): a plain add (the memory floor), one noise (zoft's kernel),
            two noises fused in one pass, and a Gaussian with cheaper arithmetic

and projects the fused step: in-step ratio - (2 single passes - 1 fused pass) / forward time.
The fused step itself is not implemented in zoft (it leaves the parameters perturbed between
steps); this is the measurement that decides whether it would be worth it.

    python bench/noise_passes.py                   # writes bench/results/noise_passes.{json,csv,png}
    python bench/noise_passes.py --no-step         # the passes only (no model)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VARIANTS = ("add", "rademacher", "rademacher_fused", "gaussian", "gaussian_fused", "gaussian_short")
SMOLLM2_FULL = 134_515_008  # parameters trained by full fine-tuning of SmolLM2-135M (used with --no-step)


def build(workdir: Path) -> Path:
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("noise_passes: no C compiler ($CC, cc, gcc)")
    kernel = resources.files("zoft.perturb").joinpath("counter_kernel.c").read_text()
    source = workdir / "noise_passes.c"
    source.write_text(kernel + "\n" + (HERE / "noise_passes.c").read_text())
    exe = workdir / "noise_passes"
    cmd = [compiler, "-O3", "-march=native", "-fno-math-errno", "-fopenmp", str(source), "-o", str(exe), "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"noise_passes: {' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return exe


def passes(entries: int, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "false"}
        out = subprocess.run([str(exe), str(entries), str(repeats)], capture_output=True, text=True, env=env,
                             check=True).stdout
    rows = {}
    for line in out.splitlines():
        name, median, low, high = line.split()
        rows[name] = {"median_s": float(median), "min_s": float(low), "max_s": float(high)}
    missing = set(VARIANTS) - set(rows)
    if missing:
        sys.exit(f"noise_passes: the micro-benchmark printed no figure for {sorted(missing)}")
    return rows


def steps(args) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from step_overhead import measure  # the same workload and timing as section 5's table

    from zoft.train.config import TrainConfig

    rows = []
    for perturbation in ("gaussian", "rademacher"):
        cfg = TrainConfig(model=args.model, task="sentiment-demo", peft="full", dtype="fp32", optimizer="zo-sgd", lr=1e-7,
                          rng="counter", perturbation=perturbation, batch_size=32, max_length=32,
                          train_size=32, dev_size=0, test_size=0)
        row = {**measure(cfg, args.step_repeats), "perturbation": perturbation}
        print(f"zo-sgd full {perturbation:10s} forward {row['forward_s']:.3f} s  step {row['step_s']:.3f} s  "
              f"in step {row['ratio_in_step']:.2f} ({row['ratio_in_step_min']:.2f}-{row['ratio_in_step_max']:.2f})",
              flush=True)
        rows.append(row)
    return rows


def plot(timings: dict, entries: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    values = [timings[v]["median_s"] for v in VARIANTS]
    ax.bar(range(len(VARIANTS)), values, color=["grey", "C0", "C0", "C1", "C1", "C2"])
    ax.set_xticks(range(len(VARIANTS)))
    ax.set_xticklabels(VARIANTS, rotation=25, ha="right")
    ax.set_ylabel(f"seconds per pass over {entries / 1e6:.1f}M entries")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--no-step", action="store_true", help="skip the model: time the passes only")
    ap.add_argument("--step-repeats", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=9, help="repeats of each pass (median reported)")
    ap.add_argument("--entries", type=int, default=None,
                    help="entries per pass (default: the parameters the model trains, or 134.5M with --no-step)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--name", default="noise_passes")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    step_rows = [] if args.no_step else steps(args)
    entries = args.entries or (step_rows[0]["trainable_params"] if step_rows else SMOLLM2_FULL)
    timings = passes(entries, args.threads, args.repeats)
    for name in VARIANTS:
        t = timings[name]
        print(f"pass {name:17s} {t['median_s']:.4f} s ({t['min_s']:.4f}-{t['max_s']:.4f})  "
              f"{t['median_s'] / entries * 1e9 * args.threads:.2f} ns per entry per thread", flush=True)
    for row in step_rows:
        kind = row["perturbation"]
        saved = 2 * timings[kind]["median_s"] - timings[f"{kind}_fused"]["median_s"]
        row["fused_saves_s"] = round(saved, 4)
        row["fused_projected_in_step"] = round(row["ratio_in_step"] - saved / row["forward_s"], 3)
        print(f"zo-sgd full {kind:10s} in step {row['ratio_in_step']:.2f} -> fused (projected) "
              f"{row['fused_projected_in_step']:.2f}: saves {saved:.4f} s per step", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "threads": args.threads}
    report = {"machine": machine, "args": vars(args), "entries": entries, "passes": timings, "steps": step_rows}
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["what", "name", "seconds", "min_s", "max_s", "ratio_in_step", "fused_projected_in_step"])
        for name in VARIANTS:
            t = timings[name]
            writer.writerow(["pass", name, t["median_s"], t["min_s"], t["max_s"], "", ""])
        for row in step_rows:
            writer.writerow(["zo-sgd full step", row["perturbation"], row["step_s"], "", "", row["ratio_in_step"],
                             row["fused_projected_in_step"]])
    plot(timings, entries, out / f"{args.name}.png")
    print(f"wrote {out / args.name}.json, .csv, .png")


if __name__ == "__main__":
    main()
