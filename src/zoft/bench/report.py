"""results.csv, tables.md and plots from a grid's cell folders (``zoft report DIR``).

Hyperparameters are chosen on dev and reported on test, as MeZO does: for each (model, task,
peft, optimizer), the setting with the best mean dev metric over seeds is kept and its test
metric is reported as mean +- std over seeds.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

SUMMARY_FIELDS = ["status", "steps", "forward_passes", "wall_time_s", "peak_memory_bytes",
                  "trainable_params", "best_dev_metric", "test_metric", "metric_name"]
GROUP = ("model", "task", "peft", "optimizer")
METHOD_KEYS = ("estimator", "perturbation", "q")  # varied, these name a method, not a hyperparameter


def load_records(out: Path) -> list[dict[str, Any]]:
    records = []
    for cell_json in sorted((out / "cells").glob("*/cell.json")):
        cell = json.loads(cell_json.read_text())
        summary_path = cell_json.parent / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"status": "not run"}
        records.append({"key": cell_json.parent.name, **cell, "summary": summary})
    return records


def _row(rec: dict) -> dict[str, Any]:
    cfg = rec["config"]
    varied = rec["varied"]
    method = ", ".join(f"{k}={varied[k]}" for k in METHOD_KEYS if k in varied)
    label = varied.get("optimizer", cfg["optimizer"]) + (f" ({method})" if method else "")
    row = {"key": rec["key"], **{k: cfg[k] for k in GROUP}, "optimizer": label}
    row.update({k: v for k, v in rec["varied"].items() if k not in row})
    row.update({k: rec["summary"].get(k) for k in SUMMARY_FIELDS})
    row["config"] = json.dumps(cfg, sort_keys=True)
    return row


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "config")) + ["config"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {std:.3f} (n={len(values)})"


def choose(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Per GROUP: the seeds of the hyperparameter setting with the best mean dev metric."""
    settings: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] != "finished":
            continue
        setting = json.dumps({k: v for k, v in json.loads(r["config"]).items() if k != "seed"}, sort_keys=True)
        settings[tuple(r[k] for k in GROUP)][setting].append(r)

    def score(runs: list[dict]) -> float:
        devs = [r["best_dev_metric"] for r in runs if r["best_dev_metric"] is not None]
        return statistics.mean(devs) if devs else float("-inf")

    return {g: max(by_setting.values(), key=score) for g, by_setting in settings.items()}


def tables(rows: list[dict]) -> str:
    chosen = choose(rows)
    columns = sorted({(g[0], g[1], g[2]) for g in chosen})
    optimizers = sorted({g[3] for g in chosen}, key=lambda o: (o != "zero-shot", o.startswith("fo-"), o))
    head = "| optimizer | " + " | ".join(f"{m} / {t} / {p}" for m, t, p in columns) + " |"
    lines = ["## Test metric (hyperparameters chosen on dev; mean +- std over seeds)", "", head,
             "|---|" + "---|" * len(columns)]
    for opt in optimizers:
        cells = [_mean_std([r["test_metric"] for r in chosen.get((*c, opt), []) if r["test_metric"] is not None])
                 for c in columns]
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    lines += ["", "## Peak memory in GiB (chosen setting, mean over seeds)", "",
              "| optimizer | " + " | ".join(f"{m} / {t} / {p}" for m, t, p in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for opt in optimizers:
        cells = []
        for c in columns:
            runs = [r for r in chosen.get((*c, opt), []) if r["peak_memory_bytes"] is not None]
            cells.append(f"{statistics.mean(r['peak_memory_bytes'] for r in runs) / 2**30:.2f}" if runs else "")
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost per run (chosen setting, mean over seeds)", "",
              "| model / task / peft | optimizer | peak memory (GiB) | s / step | forward passes / step | trainable |",
              "|---|---|---|---|---|---|"]
    for g, runs in sorted(chosen.items()):
        if not all(r["steps"] for r in runs):  # zero-shot: nothing trained
            continue
        mem = statistics.mean(r["peak_memory_bytes"] for r in runs) / 2**30
        sps = statistics.mean(r["wall_time_s"] / r["steps"] for r in runs)
        fps = statistics.mean(r["forward_passes"] / r["steps"] for r in runs)
        lines.append(f"| {g[0]} / {g[1]} / {g[2]} | {g[3]} | {mem:.3f} | {sps:.3f} | {fps:.2f} | "
                     f"{runs[0]['trainable_params']} |")
    return "\n".join(lines) + "\n"


def build_report(out: Path) -> list[dict]:
    """Write results.csv, tables.md and the plots for the grid in ``out``; returns the rows."""
    rows = [_row(r) for r in load_records(out)]
    if not rows:
        raise FileNotFoundError(f"{out} holds no benchmark cells (no cells/*/cell.json)")
    write_csv(rows, out / "results.csv")
    (out / "tables.md").write_text(tables(rows))
    from zoft.bench.plots import plot_all

    plot_all(out, choose(rows))
    return rows
