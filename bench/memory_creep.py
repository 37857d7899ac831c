"""Why a long ZO run's peak memory creeps up: per-shape state of the CPU's bf16 kernels.

Over the converge_sst2 cells the peak resident set of a ZO prefix or LoRA cell rises from
~0.70 GiB at step 1 to ~1.2 GiB by step 3,000, with no optimizer state to speak of. This runs
the same training in arms that differ in one setting each, side by side (every arm at once,
one thread each, so a slow spell of the machine hits all of them), and records the peak
resident set after every step and the s/step:

- ``buckets``: zoft's default, each batch's rows run in length buckets (many distinct matmul
  shapes: rows x width changes from batch to batch);
- ``no_buckets``: ``--bucket-positions 0``, one batch padded to its longest row (16 x width);
- ``buckets_onednn_cache_0``: the default with ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``, so that
  oneDNN keeps no primitive (the kernels of one matmul shape) between calls.

The peak is a high-water mark: it also rises when a batch longer than any before arrives,
which every arm sees alike (the same seed, so the same batches).

    ZOFT_DATA_DIR=../shared/datasets python bench/memory_creep.py --out docs/results/memory_creep
Writes OUT/memory_creep.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

from train_process import launch_train

from zoft.bench.runner import thread_env

ARMS = {
    "buckets": ([], {}),
    "no_buckets": (["--bucket-positions", "0"], {}),
    "buckets_onednn_cache_0": ([], {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}),
}


def curve(run_dir: Path) -> list[tuple[int, int]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["peak_memory_bytes"]) for r in rows if r.get("peak_memory_bytes")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default=os.environ.get("ZOFT_DATA_DIR"))
    ap.add_argument("--peft", default="prefix")
    ap.add_argument("--optimizer", default="zo-sgd")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    procs = {name: launch_train(args, work / name, {**thread_env(1), **ARMS[name][1]}, seed=0,
                               extra=["--save-every", str(args.steps), *ARMS[name][0]])
             for name in args.arms}
    for name, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"zoft train ({name}) exited {p.returncode}: see {work / (name + '.log')}")
    arms = {}
    for name in args.arms:
        points = curve(work / name)
        wall = json.loads((work / name / "summary.json").read_text())["wall_time_s"]
        arms[name] = {"peak_gib_by_step": [[s, round(b / 2**30, 4)] for s, b in points],
                      "peak_gib_step_1": round(points[0][1] / 2**30, 4),
                      "peak_gib_last": round(points[-1][1] / 2**30, 4), "s_per_step": round(wall / args.steps, 4)}
    shutil.rmtree(work, ignore_errors=True)
    base = arms.get("buckets")
    if base:
        for a in arms.values():
            a["s_per_step_vs_buckets"] = round(a["s_per_step"] / base["s_per_step"], 3)
    result = {"config": {k: v for k, v in vars(args).items() if k != "out"},
              "note": "every arm ran at once, one thread each: s/step are comparable with each other only",
              "arms": arms}
    (out / "memory_creep.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / "memory_creep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "step", "peak_gib"])
        for name, a in arms.items():
            w.writerows([name, s, g] for s, g in a["peak_gib_by_step"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, a in arms.items():
        steps, gib = zip(*a["peak_gib_by_step"])
        ax.plot(steps, gib, label=f"{name} ({a['s_per_step']:.2f} s/step)")
    ax.set_xlabel("step")
    ax.set_ylabel("peak resident set (GiB)")
    ax.set_title(f"{args.optimizer} {args.peft}, {args.model}, {args.task}: peak memory over a run", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "memory_creep.png", dpi=120)
    for name, a in arms.items():
        print(f"{name}: peak {a['peak_gib_step_1']:.3f} GiB at step 1, {a['peak_gib_last']:.3f} at step {args.steps}; "
              f"{a['s_per_step']:.3f} s/step")
    print(f"wrote {out}/memory_creep.{{json,csv,png}}")


if __name__ == "__main__":
    main()
