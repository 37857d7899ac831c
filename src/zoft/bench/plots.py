"""Plots of a grid (matplotlib, Agg): loss vs step, dev metric vs forward passes and vs wall time, memory."""

from __future__ import annotations

from pathlib import Path

from zoft.bench import store


def _metrics(out: Path, key: str) -> list[dict]:
    return store.jsonl(out, key)


SMOOTH = 0.1  # running-mean window of the loss curves, as a fraction of the run's steps


def _smooth(values: list[float]) -> list[float]:
    """Trailing running mean over max(1, SMOOTH * len) points: mini-batch losses are noisy."""
    w = max(1, int(SMOOTH * len(values)))
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    return [(sums[i + 1] - sums[max(0, i + 1 - w)]) / (i + 1 - max(0, i + 1 - w)) for i in range(len(values))]


def _panels(plt, groups):
    panels = sorted({g[:3] for g in groups})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    return fig, dict(zip(panels, axes[0]))


LINESTYLES = ("-", "--", ":", "-.")


def _styles(labels) -> dict[str, dict]:
    """One colour and line style per label, the same in every panel; past matplotlib's 10
    colours the line style changes, so no two labels of a grid draw alike."""
    return {label: {"color": f"C{i % 10}", "linestyle": LINESTYLES[i // 10 % len(LINESTYLES)]}
            for i, label in enumerate(sorted(set(labels)))}


def plot_all(out: Path, chosen: dict[tuple, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not chosen:
        return
    fig, axes = _panels(plt, chosen)
    fig2, axes2 = _panels(plt, chosen)
    fig3, axes3 = _panels(plt, chosen)
    style = _styles(g[3] for g in chosen)
    for group, runs in sorted(chosen.items()):
        train = [[r for r in _metrics(out, run["key"]) if "loss" in r] for run in runs]
        n = min(len(t) for t in train)
        if n:
            mean = _smooth([sum(t[i]["loss"] for t in train) / len(train) for i in range(n)])
            axes[group[:3]].plot([train[0][i]["step"] for i in range(n)], mean, label=group[3], **style[group[3]])
        rows = _metrics(out, runs[0]["key"])
        dev = [r for r in rows if any(k.startswith("dev_") for k in r)]
        fwd = {r["step"]: r["forward_passes"] for r in rows if "forward_passes" in r}
        if dev:
            metric = next(k for k in dev[0] if k.startswith("dev_"))
            axes2[group[:3]].plot([fwd.get(r["step"], 0) for r in dev], [r[metric] for r in dev], marker="o",
                                  label=group[3], **style[group[3]])
            wall = {r["step"]: r["wall_time_s"] for r in rows if "wall_time_s" in r}
            axes3[group[:3]].plot([wall.get(r["step"], 0.0) for r in dev], [r[metric] for r in dev], marker="o",
                                  label=group[3], **style[group[3]])
    for ax_map, ylabel, f, name in [(axes, f"training loss (mean over seeds,\nrunning mean over {SMOOTH:.0%} of the steps)", fig, "loss_vs_step.png"),
                                    (axes2, "dev metric (seed 1 of the chosen setting)", fig2, "dev_vs_forward_passes.png"),
                                    (axes3, "dev metric (seed 1 of the chosen setting)", fig3, "dev_vs_wall_time.png")]:
        for (m, t, p), ax in ax_map.items():
            ax.set_title(f"{m} / {t} / {p}", fontsize=9)
            ax.set_xlabel({"loss_vs_step.png": "step", "dev_vs_forward_passes.png": "forward passes"}.get(
                name, "training wall time (s)"))
            ax.set_ylabel(ylabel, fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        f.tight_layout()
        f.savefig(out / name, dpi=110)
        plt.close(f)
    _memory_bars(plt, out, chosen)


def _memory_bars(plt, out: Path, chosen) -> None:
    groups = sorted(chosen)
    labels = [f"{g[3]}\n{g[2]}" for g in groups]
    values = [sum(r["peak_memory_bytes"] for r in chosen[g]) / len(chosen[g]) / 2**30 for g in groups]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(groups)), 3.8))
    ax.bar(range(len(groups)), values)
    ax.set_xticks(range(len(groups)), labels, rotation=60, fontsize=7, ha="right")
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title("peak memory per optimizer and scheme", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
