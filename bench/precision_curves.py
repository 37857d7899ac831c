"""Training-loss curves of one grid in two precisions, read against their seed-to-seed spread.

Reads a `zoft bench` output folder whose cells vary ``dtype`` and ``seed`` (e.g.
bench/specs/precision_sst2.yaml) and, per window of --window steps, the training loss averaged
over the window for every cell; then per window:

  mean_<dtype>      the mean over seeds
  spread_<dtype>    the standard deviation over seeds (the seed-to-seed spread)
  paired_diff       the mean over seeds of (loss_b - loss_a) with the same seed (a = the first
                    dtype, b = the second), and its standard deviation over seeds

The curves agree within their spread when |mean paired_diff| is below the seed spread of
either precision at every window. Also the test accuracy per cell.

    python bench/precision_curves.py runs/precision_sst2 --out bench/results
Writes OUT/NAME.{json,csv,png} (default precision_curves).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path


def cells(folder: Path) -> list[dict]:
    out = []
    for cell in sorted((folder / "cells").iterdir()):
        meta = json.loads((cell / "cell.json").read_text())
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines() if line]
        summary = json.loads((cell / "summary.json").read_text()) if (cell / "summary.json").exists() else {}
        config = meta.get("config", meta)
        out.append({"dtype": config["dtype"], "seed": config["seed"], "summary": summary,
                    "losses": [r["loss"] for r in rows if "loss" in r]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--window", type=int, default=25)
    ap.add_argument("--name", default="precision_curves")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    runs = cells(Path(args.folder))
    dtypes = sorted({r["dtype"] for r in runs}, key=lambda d: (d != "fp32", d))
    if len(dtypes) != 2:
        raise SystemExit(f"precision_curves: expected cells in two dtypes, found {dtypes}")
    a, b = dtypes
    seeds = sorted({r["seed"] for r in runs if r["dtype"] == a} & {r["seed"] for r in runs if r["dtype"] == b})
    if len(seeds) < 2:
        raise SystemExit(f"precision_curves: need >= 2 seeds run in both dtypes, found {seeds}")
    by = {(r["dtype"], r["seed"]): r for r in runs}
    steps = min(len(by[(d, s)]["losses"]) for d in dtypes for s in seeds)
    windows = []
    for start in range(0, steps - args.window + 1, args.window):
        w = {d: {s: statistics.fmean(by[(d, s)]["losses"][start: start + args.window]) for s in seeds} for d in dtypes}
        diffs = [w[b][s] - w[a][s] for s in seeds]
        row = {"steps": f"{start + 1}-{start + args.window}"}
        for d in dtypes:
            row[f"mean_{d}"] = round(statistics.fmean(w[d].values()), 4)
            row[f"spread_{d}"] = round(statistics.stdev(w[d].values()), 4)
        row["paired_diff"] = round(statistics.fmean(diffs), 4)
        row["paired_diff_sd"] = round(statistics.stdev(diffs), 4)
        row["within_spread"] = abs(row["paired_diff"]) <= min(row[f"spread_{a}"], row[f"spread_{b}"])
        windows.append(row)
    tests = [{"dtype": d, "seed": s, "test_metric": by[(d, s)]["summary"].get("test_metric"),
              "wall_time_s": by[(d, s)]["summary"].get("wall_time_s"), "steps": len(by[(d, s)]["losses"])}
             for d in dtypes for s in seeds]
    result = {"folder": args.folder, "dtypes": dtypes, "seeds": seeds, "window": args.window, "windows": windows,
              "all_within_spread": all(r["within_spread"] for r in windows), "cells": tests}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(windows[0]))
        writer.writeheader()
        writer.writerows(windows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = {a: "tab:blue", b: "tab:orange"}
    for d in dtypes:
        for s in seeds:
            losses = by[(d, s)]["losses"][:steps]
            smooth = [statistics.fmean(losses[max(0, i - args.window + 1): i + 1]) for i in range(len(losses))]
            ax.plot(range(1, len(smooth) + 1), smooth, color=colours[d], alpha=0.8,
                    linestyle=["-", "--", ":", "-."][seeds.index(s) % 4], label=f"{d} seed {s}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (running mean of {args.window} steps)")
    ax.set_title("ZO-SGD, LoRA, SST-2: fp32 against bf16 compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{args.name}.png", dpi=120)
    plt.close(fig)
    for r in windows:
        print(json.dumps(r))
    for t in tests:
        print(json.dumps(t))
    print(f"all windows within the seed spread: {result['all_within_spread']}")
    print(f"wrote {out / args.name}.{{json,csv,png}}")


if __name__ == "__main__":
    main()
