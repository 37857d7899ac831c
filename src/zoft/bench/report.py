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

from zoft.bench import store
from zoft.bench.grid import ZERO_SHOT

SUMMARY_FIELDS = ["status", "steps", "forward_passes", "wall_time_s", "peak_memory_bytes",
                  "trainable_params", "best_dev_metric", "test_metric", "metric_name"]
GROUP = ("model", "task", "peft", "optimizer")
METHOD_KEYS = ("estimator", "perturbation", "q")  # varied, these name a method, not a hyperparameter


def load_records(out: Path) -> list[dict[str, Any]]:
    return [{"key": key, **store.read_json(out, key, "cell.json"), "summary": _summary(out, key)}
            for key in store.keys(out)]


def _summary(out: Path, key: str) -> dict[str, Any]:
    """A cell's summary.json; for a cell paused or stopped with a checkpoint, where it stands
    (status ``unfinished``: steps, forward passes, wall time and best dev so far); else ``not run``."""
    summary = store.read_json(out, key, "summary.json")
    if summary:
        return summary
    ckpt = store.read_json(out, key, "checkpoint.json")
    if not ckpt:
        return {"status": "not run"}
    return {"status": "unfinished", "steps": ckpt["step"], "forward_passes": ckpt["forward_passes"],
            "wall_time_s": round(ckpt["wall_time_s"], 3), "best_dev_metric": ckpt.get("best_dev")}


def _method(cfg: dict, varied: dict) -> str:
    """What names a cell's method beside its optimizer: the varied METHOD_KEYS and, for a run that
    trains, the optimizer options set in its config (e.g. ``fallback_lr=1e-06``)."""
    parts = [f"{k}={varied[k]}" for k in METHOD_KEYS if k in varied]
    if varied.get("optimizer") != ZERO_SHOT:
        parts += [f"{k}={v}" for k, v in sorted((cfg.get("opt_options") or {}).items())]
    return ", ".join(parts)


def _row(rec: dict) -> dict[str, Any]:
    cfg = rec["config"]
    varied = rec["varied"]
    method = _method(cfg, varied)
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


FINAL_WINDOW = 0.1  # final training loss: mean over the last 10% of a run's logged steps
LOSS_TABLES = (("dev_loss", "Dev loss at the last evaluation"),
               ("final_loss", f"Final training loss (mean over the last {FINAL_WINDOW:.0%} of the steps)"))
BASELINE = "zo-sgd"  # the head-to-head table compares every other trained optimizer with it


def losses(out: Path, key: str) -> dict[str, float | None]:
    """final_loss: the mean training loss over the last FINAL_WINDOW of the run's logged steps
    (runs of different lengths end on different mini-batches, so this compares loosely);
    dev_loss: the loss on the dev examples at the last evaluation (the same examples for every
    run: the comparable one; absent from runs made before zoft logged it). None: not logged."""
    rows = store.jsonl(out, key)
    train = [row["loss"] for row in rows if "loss" in row]
    tail = train[-max(1, int(FINAL_WINDOW * len(train))):] if train else []
    dev = [row["dev_loss"] for row in rows if "dev_loss" in row]
    return {"final_loss": statistics.mean(tail) if tail else None, "dev_loss": dev[-1] if dev else None}


def _settings(rows: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """Finished runs per GROUP, then per hyperparameter setting (the config without the seed)."""
    settings: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] != "finished":
            continue
        setting = json.dumps({k: v for k, v in json.loads(r["config"]).items() if k != "seed"}, sort_keys=True)
        settings[tuple(r[k] for k in GROUP)][setting].append(r)
    return settings


