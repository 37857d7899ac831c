"""RESULTS section 7's accuracy table from a `zoft bench` folder, paired with zero-shot by seed.

For each (model, task, peft, optimizer) it takes the setting `zoft report` chooses on dev and
prints: the chosen options, dev accuracy, test accuracy (mean +- std over seeds and per seed),
test accuracy and dev loss minus the zero-shot cell of the same seed (a seed samples its own dev
and test examples), final training loss and peak memory. Markdown on stdout.

    python bench/accuracy_table.py docs/results/accuracy_lora
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a folder written by zoft bench (cells/*)")
    print(table(parser.parse_args().out))


if __name__ == "__main__":
    main()
