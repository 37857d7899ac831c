"""Two cells at once with one thread each against one cell with every thread (``zoft bench --jobs``).

On a small machine a ZO step of a small model is many small kernels, and torch's threads share
little of the work: two 1-thread processes side by side may train more steps per second in
total than one process using both cores. This measures it for one training configuration, in
one run, by alternating rounds (a slow spell of the machine hits both arms):

- ``alone``: one ``zoft train`` process with OMP_NUM_THREADS = cores;
- ``side by side``: ``--jobs`` processes at once, each with OMP_NUM_THREADS = cores // jobs.

Each process trains ``--steps`` steps (no dev or test evaluation) and reports its training wall
time (summary.json: model loading excluded). Throughput is steps per second: for one process
steps / wall, for the side-by-side arm the sum over its processes. Reported: each arm's median
s/step and total steps/s over rounds, and the ratio side-by-side / alone (> 1: --jobs pays).

    ZOFT_DATA_DIR=../shared/datasets python bench/parallel_cells.py --out docs/results/parallel_cells
Writes OUT/parallel_cells.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
from pathlib import Path

from train_process import launch_train

from zoft.bench.runner import thread_env


def arm(args, work: Path, name: str, processes: int, threads: int, round_: int) -> dict:
    runs = [work / f"{name}_r{round_}_p{i}" for i in range(processes)]
    work.mkdir(parents=True, exist_ok=True)
    procs = [launch_train(args, d, thread_env(threads), seed=i) for i, d in enumerate(runs)]
    for p, d in zip(procs, runs):
        if p.wait() != 0:
            raise RuntimeError(f"zoft train exited {p.returncode}: see {d.parent / (d.name + '.log')}")
    walls = [json.loads((d / "summary.json").read_text())["wall_time_s"] for d in runs]
    return {"arm": name, "round": round_, "processes": processes, "threads": threads,
            "s_per_step": statistics.mean(w / args.steps for w in walls),
            "steps_per_s": sum(args.steps / w for w in walls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default=os.environ.get("ZOFT_DATA_DIR"))
    ap.add_argument("--peft", default="prefix")
    ap.add_argument("--optimizer", default="zo-sgd")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.jobs < 2 or args.cores < args.jobs:
        raise SystemExit(f"--jobs must be >= 2 and <= --cores ({args.cores}); got {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    rows = []
    for r in range(args.rounds):
        for name, procs, threads in (("alone", 1, args.cores), ("side_by_side", args.jobs, args.cores // args.jobs)):
            rows.append(arm(args, work, name, procs, threads, r))
            print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    med = {name: {k: statistics.median(x[k] for x in rows if x["arm"] == name) for k in ("s_per_step", "steps_per_s")}
           for name in ("alone", "side_by_side")}
    result = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "rounds": rows, "median": med,
              "throughput_ratio": med["side_by_side"]["steps_per_s"] / med["alone"]["steps_per_s"]}
    (out / "parallel_cells.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / "parallel_cells.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels = [f"1 process x {args.cores} threads", f"{args.jobs} processes x {args.cores // args.jobs} thread(s)"]
    ax.bar(labels, [med["alone"]["steps_per_s"], med["side_by_side"]["steps_per_s"]], color=["#888", "#2a7"])
    ax.set_ylabel("training steps / s (all processes)")
    ax.set_title(f"{args.optimizer} {args.peft}, {args.model}: ratio {result['throughput_ratio']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "parallel_cells.png", dpi=120)
    print(f"alone {med['alone']['s_per_step']:.3f} s/step; side by side {med['side_by_side']['s_per_step']:.3f} s/step "
          f"per process; total throughput ratio {result['throughput_ratio']:.2f}; wrote {out}/parallel_cells.{{json,csv,png}}")


if __name__ == "__main__":
    main()