def choose(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Per GROUP: the seeds of the hyperparameter setting with the best mean dev metric (ties,
    common when short runs leave the dev accuracy where it was, go to the lower dev loss, or
    the lower final training loss where no dev loss was logged)."""

    def score(runs: list[dict]) -> tuple[float, float, float]:
        devs = [r["best_dev_metric"] for r in runs if r["best_dev_metric"] is not None]
        dev_loss, final = _mean_of(runs, "dev_loss"), _mean_of(runs, "final_loss")
        return (statistics.mean(devs) if devs else float("-inf"),
                -dev_loss if dev_loss is not None else float("-inf"),
                -final if final is not None else float("-inf"))

    return {g: max(by_setting.values(), key=score) for g, by_setting in _settings(rows).items()}


def chosen_values(rows: list[dict], chosen: dict[tuple, list[dict]]) -> dict[tuple, str]:
    """Per GROUP: the options that differ between its settings, at the chosen setting ("lr=0.001");
    "-" for a group with one setting."""
    labels = {}
    for g, by_setting in _settings(rows).items():
        configs = [json.loads(s) for s in by_setting]
        keys = sorted({k for c in configs for k in c})
        varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
        pick = json.loads(chosen[g][0]["config"])
        labels[g] = ", ".join(f"{k}={pick.get(k)}" for k in varying) or "-"
    return labels


def _header(columns: list[tuple]) -> list[str]:
    """The header and rule of a table with one row per optimizer and one column per (model, task, peft)."""
    return ["| optimizer | " + " | ".join(f"{m} / {t} / {p}" for m, t, p in columns) + " |",
            "|---|" + "---|" * len(columns)]


REACH = (0.70, 0.80)
"""Dev-metric levels of the "forward passes to reach" table."""


def dev_curve(out: Path, key: str) -> list[dict]:
    """(step, forward_passes, wall_time_s, dev metric) at each dev evaluation of a cell."""
    rows = store.jsonl(out, key)
    at = {r["step"]: r for r in rows if "forward_passes" in r}
    curve = []
    for r in rows:
        metric = next((k for k in r if k.startswith("dev_") and k != "dev_loss"), None)
        if metric is not None:
            step = at.get(r["step"], {})
            curve.append({"step": r["step"], "forward_passes": step.get("forward_passes", 0),
                          "wall_time_s": step.get("wall_time_s", 0.0), "dev": r[metric]})
    return curve


def reach_table(out: Path, chosen: dict[tuple, list[dict]], columns: list[tuple], optimizers: list[str],
                levels: tuple[float, ...] = REACH) -> list[str]:
    """Training forward passes (and wall seconds) until the dev metric first reaches each level,
    for the chosen setting's first run; "not reached" when it never does. Forward passes are
    what the meter counts: a backprop step is one forward plus its backward."""
    lines = []
    for level in levels:
        lines += ["", f"## Training forward passes to reach dev metric {level:.2f} (chosen setting, first seed; "
                  "wall seconds in brackets)", "", *_header(columns)]
        for opt in optimizers:
            if opt == ZERO_SHOT:
                continue
            cells = []
            for c in columns:
                runs = chosen.get((*c, opt))
                if not runs:
                    cells.append("")
                    continue
                hit = next((p for p in dev_curve(out, runs[0]["key"]) if p["dev"] >= level), None)
                cells.append(f"{hit['forward_passes']} ({hit['wall_time_s']:.0f} s)" if hit else "not reached")
            lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    return lines


def _backprop(optimizer: str) -> bool:
    """Backprop baselines are listed after the ZO methods (names no longer registered: ZO)."""
    from zoft.optim import OPTIMIZERS, optimizer_traits

    return optimizer in OPTIMIZERS and not optimizer_traits(optimizer).zeroth_order


def tables(rows: list[dict], out: Path | None = None) -> str:
    chosen = choose(rows)
    columns = sorted({(g[0], g[1], g[2]) for g in chosen})
    optimizers = sorted({g[3] for g in chosen}, key=lambda o: (o != ZERO_SHOT, _backprop(o), o))
    lines = ["## Test metric (hyperparameters chosen on dev; mean +- std over seeds)", "", *_header(columns)]
    for opt in optimizers:
        cells = [_mean_std([r["test_metric"] for r in chosen.get((*c, opt), []) if r["test_metric"] is not None])
                 for c in columns]
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    labels = chosen_values(rows, chosen)
    lines += ["", "## Hyperparameters chosen on dev (the options that differ between a row's runs)", "",
              *_header(columns)]
    for opt in optimizers:
        lines.append(f"| {opt} | " + " | ".join(labels.get((*c, opt), "") for c in columns) + " |")
    for key, title in LOSS_TABLES:
        if not any(r.get(key) is not None for runs in chosen.values() for r in runs):
            continue
        lines += ["", f"## {title} (chosen setting; mean +- std over seeds)", "", *_header(columns)]
        for opt in optimizers:
            cells = [_mean_std([r[key] for r in chosen.get((*c, opt), []) if r.get(key) is not None])
                     for c in columns]
            lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    lines += zero_shot_table(chosen, columns, optimizers)
    lines += head_to_head(chosen, columns, optimizers)
    if out is not None:
        lines += reach_table(out, chosen, columns, optimizers)
    lines += ["", "## Peak memory in GiB (chosen setting, mean over seeds)", "", *_header(columns)]
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


def seed_of(run: dict) -> int:
    return int(run.get("seed") or 0)


def minus_zero_shot(chosen: dict[tuple, list[dict]], group: tuple, key: str) -> float | None:
    """Mean over GROUP's chosen runs of run[key] minus the zero-shot cell of the same model, task,
    scheme and seed (a seed samples its own dev and test examples, so runs are compared with the
    zero-shot cell of their own seed); None when no run has a zero-shot partner."""
    zero = {seed_of(r): r for r in chosen.get((*group[:3], ZERO_SHOT), [])}
    diffs = [r[key] - zero[seed_of(r)][key] for r in chosen.get(group, [])
             if seed_of(r) in zero and r.get(key) is not None and zero[seed_of(r)].get(key) is not None]
    return statistics.mean(diffs) if diffs else None


def zero_shot_table(chosen: dict[tuple, list[dict]], columns: list[tuple], optimizers: list[str]) -> list[str]:
    """Test metric and dev loss minus the same seed's zero-shot cell, per optimizer and column;
    empty when the grid has no zero-shot cell."""
    if ZERO_SHOT not in optimizers:
        return []
    lines = ["", "## Against zero-shot, paired by seed (test metric difference; dev loss difference)", "",
             *_header(columns)]
    for opt in optimizers:
        if opt == ZERO_SHOT:
            continue
        cells = []
        for c in columns:
            test, dev = minus_zero_shot(chosen, (*c, opt), "test_metric"), minus_zero_shot(chosen, (*c, opt), "dev_loss")
            cells.append("; ".join(f"{v:+.3f}" for v in (test, dev) if v is not None) if test is not None else "")
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    return lines


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.mean(values) if values else None


def head_to_head(chosen: dict[tuple, list[dict]], columns: list[tuple], optimizers: list[str]) -> list[str]:
    """Every other trained optimizer against BASELINE over the (model, task, peft) columns both
    ran: wins / ties / losses and the mean difference, on test metric (higher wins), dev loss
    and final training loss (lower wins). Empty when the baseline is absent."""
    if BASELINE not in optimizers:
        return []
    lines = ["", f"## Against {BASELINE} (chosen settings; a win is a higher mean test metric or a lower "
             "mean loss, over the columns both ran)", "",
             "| optimizer | columns | test: wins / ties / losses | mean test difference | "
             "dev loss: w / t / l | mean dev-loss difference | final loss: w / t / l | mean final-loss difference |",
             "|---|---|---|---|---|---|---|---|"]
    for opt in optimizers:
        if opt in (BASELINE, ZERO_SHOT):
            continue
        pairs = [(chosen[(*c, opt)], chosen[(*c, BASELINE)]) for c in columns
                 if (*c, opt) in chosen and (*c, BASELINE) in chosen]
        cells = []
        for key, sign in (("test_metric", 1.0), ("dev_loss", -1.0), ("final_loss", -1.0)):
            diffs = [a - b for a, b in ((_mean_of(x, key), _mean_of(y, key)) for x, y in pairs)
                     if a is not None and b is not None]
            wins = sum(sign * d > 0 for d in diffs)
            ties = sum(d == 0 for d in diffs)
            cells += [f"{wins} / {ties} / {len(diffs) - wins - ties}",
                      f"{statistics.mean(diffs):+.4f}" if diffs else "-"]
        lines.append(f"| {opt} | {len(pairs)} | " + " | ".join(cells) + " |")
    return lines


def load_rows(out: Path) -> list[dict]:
    """One flat row per cell of ``out``: group keys, varied keys, summary fields, losses, config."""
    return [{**_row(r), **losses(out, r["key"])} for r in load_records(out)]


def build_report(out: Path) -> list[dict]:
    """Write results.csv, tables.md and the plots for the grid in ``out``; returns the rows."""
    rows = load_rows(out)
    if not rows:
        raise FileNotFoundError(f"{out} holds no benchmark cells (no cells/*/cell.json, no {store.ARCHIVE})")
    write_csv(rows, out / "results.csv")
    (out / "tables.md").write_text(tables(rows, out))
    from zoft.bench.plots import plot_all

    plot_all(out, choose(rows))
    return rows
