"""RESULTS section 7's accuracy table from a `zoft bench` folder, paired with zero-shot by seed.

For each (model, task, peft, optimizer) it takes the setting `zoft report` chooses on dev and
prints: the chosen options, dev accuracy, test accuracy (mean +- std over seeds and per seed),
test accuracy and dev loss minus the zero-shot cell of the same seed (a seed samples its own dev
and test examples), final training loss and peak memory. Markdown on stdout.

    python bench/accuracy_table.py docs/results/accuracy_lora
    python bench/accuracy_table.py docs/results/accuracy_full --cells copa   # one row per cell

--cells TASK prints every finished cell of that task instead: dev accuracy and loss, test
accuracy and loss (summary.json's test_metrics) and the training loss over the first and the
last WINDOW logged steps, and its maximum (metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from zoft.bench.grid import ZERO_SHOT
from zoft.bench.report import choose, chosen_values, load_rows, minus_zero_shot, seed_of


def _mean_std(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def table(out: Path) -> str:
    rows = load_rows(out)
    chosen = choose(rows)
    labels = chosen_values(rows, chosen)

    def paired(group: tuple, key: str) -> str:
        diff = minus_zero_shot(chosen, group, key)
        return f"{diff:+.3f}" if diff is not None else ""

    lines = ["| model / task / peft | optimizer | chosen on dev | dev acc. | test acc. | test acc. per seed | "
             "test - zero-shot (same seed) | dev loss | dev loss - zero-shot | final training loss | "
             "peak memory (GiB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = lambda g: (g[:3], g[3] != ZERO_SHOT, g[3].startswith("fo-"), g[3])
    for g in sorted(chosen, key=order):
        runs = sorted(chosen[g], key=seed_of)
        per_seed = " / ".join(f"{r['test_metric']:.3f}" for r in runs)
        memory = statistics.mean(r["peak_memory_bytes"] for r in runs) / 2**30
        lines.append(f"| {g[0]} / {g[1]} / {g[2]} | {g[3]} | {labels[g]} | "
                     f"{_mean_std([r['best_dev_metric'] for r in runs])} | {_mean_std([r['test_metric'] for r in runs])} | "
                     f"{per_seed} | {paired(g, 'test_metric')} | {_mean_std([r['dev_loss'] for r in runs])} | "
                     f"{paired(g, 'dev_loss')} | {_mean_std([r['final_loss'] for r in runs])} | {memory:.2f} |")
    return "\n".join(lines)


WINDOW = 10


def cells(out: Path, task: str) -> str:
    lines = [f"| cell | optimizer | lr | dev acc. | dev loss | test acc. | test loss | training loss, first {WINDOW} "
             f"steps | last {WINDOW} | max |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [r for r in load_rows(out) if r["task"] == task and r["status"] == "finished"]
    for r in sorted(rows, key=lambda r: (r["peft"], r["optimizer"] != ZERO_SHOT, r["optimizer"], seed_of(r), r.get("lr") or 0)):
        cell = out / "cells" / r["key"]
        test_loss = json.loads((cell / "summary.json").read_text()).get("test_metrics", {}).get("loss")
        train = [row["loss"] for row in map(json.loads, (cell / "metrics.jsonl").read_text().splitlines())
                 if "loss" in row]
        f = lambda v: "" if v is None else f"{v:.4g}"
        first, last = (statistics.mean(w) if w else None for w in (train[:WINDOW], train[-WINDOW:]))
        lines.append(f"| {r['key']} | {r['optimizer']} | {r.get('lr') or ''} | {f(r['best_dev_metric'])} | "
                     f"{f(r['dev_loss'])} | {f(r['test_metric'])} | {f(test_loss)} | {f(first)} | {f(last)} | "
                     f"{f(max(train) if train else None)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a folder written by zoft bench (cells/*)")
    parser.add_argument("--cells", metavar="TASK", help="one row per finished cell of TASK instead")
    args = parser.parse_args()
    print(cells(args.out, args.cells) if args.cells else table(args.out))


if __name__ == "__main__":
    main()
